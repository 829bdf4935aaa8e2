"""Usage metering: counters per user, model and day, and the ``ai.usage`` event stream.

A request is metered at most once, whatever happens to its job: the record, the counters
and the event are written by one Lua script that first claims the request id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .keys import Keys

logger = logging.getLogger("reactor.usage")

# Bounded so a stalled Analytics consumer cannot fill Redis; ~ keeps trimming cheap.
EVENTS_MAXLEN = 1_000_000
# The claim on a request id must outlive any retry of its job.
SEEN_TTL_S = 7 * 86_400

_RECORD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'requests', 1)
redis.call('HINCRBY', KEYS[2], 'tokens_in', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'tokens_out', ARGV[3])
redis.call('HINCRBYFLOAT', KEYS[2], 'cost_usd', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'event', 'ai.usage', 'data', ARGV[7])
return 1
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


class UsageEvent(msgspec.Struct):
    """The page's shape, ``{"event":"ai.usage","properties":{model_id,user_id,tokens_in,tokens_out,…}}``."""

    event: str
    properties: UsageProperties


class Tokens(msgspec.Struct):
    tokens_in: int
    tokens_out: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


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
    reasoning = (completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else 0) or 0
    return Tokens(tin, tout, int(cached) if isinstance(cached, int) else 0,
                  int(reasoning) if isinstance(reasoning, int) else 0)


def estimate_tokens(chars: int) -> int:
    """About four characters per token for English text, the usual rule of thumb."""
    return max(1, math.ceil(chars / 4)) if chars else 0


def cost_usd(tokens: Tokens, input_price: float, output_price: float, cached_price: float | None) -> float:
    """Cost from per-million-token prices; cached input is billed at its own price when the model has one."""
    cached = min(tokens.cached_tokens, tokens.tokens_in) if cached_price is not None else 0
    fresh = tokens.tokens_in - cached
    total = fresh * input_price + cached * (cached_price or 0.0) + tokens.tokens_out * output_price
    return round(total / 1_000_000, 10)


class UsageRecorder:
    """Writes usage records.

    :param redis: any pool.
    :param keys: the key names.
    :param retention_days: how long per-day counters live.
    """

    def __init__(self, redis: Redis, keys: Keys, retention_days: int) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_s = retention_days * 86_400
        self._script = redis.register_script(_RECORD)

    async def record(self, props: UsageProperties, attempts: int = 5) -> bool:
        """Meter one request. Returns False when it was metered before.

        Redis hiccups are retried with backoff; the claim makes a retry after a lost reply safe.
        """
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
        delay = 0.05
        for attempt in range(attempts):
            try:
                return bool(await self._script(keys=keys, args=args))
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt == attempts - 1:
                    logger.error("usage record for %s lost after %d attempts: %s", props.request_id, attempts,
                                 event.decode())
                    raise
            await asyncio.sleep(delay)
            delay *= 2
        return False
