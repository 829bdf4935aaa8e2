"""Per-user quotas: requests and tokens per minute, tokens and US dollars per UTC day.

Why it is built this way:

- **The counters live in Redis, never in a process.** Every front-door replica checks and
  reserves against the same counters, so a limit of 50 requests per minute admits 50 requests
  whatever the number of replicas, not 50 per replica.
- **Check and reserve are one atomic script.** For each limit that is set it checks
  ``used + need <= limit``; only when every check passes does it add the request (and its
  estimated tokens) to the counters. Two replicas can never both see the last free unit.
  A refusal changes nothing.
- **Reserve before, settle after.** A request's tokens are known only once it ends, so it
  reserves an estimate (its prompt plus ``max_tokens``, or ``default_completion_tokens`` when the
  client set none; embeddings have no completion) and ``after_usage`` replaces the estimate with
  the real count in the very windows it reserved in, even when the clock has moved on since. A
  window that has already expired is left alone: there is nothing left in it to correct.
- **Failures give their tokens back, not their request.** A request that failed without using a
  token releases its whole token reservation; it still counts against ``requests_per_minute``,
  because it did reach the gateway and cost it work (and otherwise failing requests could be
  retried without limit).
- **Dollars are checked on settled spend.** A price is known only after the request, so
  ``usd_per_day`` admits while the day's settled spend is below the limit; the overshoot is at
  most the cost of the requests already in flight when the limit is reached.
- **Fixed windows.** One minute (unix time // 60) and one UTC day (unix time // 86400), each a
  Redis hash of its own that expires by itself (about two minutes and two days), so no key
  outlives its use. Like every fixed window, a client can spend one window's allowance at the
  end of it and the next one's at the start. Replicas compute windows from their own clocks,
  which are assumed to be kept in sync (NTP); skew only shifts where a window starts.
- **Settled once, never below zero.** The settlement claims the request id first (a marker that
  lives an hour), so when both the front door (for a worker it thought lost) and the slow worker
  settle, the first one counts and the second changes nothing. A settlement that would take a
  counter below zero stops at zero.
- **Fail closed.** When Redis cannot be reached, ``check_quota`` refuses with a 503 instead of
  letting requests through unmetered. Settlement failures are logged and the request is not
  held up: the counters expire with their windows either way.
- **One round trip per loop turn.** Checks submitted in the same turn of the event loop share one
  script call, and so do settlements (:class:`shared.batching.LoopTurnBatch`); inside the
  script they run one after the other, each against the counters the previous ones left.
- **Users without limits cost nothing:** ``check_quota`` returns None without a Redis call.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .batching import LoopTurnBatch
from .config import ConfigError
from .errors import QuotaExceeded, Unavailable
from .extensions import Extension, RequestInfo, Reservation
from .keys import Keys
from .redis_client import open_redis

if TYPE_CHECKING:
    from .config import Settings
    from .usage import UsageProperties

logger = logging.getLogger("reactor.quota")

MINUTE_S = 60
DAY_S = 86_400
# A window's hash outlives the window by as long again, so a settlement that arrives late still
# finds it; after that it expires by itself.
MINUTE_TTL_S = 2 * MINUTE_S
DAY_TTL_S = 2 * DAY_S
# The completion size assumed for a chat request that sets no max_tokens.
DEFAULT_COMPLETION_TOKENS = 1024
# How the scripts are told that a limit is not set.
NO_LIMIT = -1
# How long a settled request's marker lives: far longer than any request, so a second
# settlement of the same request always finds it.
SETTLED_TTL_S = 3600
# Request kinds that produce no completion tokens.
NO_COMPLETION_KINDS = frozenset({"embeddings"})

UNAVAILABLE_MESSAGE = "The quota store (Redis) is unreachable; requests are refused until it is back."
ROOT = "gateway.quota"

# The limits, in the order the scripts take them. Bit ``1 << i`` of a script's "failed" answer,
# and of a reservation's ``limited`` field, stands for limit i.
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "usd_per_day")
REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, TOKENS_PER_DAY, USD_PER_DAY = (1 << i for i in range(len(LIMIT_FIELDS)))
_WINDOW_S = {"requests_per_minute": MINUTE_S, "tokens_per_minute": MINUTE_S, "tokens_per_day": DAY_S,
             "usd_per_day": DAY_S}
_EXPECTED = {
    "requests_per_minute": "a whole number of requests, 0 or more",
    "tokens_per_minute": "a whole number of tokens, 0 or more",
    "tokens_per_day": "a whole number of tokens, 0 or more",
    "usd_per_day": "a number of US dollars, 0 or more",
    "default_completion_tokens": "a whole number of tokens, 0 or more",
}

WholeNumber = Annotated[int, Meta(ge=0)]
Dollars = Annotated[float, Meta(ge=0)]

# Checks and reserves a batch of requests, each atomically against the counters the ones before
# it left. KEYS: per request, its minute hash and its day hash. ARGV: the minute TTL, the day TTL,
# then per request its four limits (requests/min, tokens/min, tokens/day, USD/day; -1 when not
# set) and its token estimate. Returns per request {failed, requests this minute, tokens this
# minute, tokens today, USD spent today (a string: Lua numbers come back as integers)}: failed
# is 0 when the request was admitted and the counters include it, else a bit per failed limit
# and nothing was changed.
_RESERVE = """
local out = {}
for i = 0, #KEYS / 2 - 1 do
  local minute, day, a = KEYS[2 * i + 1], KEYS[2 * i + 2], 2 + 5 * i
  local rpm, tpm, tpd, usd = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local need = tonumber(ARGV[a + 5])
  local m = redis.call('HMGET', minute, 'requests', 'tokens')
  local d = redis.call('HMGET', day, 'tokens', 'usd')
  local requests, minute_tokens, day_tokens = tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(d[1]) or 0
  local spent = d[2] or '0'
  local failed = 0
  if rpm >= 0 and requests + 1 > rpm then failed = failed + 1 end
  if tpm >= 0 and minute_tokens + need > tpm then failed = failed + 2 end
  if tpd >= 0 and day_tokens + need > tpd then failed = failed + 4 end
  if usd >= 0 and tonumber(spent) >= usd then failed = failed + 8 end
  if failed == 0 then
    if rpm >= 0 then requests = redis.call('HINCRBY', minute, 'requests', 1) end
    if tpm >= 0 then minute_tokens = redis.call('HINCRBY', minute, 'tokens', need) end
    if rpm >= 0 or tpm >= 0 then redis.call('EXPIRE', minute, ARGV[1]) end
    if tpd >= 0 then
      day_tokens = redis.call('HINCRBY', day, 'tokens', need)
      redis.call('EXPIRE', day, ARGV[2])
    end
  end
  out[#out + 1] = {failed, requests, minute_tokens, day_tokens, spent}
end
return out
"""

# Settles a batch of reservations, each only if its request was not settled before. KEYS: per
# reservation, its minute hash, its day hash and its request's settled marker. ARGV: the day TTL,
# the marker TTL, then per reservation the bits of the limits it was admitted under, the token
# correction (actual - reserved) and the cost in USD. A token counter is corrected only while its
# window's hash exists (an expired window has nothing left to correct) and never below zero; the
# cost is added to the day's spend, which gets (or keeps) its TTL. Returns 1 (settled) or 0
# (settled before) per item.
_SETTLE = """
local function correct(key, delta)
  local current = tonumber(redis.call('HGET', key, 'tokens')) or 0
  if current + delta < 0 then delta = -current end
  if delta ~= 0 then redis.call('HINCRBY', key, 'tokens', delta) end
end
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local minute, day, settled, a = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3], 2 + 3 * i
  if redis.call('SET', settled, '1', 'NX', 'EX', ARGV[2]) then
    local limited, delta, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
    if bit.band(limited, 2) ~= 0 and redis.call('EXISTS', minute) == 1 then correct(minute, delta) end
    if bit.band(limited, 4) ~= 0 and redis.call('EXISTS', day) == 1 then correct(day, delta) end
    if bit.band(limited, 8) ~= 0 and tonumber(cost) > 0 then
      redis.call('HINCRBYFLOAT', day, 'usd', cost)
      redis.call('EXPIRE', day, ARGV[1])
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


class QuotaLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The limits of one user; a field left out (None) is not limited.

    :param requests_per_minute: requests admitted per minute, failed ones included.
    :param tokens_per_minute: prompt plus completion tokens per minute.
    :param tokens_per_day: prompt plus completion tokens per UTC day.
    :param usd_per_day: spend per UTC day, at the registry's prices.
    """

    requests_per_minute: WholeNumber | None = None
    tokens_per_minute: WholeNumber | None = None
    tokens_per_day: WholeNumber | None = None
    usd_per_day: Dollars | None = None

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, field) is None for field in LIMIT_FIELDS)

    def over(self, base: QuotaLimits) -> QuotaLimits:
        """``base`` with every limit this one sets replacing base's."""
        changes = {field: getattr(self, field) for field in LIMIT_FIELDS if getattr(self, field) is not None}
        return msgspec.structs.replace(base, **changes) if changes else base


class QuotaSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``[gateway.quota]``, typed::

        [gateway.quota]
        requests_per_minute = 60          # the defaults, for everybody
        tokens_per_day = 2_000_000
        default_completion_tokens = 1024  # assumed when a request sets no max_tokens

        [gateway.quota.claims.tier."free"]     # a token whose claim "tier" is "free"
        tokens_per_day = 100_000

        [gateway.quota.users."alice"]          # one user (the token's sub)
        usd_per_day = 25.0

    Limits override field by field: a user's over the claims' over the defaults. A claim matches
    when its value is the configured string, or holds it when the claim is a list (``groups``);
    numbers match their decimal text. When several claim entries match, the later one in the
    file wins. Every limit is 0 or more; to lift a default for someone, give them a larger value
    (``usd_per_day = inf`` lifts the dollar limit).

    :param defaults: the limits everybody has.
    :param users: user id → limits over everything else.
    :param claims: claim name → claim value → limits over the defaults.
    :param default_completion_tokens: the completion size reserved for a chat request without
        ``max_tokens``.
    """

    defaults: QuotaLimits = QuotaLimits()
    users: dict[str, QuotaLimits] = {}
    claims: dict[str, dict[str, QuotaLimits]] = {}
    default_completion_tokens: int = DEFAULT_COMPLETION_TOKENS

    @classmethod
    def from_table(cls, table: dict, source: str) -> QuotaSettings:
        """Read the ``[gateway.quota]`` table.

        :param table: the table as TOML gave it (``Settings.quota``).
        :param source: the config file's name, for messages.
        :raises ConfigError: a bad key or value, named by its full path, e.g.
            ``reactor.toml: gateway.quota.users."u1".tokens_per_day: expected ...``.
        """
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {ROOT}: expected a table [{ROOT}]")
        defaults: dict[str, Any] = {}
        users: dict[str, QuotaLimits] = {}
        claims: dict[str, dict[str, QuotaLimits]] = {}
        completion = DEFAULT_COMPLETION_TOKENS
        for key, value in table.items():
            if key in LIMIT_FIELDS:
                defaults[key] = value
            elif key == "users":
                users = {user: _limits(limits, f"{ROOT}.users.{_quoted(user)}", source)
                         for user, limits in _table(value, f"{ROOT}.users", "user id", source).items()}
            elif key == "claims":
                for claim, values in _table(value, f"{ROOT}.claims", "claim name", source).items():
                    where = f"{ROOT}.claims.{_quoted(claim)}"
                    claims[claim] = {text: _limits(limits, f"{where}.{_quoted(text)}", source)
                                     for text, limits in _table(values, where, "claim value", source).items()}
            elif key == "default_completion_tokens":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"{source}: {ROOT}.{key}: expected {_EXPECTED[key]}, got {value!r}")
                completion = value
            else:
                raise ConfigError(f"{source}: {ROOT}.{key}: unknown setting (expected one of "
                                  f"{', '.join(LIMIT_FIELDS)}, users, claims, default_completion_tokens)")
        return cls(defaults=_limits(defaults, ROOT, source), users=users, claims=claims,
                   default_completion_tokens=completion)

    def limits_for(self, user_id: str, claims: Mapping[str, Any]) -> QuotaLimits:
        """The limits of ``user_id`` whose token carries ``claims``: defaults < claims < user."""
        limits = self.defaults
        for claim, entries in self.claims.items():
            if claim not in claims:
                continue
            held = _claim_texts(claims[claim])
            for text, entry in entries.items():
                if text in held:
                    limits = entry.over(limits)
        user = self.users.get(user_id)
        return user.over(limits) if user is not None else limits

    def estimate(self, request: RequestInfo) -> int:
        """The tokens reserved for ``request``: its prompt plus the completion it may produce."""
        if request.kind in NO_COMPLETION_KINDS:
            completion = 0
        elif request.max_tokens is not None:
            completion = request.max_tokens
        else:
            completion = self.default_completion_tokens
        return max(0, request.prompt_tokens) + max(0, completion)


def _quoted(key: str) -> str:
    """A table key as TOML spells a quoted key: ``"u1"``."""
    return json.dumps(key, ensure_ascii=False)


def _table(value: Any, where: str, what: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a table keyed by {what}, got {value!r}")
    return value


_PATH = re.compile(r"`\$\.(\w+)`")


def _limits(raw: Any, where: str, source: str) -> QuotaLimits:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a table of limits ({', '.join(LIMIT_FIELDS)}), got {raw!r}")
    try:
        return msgspec.convert(raw, QuotaLimits)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.startswith("Object contains unknown field"):
            field = text.split("`")[1]
            raise ConfigError(f"{source}: {where}.{field}: unknown setting (expected one of "
                              f"{', '.join(LIMIT_FIELDS)})") from None
        match = _PATH.search(text)
        field = match.group(1) if match else ""
        if field in _EXPECTED:
            raise ConfigError(f"{source}: {where}.{field}: expected {_EXPECTED[field]}, got {raw[field]!r}") from None
        raise ConfigError(f"{source}: {where}: {text}") from None


def _claim_texts(value: Any) -> frozenset[str]:
    """The strings a claim value matches: itself, or its members when it is a list."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    return frozenset(str(item) for item in items if isinstance(item, (str, int)) and not isinstance(item, bool))


class _Held(msgspec.Struct, frozen=True, array_like=True):
    """``Reservation.data`` of this extension, a plain list once encoded.

    :param user_id: whose counters.
    :param minute: the minute window reserved in (unix time // 60).
    :param day: the UTC day window reserved in (unix time // 86400).
    :param limited: the bits of the limits the request was admitted under (``TOKENS_PER_MINUTE``…).
    :param reserved: the tokens reserved in the token counters that ``limited`` names.
    :param limit_requests: for the ``x-ratelimit-*`` headers: the request limit, if any.
    :param remaining_requests: requests left in the minute after this one.
    :param limit_tokens: the per-minute token limit, else the daily one, if any.
    :param remaining_tokens: tokens left under it after this reservation.
    """

    user_id: str
    minute: int
    day: int
    limited: int
    reserved: int
    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None


def rate_limit_headers(limit_requests: int | None, remaining_requests: int | None, limit_tokens: int | None,
                       remaining_tokens: int | None) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits that are set (the others are left out)."""
    headers = {}
    if limit_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(max(0, remaining_requests or 0))
    if limit_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, remaining_tokens or 0))
    return headers


class QuotaExtension(Extension):
    """Enforces :class:`QuotaSettings` with counters in Redis shared by every replica.

    :param redis: any pool (bytes or decoded replies).
    :param keys: the key names.
    :param settings: the limits.
    :param clock: unix time now; windows are computed from it.
    """

    name = "quota"

    def __init__(self, redis: Redis, keys: Keys, settings: QuotaSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self.settings = settings
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._reserve_batch: LoopTurnBatch[tuple[list[str], list[Any]], list[Any]] = LoopTurnBatch(self._send_reserve)
        self._settle_batch: LoopTurnBatch[tuple[list[str], list[Any]], int] = LoopTurnBatch(self._send_settle)
        # Closed by close() only when this extension opened it (make_extension).
        self._own_redis: Redis | None = None

    async def check_quota(self, request: RequestInfo) -> Reservation | None:
        """Reserve the request's share of every limit the user has, or refuse it.

        :returns: the reservation to settle in ``after_usage``; None for a user without limits.
        :raises QuotaExceeded: a limit would be exceeded (429, with ``Retry-After`` unless the
            request could never fit).
        :raises Unavailable: Redis cannot be reached (503): requests are not let through unmetered.
        """
        limits = self.settings.limits_for(request.user_id, request.claims)
        if limits.unlimited:
            return None
        now = self._clock()
        minute, day = int(now // MINUTE_S), int(now // DAY_S)
        need = self.settings.estimate(request)
        keys = [self._keys.quota_minute(request.user_id, minute), self._keys.quota_day(request.user_id, day)]
        args = [_script_limit(getattr(limits, field)) for field in LIMIT_FIELDS] + [need]
        try:
            failed, requests, minute_tokens, day_tokens, spent = await self._reserve_batch.submit((keys, args))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable(UNAVAILABLE_MESSAGE) from exc
        failed, requests, minute_tokens, day_tokens = int(failed), int(requests), int(minute_tokens), int(day_tokens)

        limit_tokens = limits.tokens_per_minute if limits.tokens_per_minute is not None else limits.tokens_per_day
        used_tokens = minute_tokens if limits.tokens_per_minute is not None else day_tokens
        held = _Held(
            user_id=request.user_id, minute=minute, day=day,
            limited=sum(1 << i for i, field in enumerate(LIMIT_FIELDS) if getattr(limits, field) is not None),
            reserved=need,
            limit_requests=limits.requests_per_minute,
            remaining_requests=None if limits.requests_per_minute is None else limits.requests_per_minute - requests,
            limit_tokens=limit_tokens,
            remaining_tokens=None if limit_tokens is None else limit_tokens - used_tokens,
        )
        headers = rate_limit_headers(held.limit_requests, held.remaining_requests, held.limit_tokens,
                                     held.remaining_tokens)
        if failed:
            raise self._refusal(limits, failed, need, float(spent), now, minute, day, headers)
        return Reservation(self.name, msgspec.to_builtins(held))

    def headers(self, reservation: Reservation | None) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of an admitted request, as its reservation recorded them.

        Empty for None or another extension's reservation.
        """
        if reservation is None or reservation.extension != self.name:
            return {}
        held = msgspec.convert(reservation.data, _Held)
        return rate_limit_headers(held.limit_requests, held.remaining_requests, held.limit_tokens,
                                  held.remaining_tokens)

    def response_headers(self, reservations: Sequence[Reservation]) -> dict[str, str]:
        for reservation in reservations:
            if reservation.extension == self.name:
                return self.headers(reservation)
        return {}

    async def after_usage(self, usage: UsageProperties, reservations: Sequence[Reservation]) -> None:
        """Replace the reserved token estimate by the real count and add the request's cost.

        A failed request that used no tokens gets its whole reservation back (it still counts as a
        request). Only the first settlement of a request counts. Redis trouble is logged, never
        raised: the counters expire with their windows.
        """
        for reservation in reservations:
            if reservation.extension != self.name:
                continue
            try:
                held = msgspec.convert(reservation.data, _Held)
            except msgspec.ValidationError as exc:
                logger.error("quota reservation of %s is unreadable (%s): %r", usage.request_id, exc, reservation.data)
                continue
            actual = max(0, usage.tokens_in) + max(0, usage.tokens_out)
            cost = usage.cost_usd if math.isfinite(usage.cost_usd) and usage.cost_usd > 0 else 0.0
            keys = [self._keys.quota_minute(held.user_id, held.minute), self._keys.quota_day(held.user_id, held.day),
                    self._keys.quota_settled(usage.request_id)]
            args = [held.limited, actual - held.reserved, repr(cost)]
            try:
                if not await self._settle_batch.submit((keys, args)):
                    logger.debug("quota of %s already settled for %s", held.user_id, usage.request_id)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("quota of %s not settled for %s (%d tokens reserved, %d used, $%s): Redis "
                               "unreachable: %r", held.user_id, usage.request_id, held.reserved, actual, cost, exc)

    async def close(self) -> None:
        if self._own_redis is not None:
            await self._own_redis.aclose()
            self._own_redis = None

    def _refusal(self, limits: QuotaLimits, failed: int, need: int, spent: float, now: float, minute: int,
                 day: int, headers: dict[str, str]) -> QuotaExceeded:
        names = [field for i, field in enumerate(LIMIT_FIELDS) if failed & (1 << i)]
        never = [field for field in names if not _can_ever_fit(field, getattr(limits, field), need)]
        if never:
            field = never[0]
            return QuotaExceeded(f"Quota exceeded ({field}): {_never_fits(field, getattr(limits, field), need)}",
                                 headers=headers, retryable=False)
        stamps = {MINUTE_S: minute, DAY_S: day}
        wait = max(max(1, math.ceil((stamps[_WINDOW_S[field]] + 1) * _WINDOW_S[field] - now)) for field in names)
        reasons = "; ".join(_describe(field, getattr(limits, field), need, spent) for field in names)
        return QuotaExceeded(f"Quota exceeded ({', '.join(names)}): {reasons}. Try again in {wait} s.",
                             headers={"Retry-After": str(wait), **headers})

    async def _send_reserve(self, batch: list[tuple[list[str], list[Any]]]) -> list[list[Any]]:
        keys = [key for item_keys, _ in batch for key in item_keys]
        args = [MINUTE_TTL_S, DAY_TTL_S] + [arg for _, item_args in batch for arg in item_args]
        return await self._reserve(keys=keys, args=args)

    async def _send_settle(self, batch: list[tuple[list[str], list[Any]]]) -> list[int]:
        keys = [key for item_keys, _ in batch for key in item_keys]
        args = [DAY_TTL_S, SETTLED_TTL_S] + [arg for _, item_args in batch for arg in item_args]
        return await self._settle(keys=keys, args=args)


def _script_limit(value: float | None) -> int | str:
    """A limit as the reserve script takes it: -1 when not set (or infinite), dollars as exact text."""
    if value is None or not math.isfinite(value):
        return NO_LIMIT
    return repr(value) if isinstance(value, float) else value


def _can_ever_fit(field: str, limit: float, need: int) -> bool:
    if field == "requests_per_minute":
        return limit >= 1
    if field == "usd_per_day":
        return limit > 0
    return need <= limit


def _never_fits(field: str, limit: float, need: int) -> str:
    if field == "requests_per_minute":
        return "no requests are allowed."
    if field == "usd_per_day":
        return "no spend is allowed."
    per = "minute" if field == "tokens_per_minute" else "day"
    return (f"this request may use {need} tokens, more than the {limit} tokens per {per} allowed; "
            "lower max_tokens or shorten the prompt.")


def _describe(field: str, limit: float, need: int, spent: float) -> str:
    if field == "requests_per_minute":
        return f"{limit} requests per minute are allowed"
    if field == "usd_per_day":
        return f"${spent:g} spent today of ${limit:g} allowed per day (UTC)"
    per = "minute" if field == "tokens_per_minute" else "day (UTC)"
    return f"{limit} tokens per {per} are allowed and this request may use {need}"


def make_extension(settings: Settings) -> QuotaExtension:
    """The factory for ``[gateway] extensions = ["shared.quota:make_extension"]``: limits from
    ``[gateway.quota]``, counters in the gateway's Redis under its key prefix, in a pool of its own."""
    quota = QuotaSettings.from_table(settings.quota or {}, settings.source)
    if not settings.redis_url:
        raise ConfigError(f"{settings.source}: gateway.redis_url: the quota extension needs the gateway's Redis")
    redis = open_redis(settings.redis_url, timeout=settings.redis_timeout)
    extension = QuotaExtension(redis, Keys(settings.key_prefix), quota)
    extension._own_redis = redis
    return extension
