"""The Analytics feed: every ``ai.usage`` event reaches Analytics over HTTP at least once.

Metering appends each event to the stream ``Keys.usage_events`` (``shared/usage.py``). A
forwarder turns that stream into HTTP batches, and nothing that fails along the way loses an event:

- It reads in a consumer group (XREADGROUP). Redis keeps each entry it hands out in the group's
  pending entries list until the forwarder acknowledges it, so a forwarder that dies holds
  nothing only in its memory.
- It POSTs a batch as a JSON array of the events exactly as recorded,
  ``[{"event": "ai.usage", "properties": {..., "request_id": ...}}, ...]``, and acknowledges
  (XACK) only after a 2xx answer. A refusal, a timeout or an unreachable Analytics keeps the batch
  and retries the same batch with exponential backoff and jitter (redis-py's
  ``EqualJitterBackoff``, through ``shared/reconnect.py``) until it is accepted; nothing is skipped.
- A batch left pending by a forwarder that was killed is taken over (XAUTOCLAIM) by any forwarder
  of the group once it has been idle for ``reclaim_idle_s``, and delivered again. A forwarder
  still retrying its batch claims it afresh now and then, so the others leave it alone.
- An event can therefore arrive twice (a crash between the 2xx and the XACK, a takeover), never
  zero times: Analytics deduplicates on ``properties.request_id``, which metering makes unique.
- The stream is trimmed (XTRIM MINID, in one script so no read races the trim) to the oldest
  entry a consumer group still needs: its oldest pending entry, or, when nothing is pending, the
  last entry it was handed. An event not yet delivered to every group on the stream is never
  trimmed here. (The writer's ``EVENTS_MAXLEN`` cap still bounds a stream nobody forwards.)

Several forwarders may share a group: each batch goes to one of them. A second destination gets
a group of its own and sees every event too. Redis 6.2 or later (XAUTOCLAIM, XTRIM MINID).

:func:`run_forwarder` is the whole loop, for ``reactor analytics forward`` or a task in another
process; :func:`feed_status` says how far a group has got.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import redact
from .keys import Keys
from .reconnect import Reconnect

logger = logging.getLogger("reactor.analytics")

# Events per POST.
DEFAULT_BATCH_SIZE = 100
# How long a batch may sit unacknowledged before another forwarder takes it over: longer than a
# POST can take (DEFAULT_HTTP_TIMEOUT_S), so a live forwarder's batch is not delivered twice.
DEFAULT_RECLAIM_IDLE_S = 60.0
# One POST, connecting included.
DEFAULT_HTTP_TIMEOUT_S = 10.0
# How often the delivered part of the stream is trimmed.
DEFAULT_TRIM_INTERVAL_S = 10.0
# Retries of a batch Analytics did not accept: the first after about this long, then doubling …
RETRY_BASE_S = 0.5
# … up to this long between tries.
DEFAULT_RETRY_CAP_S = 30.0
# How long one XREADGROUP waits for new events; also how soon a stop request is noticed.
READ_BLOCK_MS = 1000
# Pending entries are looked over for takeover this many times per reclaim_idle_s, at most every
# MAX_RECLAIM_CHECK_S.
RECLAIM_CHECKS_PER_IDLE = 4
MAX_RECLAIM_CHECK_S = 5.0
# A group's consumer entry with nothing pending, idle this long, belonged to a forwarder that has
# gone (each run has its own name): it is removed so the group's list does not grow forever.
FORGET_CONSUMER_S = 86_400
# A new group starts at the stream's beginning: events recorded before any forwarder ran go out too.
GROUP_START = "0"
# Characters of an Analytics error body kept for the log and the status.
ERROR_BODY_CHARS = 200

# Trims the stream to the oldest entry any of its consumer groups still needs. KEYS: the stream.
# Returns {entries removed, the id trimmed to (false when there is no group or no stream)}.
_TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, false} end
local function parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function before(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am < bm or (am == bm and as < bs)
end
local floor = false
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local needed = info['last-delivered-id']
  if info['pending'] > 0 then
    needed = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if not floor or before(needed, floor) then floor = needed end
end
if not floor then return {0, false} end
return {redis.call('XTRIM', KEYS[1], 'MINID', floor), floor}
"""

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def default_consumer() -> str:
    """A name of this process's own within the group: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ForwarderConfig:
    """How a forwarder delivers.

    :param url: where batches are POSTed.
    :param group: the consumer group; ``Keys.analytics_group`` when None.
    :param consumer: this forwarder's name in the group.
    :param headers: sent with every POST (an ``Authorization`` header, say).
    :param trim: whether this forwarder trims the delivered part of the stream.
    """

    url: str
    group: str | None = None
    consumer: str = field(default_factory=default_consumer)
    batch_size: int = DEFAULT_BATCH_SIZE
    reclaim_idle_s: float = DEFAULT_RECLAIM_IDLE_S
    timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    trim_interval_s: float = DEFAULT_TRIM_INTERVAL_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    headers: dict[str, str] = field(default_factory=dict)
    trim: bool = True

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("the Analytics URL is required")
        if self.batch_size < 1 or self.reclaim_idle_s <= 0 or self.timeout_s <= 0 or self.trim_interval_s <= 0:
            raise ValueError("batch size, reclaim idle time, timeout and trim interval must be positive")


@dataclass
class ForwarderStats:
    """What one run did."""

    delivered: int = 0  # events in batches Analytics accepted
    batches: int = 0
    reclaimed: int = 0  # events taken over from another (dead or stuck) forwarder
    failures: int = 0  # POSTs that were not accepted, each retried
    trimmed: int = 0  # stream entries removed after delivery
    lost: int = 0  # pending entries the stream no longer had when taken over (cut by the writer's cap)
    malformed: int = 0  # entries without a JSON event, acknowledged without sending


class _Stopped(Exception):
    """Asked to stop while a batch was still being retried: it stays pending for a successor."""


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return at once when ``stop`` is set; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Forwarder:
    """One forwarder of a group. :meth:`run` loops until stopped.

    :param redis: a pool without a socket timeout shorter than :data:`READ_BLOCK_MS`.
    :param http: the client batches are POSTed with (its own timeouts are overridden by ``timeout_s``).
    """

    def __init__(self, redis: Redis, keys: Keys, config: ForwarderConfig, http: httpx.AsyncClient) -> None:
        self.redis = redis
        self.config = config
        self.http = http
        self.stream = keys.usage_events
        self.group = config.group or keys.analytics_group
        self.status_key = keys.analytics_status(self.group)
        self.stats = ForwarderStats()
        self._trim = redis.register_script(_TRIM)
        self._group_ready = False
        self._claim_cursor: bytes | str = "0-0"
        self._next_reclaim = 0.0
        self._next_trim = 0.0
        self._reclaim_every = min(config.reclaim_idle_s / RECLAIM_CHECKS_PER_IDLE, MAX_RECLAIM_CHECK_S)
        if config.reclaim_idle_s <= config.timeout_s:
            logger.warning("reclaim idle time %g s is not above the POST timeout %g s: a batch still being posted "
                           "may be taken over and delivered twice", config.reclaim_idle_s, config.timeout_s)

    async def run(self, stop: asyncio.Event, drain: bool = False) -> ForwarderStats:
        """Forward until ``stop`` is set, or with ``drain`` until the group has nothing left to deliver."""
        redis_retry = Reconnect()
        while not stop.is_set():
            try:
                if not self._group_ready:
                    await self._ensure_group()
                entries = await self._next_batch()
                if entries:
                    await self._forward(entries, stop)
                elif drain and await self._drained():
                    await self._maybe_trim(force=True)
                    break
                await self._maybe_trim()
                redis_retry.succeeded()
            except _Stopped:
                break
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream (and its group) was deleted under us: start a new group.
                self._group_ready = False
            except _REDIS_DOWN as exc:
                delay = redis_retry.next_delay()
                logger.warning("Redis unreachable (%r); trying again in %.1f s", exc, delay)
                if await _sleep_unless(stop, delay):
                    break
        return self.stats

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=GROUP_START, mkstream=True)
            logger.info("created the consumer group %r on %s", self.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _next_batch(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        """Entries to deliver: first any that another forwarder left idle too long, else new ones."""
        now = time.monotonic()
        if now >= self._next_reclaim:
            reply = await self.redis.xautoclaim(self.stream, self.group, self.config.consumer,
                                                int(self.config.reclaim_idle_s * 1000), start_id=self._claim_cursor,
                                                count=self.config.batch_size)
            self._claim_cursor, claimed = reply[0], reply[1]
            gone = reply[2] if len(reply) > 2 else []
            if gone:
                self.stats.lost += len(gone)
                logger.error("%d pending events were cut from %s before delivery (the stream's length cap): "
                             "they cannot be forwarded", len(gone), self.stream)
            if _text(self._claim_cursor) == "0-0":
                self._next_reclaim = now + self._reclaim_every  # looked over every pending entry
            if claimed:
                self.stats.reclaimed += len(claimed)
                logger.info("took over %d events another forwarder left undelivered", len(claimed))
                return claimed
        reply = await self.redis.xreadgroup(self.group, self.config.consumer, {self.stream: ">"},
                                            count=self.config.batch_size, block=READ_BLOCK_MS)
        return reply[0][1] if reply else []

    async def _forward(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]], stop: asyncio.Event) -> None:
        ids = [entry_id for entry_id, _ in entries]
        events = []
        for entry_id, fields in entries:
            data = (fields or {}).get(b"data")
            try:
                msgspec.json.decode(data or b"", type=msgspec.Raw)  # one bad entry must not spoil the array
            except msgspec.DecodeError:
                self.stats.malformed += 1
                logger.error("stream entry %s of %s holds no JSON event; acknowledged without sending",
                             _text(entry_id), self.stream)
                continue
            events.append(data)
        if events:
            await self._deliver(ids, b"[" + b",".join(events) + b"]", stop)
        await self._acknowledge(ids, len(events), stop)

    async def _deliver(self, ids: list[bytes], body: bytes, stop: asyncio.Event) -> None:
        """POST ``body`` until Analytics accepts it with a 2xx.

        :raises _Stopped: ``stop`` was set first; the entries stay pending.
        """
        backoff = Reconnect(base=RETRY_BASE_S, cap=self.config.retry_cap_s)
        claimed_at = time.monotonic()
        while True:
            problem = await self._post(body)
            if problem is None:
                return
            self.stats.failures += 1
            delay = backoff.next_delay()
            logger.warning("Analytics did not take a batch of %d events (%s); retrying in %.1f s",
                           len(ids), problem, delay)
            await self._note_error(problem)
            if await _sleep_unless(stop, delay):
                raise _Stopped
            if time.monotonic() - claimed_at > self.config.reclaim_idle_s / 2:
                await self._keep_claimed(ids)
                claimed_at = time.monotonic()

    async def _post(self, body: bytes) -> str | None:
        """None when Analytics accepted the batch; otherwise what went wrong."""
        headers = {"Content-Type": "application/json", **self.config.headers}
        try:
            response = await self.http.post(self.config.url, content=body, headers=headers,
                                            timeout=self.config.timeout_s)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}".rstrip(": ")
        if 200 <= response.status_code < 300:
            return None
        # Logged and kept in Redis: a service that echoes the request's token must not spread it.
        secrets = tuple(part for value in self.config.headers.values() for part in (value, value.partition(" ")[2]))
        return redact(f"HTTP {response.status_code}: {response.text[:ERROR_BODY_CHARS]}", secrets).rstrip(": ")

    async def _keep_claimed(self, ids: list[bytes]) -> None:
        """Reset the batch's idle time, so that no other forwarder takes over a batch still being retried."""
        try:
            await self.redis.xclaim(self.stream, self.group, self.config.consumer, 0, ids, justid=True)
        except _REDIS_DOWN:
            pass  # at worst another forwarder delivers it too

    async def _note_error(self, problem: str) -> None:
        try:
            await self.redis.hset(self.status_key, mapping={"last_error": problem, "last_error_at": time.time()})
        except _REDIS_DOWN:
            pass

    async def _acknowledge(self, ids: list[bytes], delivered: int, stop: asyncio.Event) -> None:
        """XACK the delivered batch, retrying through a Redis blip rather than delivering it again."""
        retry = Reconnect()
        while True:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xack(self.stream, self.group, *ids)
                if delivered:
                    pipe.hincrby(self.status_key, "delivered", delivered)
                    pipe.hset(self.status_key, "last_delivery_at", time.time())
                await pipe.execute()
                break
            except _REDIS_DOWN as exc:
                delay = retry.next_delay()
                logger.warning("cannot acknowledge a delivered batch (%r); trying again in %.1f s", exc, delay)
                if await _sleep_unless(stop, delay):
                    raise _Stopped from None  # still pending: a successor delivers it again
        if delivered:
            self.stats.delivered += delivered
            self.stats.batches += 1

    async def _drained(self) -> bool:
        """Nothing new was read just now; True when nothing is pending in the group either."""
        summary = await self.redis.xpending(self.stream, self.group)
        return not summary["pending"]

    async def _maybe_trim(self, force: bool = False) -> None:
        if not self.config.trim or (not force and time.monotonic() < self._next_trim):
            return
        self._next_trim = time.monotonic() + self.config.trim_interval_s
        removed, _ = await self._trim(keys=[self.stream])
        self.stats.trimmed += removed
        await self._forget_consumers()

    async def _forget_consumers(self) -> None:
        for consumer in await self.redis.xinfo_consumers(self.stream, self.group):
            name = _text(consumer["name"])
            if (name != self.config.consumer and not consumer["pending"]
                    and consumer["idle"] > FORGET_CONSUMER_S * 1000):
                await self.redis.xgroup_delconsumer(self.stream, self.group, name)


async def run_forwarder(redis: Redis, keys: Keys, config: ForwarderConfig, *, stop: asyncio.Event | None = None,
                        drain: bool = False, http: httpx.AsyncClient | None = None) -> ForwarderStats:
    """Forward usage events to Analytics until ``stop`` is set (or, with ``drain``, until the group
    has delivered everything recorded so far). A batch still being retried when ``stop`` is set stays
    pending, and a forwarder of the group takes it over after ``reclaim_idle_s``.

    :param redis: a pool without a socket timeout shorter than :data:`READ_BLOCK_MS`.
    :param http: a client to POST with; one of its own when None.
    """
    stop = stop or asyncio.Event()
    client = http or httpx.AsyncClient()
    try:
        return await Forwarder(redis, keys, config, client).run(stop, drain)
    finally:
        if http is None:
            await client.aclose()


def _id_ms(entry_id: Any) -> int:
    return int(_text(entry_id).partition("-")[0])


async def feed_status(redis: Redis, keys: Keys, group: str | None = None) -> dict[str, Any]:
    """How far the feed is: the stream's length and ends, and per consumer group what is pending
    (and since when), what is not yet handed out (``lag``) and the group's delivery status."""
    stream = keys.usage_events
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError:  # no stream yet
        return {"stream": stream, "length": 0, "first_id": None, "last_id": None, "groups": []}
    first, last = info.get("first-entry"), info.get("last-entry")
    groups = []
    for g in await redis.xinfo_groups(stream):
        name = _text(g["name"])
        if group is not None and name != group:
            continue
        entry: dict[str, Any] = {"group": name, "consumers": g["consumers"], "pending": g["pending"],
                                 "last_delivered_id": _text(g["last-delivered-id"]), "lag": g.get("lag"),
                                 "oldest_pending_age_s": None}
        if g["pending"]:
            summary = await redis.xpending(stream, name)
            entry["oldest_pending_age_s"] = round(max(0.0, time.time() - _id_ms(summary["min"]) / 1000), 1)
        status = await redis.hgetall(keys.analytics_status(name))
        entry["delivered"] = int(status.get(b"delivered", 0))
        for field_name in ("last_delivery_at", "last_error_at"):
            raw = status.get(field_name.encode())
            entry[field_name] = float(raw) if raw is not None else None
        entry["last_error"] = _text(status[b"last_error"]) if b"last_error" in status else None
        groups.append(entry)
    return {"stream": stream, "length": info["length"], "first_id": _text(first[0]) if first else None,
            "last_id": _text(last[0]) if last else None, "groups": groups}
