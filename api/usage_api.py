"""``GET /ai/v1/usage``: what a caller used, per day, model, user or provider, read from the counters.

The answer comes from the per-day counters that metering writes (``shared/usage.py``), not from
the event stream: the counters are kept for ``usage_retention_days`` whatever happens to the
stream, which is trimmed once Analytics has the events. Reading them needs no SCAN: one
SMEMBERS per day finds the day's ``user\\tmodel`` pairs in its index set, one HGETALL per pair
reads the counters, each kind in pipelines; a request asking for one user and one model reads
that pair's counters directly. The range is bounded (:data:`MAX_DAYS`), so one request costs at
most a bounded number of round trips.

Callers see only their own usage. A token carrying the admin claim (:data:`ADMIN_CLAIM` set to
JSON ``true``; ``reactor auth token USER --admin`` mints one) sees every user's.

The counters are kept per user and model only, so ``by=provider`` is answered from the registry:
each model counts under the provider of its routes, and a model routed to several providers
counts under all of them joined by ``+`` (the counters cannot tell which one served; the events
of the Analytics feed can).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import Forbidden, InvalidRequest, Unavailable
from shared.registry import Registry

from .auth import ADMIN_CLAIM
from .gateway import Gateway
from .messages import authenticate  # a Bearer token, or Anthropic's x-api-key header

# Without since/until: the last 30 UTC days, today included.
DEFAULT_DAYS = 30
# The most days one request may cover: the default usage_retention_days, beyond which nothing is kept.
MAX_DAYS = 400
GROUPINGS = ("day", "model", "user", "provider")
DEFAULT_GROUPING = "day"
PARAMETERS = ("since", "until", "user", "model", "by")
# Commands per pipeline: a year of a busy deployment's counters never becomes one huge reply.
PIPELINE_CHUNK = 500
# Costs are recorded rounded to 10 decimals (shared/usage.py cost_usd); sums are shown the same way.
COST_DECIMALS = 10
# A model routed to several providers counts under their names joined by this.
PROVIDER_JOIN = "+"
# The provider of a model the registry no longer has.
UNKNOWN_PROVIDER = "unknown"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class Counts(msgspec.Struct):
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def add(self, other: "Counts") -> None:
        self.requests += other.requests
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost_usd += other.cost_usd

    def shown(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cost_usd": round(self.cost_usd, COST_DECIMALS)}


class Query(msgspec.Struct, frozen=True):
    """A validated request: UTC days ``since``..``until`` (both included), optional filters, a grouping."""

    since: date
    until: date
    user: str | None
    model: str | None
    by: str

    @property
    def days(self) -> list[str]:
        return [(self.since + timedelta(days=i)).isoformat() for i in range((self.until - self.since).days + 1)]



def _day(value: str, name: str) -> date:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date as YYYY-MM-DD, got {value!r}.", param=name) from None


def parse_query(params: Any, caller: str, admin: bool, today: date | None = None) -> Query:
    """The query of ``GET /ai/v1/usage`` from its parameters (a Starlette ``QueryParams``).

    :raises InvalidRequest: an unknown or repeated parameter, a bad date or range, an unknown grouping.
    :raises Forbidden: a caller without the admin claim asks for another user.
    """
    for name in params.keys():
        if name not in PARAMETERS:
            raise InvalidRequest(f"Unknown parameter '{name}'; expected {', '.join(PARAMETERS)}.", param=name)
        if len(params.getlist(name)) > 1:
            raise InvalidRequest(f"'{name}' may be given once.", param=name)
    today = today or datetime.now(timezone.utc).date()
    until = _day(params["until"], "until") if params.get("until") else today
    since = _day(params["since"], "since") if params.get("since") else until - timedelta(days=DEFAULT_DAYS - 1)
    if since > until:
        raise InvalidRequest(f"'since' ({since}) is after 'until' ({until}).", param="since")
    if (until - since).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"At most {MAX_DAYS} days per request; {since}..{until} is {(until - since).days + 1}.",
                             param="since")
    by = params.get("by") or DEFAULT_GROUPING
    if by not in GROUPINGS:
        raise InvalidRequest(f"'by' must be one of {', '.join(GROUPINGS)}, got {by!r}.", param="by")
    user = params.get("user") or None
    if user is not None and user != caller and not admin:
        raise Forbidden(f"Only a token with the '{ADMIN_CLAIM}' claim may read another user's usage.", param="user")
    if user is None and not admin:
        user = caller
    return Query(since, until, user, params.get("model") or None, by)


def _number(counters: dict[bytes, bytes], field: bytes, kind: type) -> Any:
    raw = counters.get(field)
    if raw is None:
        return kind(0)
    return int(raw) if kind is int else float(raw)


def _counts(counters: dict[bytes, bytes]) -> Counts:
    return Counts(_number(counters, b"requests", int), _number(counters, b"tokens_in", int),
                  _number(counters, b"tokens_out", int), _number(counters, b"cost_usd", float))


async def _pipelined(redis: Any, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    """Run ``(command, args)`` calls in pipelines of :data:`PIPELINE_CHUNK`; their replies, in order."""
    replies: list[Any] = []
    for start in range(0, len(calls), PIPELINE_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for command, args in calls[start:start + PIPELINE_CHUNK]:
            getattr(pipe, command)(*args)
        replies.extend(await pipe.execute())
    return replies


async def read_counters(gateway: Gateway, query: Query) -> list[tuple[str, str, str, Counts]]:
    """``(day, user, model, counts)`` of every counter the query covers."""
    keys = gateway.keys
    days = query.days
    pairs: list[tuple[str, str, str]] = []
    if query.user is not None and query.model is not None:
        pairs = [(day, query.user, query.model) for day in days]
    else:
        members = await _pipelined(gateway.redis, [("smembers", (keys.usage_index(day),)) for day in days])
        for day, day_members in zip(days, members):
            for member in sorted(day_members):
                # Model ids have no tab; a user id might: split at the last one.
                user, sep, model = member.decode("utf-8", "replace").rpartition("\t")
                if not sep:
                    continue
                if (query.user is None or user == query.user) and (query.model is None or model == query.model):
                    pairs.append((day, user, model))
    replies = await _pipelined(gateway.redis, [("hgetall", (keys.usage_counters(*pair),)) for pair in pairs])
    return [(day, user, model, _counts(counters)) for (day, user, model), counters in zip(pairs, replies) if counters]


def providers_of(registry: Registry, model_id: str) -> str:
    model = registry.models.get(model_id)
    if model is None or not model.routes:
        return UNKNOWN_PROVIDER
    return PROVIDER_JOIN.join(dict.fromkeys(route.provider for route in model.routes))


def report(query: Query, rows: Iterable[tuple[str, str, str, Counts]], registry: Registry) -> dict[str, Any]:
    """The answer: totals, and one group per day, model, user or provider."""
    totals = Counts()
    groups: dict[str, Counts] = {}
    for day, user, model, counts in rows:
        totals.add(counts)
        key = providers_of(registry, model) if query.by == "provider" else {"day": day, "model": model,
                                                                              "user": user}[query.by]
        groups.setdefault(key, Counts()).add(counts)
    if query.by == "day":
        ordered = sorted(groups)
    else:
        ordered = sorted(groups, key=lambda k: (-groups[k].cost_usd, -groups[k].requests, k))
    return {
        "object": "usage",
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": query.by,
        "user": query.user,
        "model": query.model,
        "totals": totals.shown(),
        "groups": [{query.by: key, **groups[key].shown()} for key in ordered],
    }


async def usage(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    identity = await authenticate(gateway, request)
    query = parse_query(request.query_params, identity.user_id, identity.is_admin)
    try:
        rows = await read_counters(gateway, query)
    except (RedisError, OSError):
        raise Unavailable("Redis is unreachable; usage cannot be read now.") from None
    return Response(msgspec.json.encode(report(query, rows, gateway.registry)), media_type="application/json")
