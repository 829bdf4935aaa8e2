"""Which workers are alive, and how many jobs each pool can hold: one rule, for every reader.

A worker is alive while its heartbeat (its score in :meth:`Keys.workers`) is younger than
:data:`MISSED_BEATS` heartbeat intervals. Workers also publish their job slots
(:meth:`Keys.worker_slots`), so the front door can tell a pool that will start a job soon from
one that is full, and answer the latter with 503 at once instead of after ``queue_timeout``.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

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
