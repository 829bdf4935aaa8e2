"""Route health, shared by every worker and replica through Redis: cooldowns and measured speed.

A route is one provider serving one upstream model. Workers report each attempt's outcome; one
Lua script per loop-turn batch applies them all:

- **Cooldown.** ``cooldown_failures`` retryable failures within ``cooldown_window`` seconds, or one
  401/403, cool the route for ``cooldown_seconds``: a key with that TTL, so the route comes back by
  itself and every process sees the same state. A route back from a cooldown is on probation
  until it succeeds once: one more failure cools it again at once (the probe decides).
- **Measured speed.** Decaying averages (EWMA, ``ALPHA`` per sample) of each route's time to first
  token and of its error rate, which the ``fastest`` strategy reads. A decaying average rather
  than a window of samples: old samples fade instead of dominating.

Readers (the front door choosing candidates, a worker choosing where to fall back) cache what
they read for ``CACHE_S``, so a burst of requests costs one round trip per second, not one each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .batching import LoopTurnBatch
from .config import RoutingSettings
from .errors import GatewayError
from .keys import Keys
from .wire import Target

logger = logging.getLogger("reactor.routing")

# Weight of each new sample in the decaying averages: about the last ten samples matter.
ALPHA = 0.2
# How long a reader trusts what it read.
CACHE_S = 1.0
# Statuses that mean the route's credentials or access are wrong: no point trying again soon.
AUTH_STATUSES = (401, 403)

# Applies a batch of outcomes. KEYS: per outcome, failures, cooldown, probation, stats hash.
# ARGV: per outcome, ok (1/0), cools at once (1/0), ttft ms (or -1), stats field prefix,
# failures threshold, window s, cooldown s, alpha. Returns 1 per outcome that started a cooldown.
_OBSERVE = """
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = 4 * i, 8 * i
  local ok, now_cool, ttft = ARGV[a + 1] == '1', ARGV[a + 2] == '1', tonumber(ARGV[a + 3])
  local prefix, alpha = ARGV[a + 4], tonumber(ARGV[a + 8])
  local err = redis.call('HGET', KEYS[k + 4], prefix .. 'err')
  err = err and tonumber(err) or (ok and 0 or 1)
  redis.call('HSET', KEYS[k + 4], prefix .. 'err', tostring(err + alpha * ((ok and 0 or 1) - err)))
  local cooled = 0
  if ok then
    if ttft >= 0 then
      local avg = redis.call('HGET', KEYS[k + 4], prefix .. 'ttft')
      avg = avg and tonumber(avg) or ttft
      redis.call('HSET', KEYS[k + 4], prefix .. 'ttft', tostring(avg + alpha * (ttft - avg)))
      redis.call('HINCRBY', KEYS[k + 4], prefix .. 'n', 1)
    end
    redis.call('DEL', KEYS[k + 3])
  else
    local failures = redis.call('INCR', KEYS[k + 1])
    if failures == 1 then redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 6]) end
    if now_cool or failures >= tonumber(ARGV[a + 5]) or redis.call('EXISTS', KEYS[k + 3]) == 1 then
      redis.call('SET', KEYS[k + 2], '1', 'EX', ARGV[a + 7])
      redis.call('SET', KEYS[k + 3], '1', 'EX', tonumber(ARGV[a + 7]) + tonumber(ARGV[a + 6]))
      redis.call('DEL', KEYS[k + 1])
      cooled = 1
    end
  end
  out[#out + 1] = cooled
end
return out
"""


class RouteStats(msgspec.Struct, frozen=True):
    """What is known of a route's speed: ``ttft_ms`` is None until it has served once."""

    ttft_ms: float | None
    error_rate: float
    samples: int


_UNKNOWN = RouteStats(None, 0.0, 0)


def _route(target: Target) -> tuple[str, str]:
    return target.provider, target.upstream_model


class RouteHealth:
    """Reads and reports the health of routes.

    :param redis: any pool.
    :param keys: the key names.
    :param settings: the ``[gateway.routing]`` table.
    """

    def __init__(self, redis: Redis, keys: Keys, settings: RoutingSettings) -> None:
        self._redis = redis
        self._keys = keys
        self.settings = settings
        self._observe = redis.register_script(_OBSERVE)
        self._batch: LoopTurnBatch[tuple[Target, bool, bool, float | None], bool] = LoopTurnBatch(self._send)
        self._cooling: dict[tuple[str, str], tuple[bool, float]] = {}
        self._stats: dict[tuple[str, str], tuple[RouteStats, float]] = {}

    # -- reporting (workers) ---------------------------------------------------------------------

    async def succeeded(self, target: Target, ttft_s: float | None) -> None:
        """The route answered; ``ttft_s`` is its time to first token (or to the whole answer)."""
        await self._report(target, True, False, ttft_s)

    async def failed(self, target: Target, error: GatewayError) -> bool:
        """The route failed with ``error``; returns whether that started a cooldown.

        Only failures that say something about the route count: retryable ones (throttling,
        timeouts, outages) and refused credentials. A request the upstream rejects as invalid
        says nothing about the route.
        """
        cools_at_once = error.status in AUTH_STATUSES
        if not (error.retryable or cools_at_once):
            return False
        return await self._report(target, False, cools_at_once, None)

    async def _report(self, target: Target, ok: bool, at_once: bool, ttft_s: float | None) -> bool:
        try:
            cooled = await self._batch.submit((target, ok, at_once, ttft_s))
        except (RedisError, OSError) as exc:
            logger.warning("could not report the health of %s/%s: %s", target.provider, target.upstream_model, exc)
            return False
        if cooled:
            self._cooling[_route(target)] = (True, time.monotonic() + CACHE_S)
            logger.warning("route %s/%s cools down for %g s", target.provider, target.upstream_model,
                           self.settings.cooldown_seconds)
        return cooled

    async def _send(self, batch: list[tuple[Target, bool, bool, float | None]]) -> list[bool]:
        keys: list[str] = []
        args: list[str | int | float] = []
        s = self.settings
        for target, ok, at_once, ttft_s in batch:
            provider, model = _route(target)
            keys += [self._keys.route_failures(provider, model), self._keys.route_cooldown(provider, model),
                     self._keys.route_probation(provider, model), self._keys.route_stats]
            args += [int(ok), int(at_once), round(ttft_s * 1000, 3) if ttft_s is not None else -1,
                     f"{provider}\t{model}\t", s.cooldown_failures, int(s.cooldown_window),
                     max(1, round(s.cooldown_seconds)), ALPHA]
        return [bool(x) for x in await self._observe(keys=keys, args=args)]

    # -- reading (front door, workers) -----------------------------------------------------------------

    async def cooling(self, targets: Iterable[Target]) -> set[tuple[str, str]]:
        """The routes among ``targets`` that are cooling down now, as (provider, upstream model).

        When Redis cannot be read, nothing is taken to be cooling: requests still go out.
        """
        now = time.monotonic()
        routes = list(dict.fromkeys(_route(t) for t in targets))
        stale = [r for r in routes if self._cooling.get(r, (False, 0.0))[1] <= now]
        if stale:
            try:
                found = await self._redis.mget([self._keys.route_cooldown(p, m) for p, m in stale])
            except (RedisError, OSError):
                found = [None] * len(stale)
            for route, value in zip(stale, found):
                self._cooling[route] = (value is not None, now + CACHE_S)
        return {r for r in routes if self._cooling[r][0]}

    async def stats(self, targets: Iterable[Target]) -> dict[tuple[str, str], RouteStats]:
        """The measured speed of each route among ``targets``."""
        now = time.monotonic()
        routes = list(dict.fromkeys(_route(t) for t in targets))
        stale = [r for r in routes if self._stats.get(r, (_UNKNOWN, 0.0))[1] <= now]
        if stale:
            fields = [f"{p}\t{m}\t{name}" for p, m in stale for name in ("ttft", "err", "n")]
            try:
                values = await self._redis.hmget(self._keys.route_stats, fields)
            except (RedisError, OSError):
                values = [None] * len(fields)
            for i, route in enumerate(stale):
                ttft, err, n = values[3 * i: 3 * i + 3]
                stats = RouteStats(float(ttft) if ttft is not None else None, float(err) if err is not None else 0.0,
                                   int(n) if n is not None else 0)
                self._stats[route] = (stats, now + CACHE_S)
        return {r: self._stats[r][0] for r in routes}
