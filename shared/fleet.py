"""Which workers are alive, and how many jobs each pool can hold: one rule, for every reader.

A worker is alive while its heartbeat (its score in :meth:`Keys.workers`) is younger than
:data:`MISSED_BEATS` heartbeat intervals. Workers also publish their job slots
(:meth:`Keys.worker_slots`), so the front door can tell a pool that will start a job soon from
one that is full, and answer the latter with 503 at once instead of after ``queue_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

from redis.asyncio import Redis

from .errors import NoWorker
from .keys import Keys

# Heartbeats a worker may miss before it counts as gone.
MISSED_BEATS = 3


def silence_timeout(heartbeat_interval: float) -> float:
    """How long a front door waits without a message from a worker before taking it for dead:
    the same missed heartbeats, plus a second for a busy event loop."""
    return MISSED_BEATS * heartbeat_interval + 1.0


def alive_since(heartbeat_interval: float, now: float | None = None) -> float:
    """The oldest heartbeat (unix seconds) of a worker that still counts as alive."""
    return (time.time() if now is None else now) - MISSED_BEATS * heartbeat_interval


async def live_workers(redis: Redis, keys: Keys, providers: list[str], heartbeat_interval: float) -> list[int]:
    """How many workers are alive in each provider's pool, in one round trip."""
    since = alive_since(heartbeat_interval)
    async with redis.pipeline(transaction=False) as pipe:
        for provider in providers:
            pipe.zcount(keys.workers(provider), since, "+inf")
        return [int(n) for n in await pipe.execute()]


async def pool_slots(redis: Redis, keys: Keys, providers: list[str], heartbeat_interval: float) -> dict[str, int]:
    """The job slots of each provider's live workers, summed, in one round trip."""
    since = alive_since(heartbeat_interval)
    async with redis.pipeline(transaction=False) as pipe:
        for provider in providers:
            pipe.zrangebyscore(keys.workers(provider), since, "+inf")
            pipe.hgetall(keys.worker_slots(provider))
        answers = await pipe.execute()
    slots = {}
    for i, provider in enumerate(providers):
        live, table = answers[2 * i], answers[2 * i + 1]
        slots[provider] = sum(int(table.get(worker, 0)) for worker in live)
    return slots


# Seconds a client told "overloaded" or "no worker" is asked to wait before trying again.
RETRY_AFTER_S = 1


def user_limit(limit: int, share: float) -> int:
    """How many of a pool's ``limit`` jobs one user may hold: their ``share`` of it, at least one."""
    return max(1, int(limit * share))


class Room(NamedTuple):
    """What one pool admits now, in the order ``Enqueuer.enqueue`` takes it after the job's expiry."""

    limit: int         # the most jobs the pool may hold: its live workers' slots plus the backlog
    user_limit: int    # the most of them one user may hold (their share, at least one)
    shared_above: int  # from how many jobs held the user's share binds: the workers' slots


class PoolCapacity:
    """How many jobs each provider pool may hold: its live workers' slots plus ``backlog``.

    Read from Redis at most once per ``max_age`` seconds (concurrent readers share one read),
    and again at once before a pool is declared workerless, so a worker that just started is
    not refused.
    """

    def __init__(self, redis: Redis, keys: Keys, providers: list[str], heartbeat: float, backlog: int) -> None:
        self._redis, self._keys, self._providers = redis, keys, providers
        self._heartbeat = heartbeat
        self.max_age = heartbeat / 2
        self.backlog = backlog  # jobs a pool may hold beyond its workers' slots
        self._slots: dict[str, int] = {}
        self._read_at = -1e9
        self._reading: asyncio.Future[None] | None = None

    async def limit(self, provider: str) -> int:
        """The most jobs ``provider``'s pool may hold.

        :raises NoWorker: no live worker serves it.
        """
        loop = asyncio.get_running_loop()
        if loop.time() - self._read_at > self.max_age:
            await self._refresh()
        slots = self._slots.get(provider, 0)
        if slots == 0 and loop.time() - self._read_at > 0.1:
            await self._refresh()
            slots = self._slots.get(provider, 0)
        if slots == 0:
            raise NoWorker(f"No worker serves the provider {provider!r} right now; try again shortly.",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return slots + self.backlog

    async def room(self, provider: str, user_share: float) -> Room:
        """What ``provider``'s pool admits now, with ``user_share`` of it for one user.

        :raises NoWorker: no live worker serves it.
        """
        limit = await self.limit(provider)
        return Room(limit, user_limit(limit, user_share), limit - self.backlog)

    async def _refresh(self) -> None:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        try:
            await asyncio.shield(reading)
        finally:
            if self._reading is reading and reading.done():
                self._reading = None

    async def _read(self) -> None:
        self._slots = await pool_slots(self._redis, self._keys, self._providers, self._heartbeat)
        self._read_at = asyncio.get_running_loop().time()
