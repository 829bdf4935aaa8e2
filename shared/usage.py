"""Usage metering: counters per user, model and day, and the ``ai.usage`` event stream.

A request is metered at most once, whatever happens to its job: the record, the counters
and the event are written by one Lua script that first claims the request id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .batching import LoopTurnBatch
from .keys import Keys
from .reconnect import Reconnect
from .registry import Model

logger = logging.getLogger("reactor.usage")

# Bounded so a stalled Analytics consumer cannot fill Redis; ~ keeps trimming cheap.
EVENTS_MAXLEN = 1_000_000
# The claim on a request id must outlive any retry of its job.
SEEN_TTL_S = 7 * 86_400

# Records a batch of requests, each only if its request id was not metered before. KEYS: per
# record, the seen key, the counters, the day's index, the events stream. ARGV: per record, the
# seen TTL, tokens in, tokens out, cost, retention, index member, event, stream length.
# Returns 1 (recorded) or 0 (metered before) per record.
_RECORD = """
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = 4 * i, 8 * i
  if redis.call('SET', KEYS[k + 1], '1', 'NX', 'EX', ARGV[a + 1]) then
    redis.call('HINCRBY', KEYS[k + 2], 'requests', 1)
    redis.call('HINCRBY', KEYS[k + 2], 'tokens_in', ARGV[a + 2])
    redis.call('HINCRBY', KEYS[k + 2], 'tokens_out', ARGV[a + 3])
    redis.call('HINCRBYFLOAT', KEYS[k + 2], 'cost_usd', ARGV[a + 4])
    redis.call('EXPIRE', KEYS[k + 2], ARGV[a + 5])
    redis.call('SADD', KEYS[k + 3], ARGV[a + 6])
    redis.call('EXPIRE', KEYS[k + 3], ARGV[a + 5])
    redis.call('XADD', KEYS[k + 4], 'MAXLEN', '~', ARGV[a + 8], '*', 'event', 'ai.usage', 'data', ARGV[a + 7])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


class UsageProperties(msgspec.Struct):
    model_id: str
    user_id: str
    tokens_in: int
    tokens_out: int
    request_id: str
    provider: str
    timestamp: float
    latency_ms: float
    cost_usd: float
    status: str = "ok"
    alias: str | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    cache_write_tokens: int = 0
    # Targets tried for the request, the one that served included (more than 1 after a fallback).
    attempts: int = 1
    # The API the client spoke: chat, embeddings, responses or messages.
    surface: str = "chat"


class UsageEvent(msgspec.Struct):
    """The page's shape, ``{"event":"ai.usage","properties":{model_id,user_id,tokens_in,tokens_out,…}}``."""

    event: str
    properties: UsageProperties


class Tokens(msgspec.Struct):
    """``tokens_in`` counts every prompt token; ``cached_tokens`` (read from the provider's prompt
    cache) and ``cache_write_tokens`` (written to it) are parts of it, priced apart."""

    tokens_in: int
    tokens_out: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    cache_write_tokens: int = 0


def tokens_from_usage(usage: Any) -> Tokens | None:
    """Read an OpenAI ``usage`` object; None when it is missing or not numeric."""
    if not isinstance(usage, dict):
        return None
    tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(tin, int) or not isinstance(tout, int):
        return None
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = (prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0) or 0
    written = (prompt_details.get("cache_write_tokens") if isinstance(prompt_details, dict) else 0) or 0
    reasoning = (completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else 0) or 0
    return Tokens(tin, tout, int(cached) if isinstance(cached, int) else 0,
                  int(reasoning) if isinstance(reasoning, int) else 0,
                  cache_write_tokens=int(written) if isinstance(written, int) else 0)


def prompt_chars(body: dict[str, Any]) -> int:
    """The size of what a request sends the model, for estimating its tokens when nobody reports them."""
    messages = body.get("messages")
    if messages is None:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        # A token array is already counted in tokens: four "characters" per token keeps the scale.
        return sum(len(i) if isinstance(i, str) else 4 * (len(i) if isinstance(i, list) else 1) for i in items)
    total = 0
    for msg in messages if isinstance(messages, list) else ():
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
        total += 12  # role and framing tokens, about three per message
    return total


def estimate_tokens(chars: int) -> int:
    """About four characters per token for English text, the usual rule of thumb."""
    return max(1, math.ceil(chars / 4)) if chars else 0


def cost_usd(tokens: Tokens, input_price: float, output_price: float, cached_price: float | None,
             cache_write_price: float | None = None) -> float:
    """Cost from per-million-token prices.

    Prompt tokens read from the cache and written to it are billed at their own prices when the
    model has them, each counted once (they are parts of ``tokens_in``, never added to it).
    """
    cached = min(tokens.cached_tokens, tokens.tokens_in) if cached_price is not None else 0
    written = min(tokens.cache_write_tokens, tokens.tokens_in - cached) if cache_write_price is not None else 0
    fresh = tokens.tokens_in - cached - written
    total = (fresh * input_price + cached * (cached_price or 0.0) + written * (cache_write_price or 0.0)
             + tokens.tokens_out * output_price)
    return round(total / 1_000_000, 10)


def build_usage(*, request_id: str, user_id: str, alias: str | None, model_id: str, provider: str,
                tokens: Tokens, model: Model | None, started: float, status: str,
                attempts: int = 1, surface: str = "chat") -> UsageProperties:
    """One request's usage record, priced with the registry's prices for ``model``."""
    now = time.time()
    cost = cost_usd(tokens, model.input_price_per_mtok, model.output_price_per_mtok,
                    model.cached_input_price_per_mtok, model.cache_write_price_per_mtok) if model else 0.0
    return UsageProperties(
        model_id=model_id, user_id=user_id, tokens_in=tokens.tokens_in, tokens_out=tokens.tokens_out,
        request_id=request_id, provider=provider, timestamp=now, latency_ms=round((now - started) * 1000, 2),
        cost_usd=cost, status=status, alias=alias, cached_tokens=tokens.cached_tokens,
        reasoning_tokens=tokens.reasoning_tokens, estimated=tokens.estimated,
        cache_write_tokens=tokens.cache_write_tokens, attempts=attempts, surface=surface,
    )


_props_decoder = msgspec.json.Decoder(UsageProperties)


class UsageRecorder:
    """Writes usage records.

    :param redis: any pool.
    :param keys: the key names.
    :param retention_days: how long per-day counters live.
    :param spool: a file that keeps records Redis could not take, until :meth:`replay_spool`
        gets them in; None to drop them with an error log.
    """

    def __init__(self, redis: Redis, keys: Keys, retention_days: int, spool: Path | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_days * 86_400
        self._script = redis.register_script(_RECORD)
        self.spool = spool
        # Records of one loop turn share one script call: a worker ending a wave of streams at
        # once pays one round trip (and one command's client time) for all of them.
        self._batch: LoopTurnBatch[tuple[list[str], list[Any]], int] = LoopTurnBatch(self._send)

    async def record(self, props: UsageProperties, attempts: int = 5) -> bool:
        """Meter one request. Returns False when it was metered before.

        Redis hiccups are retried with backoff; the claim makes a retry after a lost reply safe.
        When Redis stays away the record goes to the spool, so it is late but never lost.
        """
        try:
            return await self._record(props, attempts)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if self.spool is None:
                logger.error("usage record for %s lost: %s", props.request_id, msgspec.json.encode(props).decode())
                raise
            self._append(props)
            logger.warning("Redis unreachable: usage of %s spooled to %s", props.request_id, self.spool)
            return True

    def _append(self, props: UsageProperties) -> None:
        self._write_line(msgspec.json.encode(props))

    def _write_line(self, line: bytes) -> None:
        assert self.spool is not None
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        # One write of one line to an O_APPEND file: concurrent writers never interleave.
        fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    async def replay_spool(self) -> int:
        """Record what the spool holds; returns how many were new (not metered before).

        The spool is renamed first, so two processes sharing it never replay the same lines,
        and the request-id claim makes a replay that raced a late original harmless.
        """
        if self.spool is None or not self.spool.exists() or self.spool.stat().st_size == 0:
            return 0
        batch = self.spool.with_name(f"{self.spool.name}.{os.getpid()}.replaying")
        try:
            os.replace(self.spool, batch)
        except FileNotFoundError:
            return 0
        done = 0
        lines = batch.read_bytes().splitlines()
        for i, line in enumerate(lines):
            try:
                props = _props_decoder.decode(line)
            except msgspec.DecodeError:
                logger.error("dropped a corrupt usage spool line: %r", line[:200])
                continue
            try:
                done += await self._record(props, attempts=1)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                for rest in lines[i:]:
                    self._write_line(rest)
                break
        batch.unlink()
        return done

    async def _record(self, props: UsageProperties, attempts: int) -> bool:
        day = time.strftime("%Y-%m-%d", time.gmtime(props.timestamp))
        event = msgspec.json.encode(UsageEvent("ai.usage", props))
        keys = [
            self._keys.usage_seen(props.request_id),
            self._keys.usage_counters(day, props.user_id, props.model_id),
            self._keys.usage_index(day),
            self._keys.usage_events,
        ]
        args = [SEEN_TTL_S, props.tokens_in, props.tokens_out, repr(props.cost_usd), self._retention_s,
                f"{props.user_id}\t{props.model_id}", event, EVENTS_MAXLEN]
        reconnect = Reconnect(base=0.05)
        for attempt in range(attempts):
            try:
                return bool(await self._batch.submit((keys, args)))
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt == attempts - 1:
                    raise
            await reconnect.wait()
        return False


    async def _send(self, batch: list[tuple[list[str], list[Any]]]) -> list[int]:
        # A failure reaches every record of the batch: each retries (the request-id claim makes
        # a repeat harmless) or goes to the spool.
        keys = [key for record_keys, _ in batch for key in record_keys]
        args = [arg for _, record_args in batch for arg in record_args]
        return await self._script(keys=keys, args=args)


async def replay_spool_forever(recorder: UsageRecorder, interval: float = 5.0) -> None:
    """Feed usage records spooled during a Redis outage back in once Redis answers again."""
    while True:
        try:
            replayed = await recorder.replay_spool()
            if replayed:
                logger.info("recorded %d spooled usage records", replayed)
        except OSError as exc:
            logger.warning("usage spool replay failed: %r", exc)
        await asyncio.sleep(interval)
