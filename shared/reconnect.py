"""One policy for every loop that must outlive a Redis blip: back off, then try again.

Exponential backoff with jitter from redis-py (``EqualJitterBackoff``), so a fleet whose Redis
restarts does not come back in lockstep; reset by the first success.
"""

from __future__ import annotations

import asyncio

from redis.backoff import EqualJitterBackoff

# The first retry waits about 0.1 s, then doubling, never more than this.
RECONNECT_BASE_S = 0.1
RECONNECT_CAP_S = 5.0


class Reconnect:
    """The state of one retry loop: :meth:`succeeded` after each good round, :meth:`wait` after each failure."""

    def __init__(self, base: float = RECONNECT_BASE_S, cap: float = RECONNECT_CAP_S) -> None:
        self._backoff = EqualJitterBackoff(cap=cap, base=base)
        self._failures = 0

    def succeeded(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        """Count a failure and say how long to wait before the next try."""
        self._failures += 1
        return self._backoff.compute(self._failures)

    async def wait(self, delay: float | None = None) -> None:
        await asyncio.sleep(self.next_delay() if delay is None else delay)
