"""``GET /ai/v1/fleet``: the fleet now, for operators and the console.

Per enabled provider pool: live workers, their job slots, jobs queued and running (the queue keeps
both; a running job's score is its claim deadline, in the future), and which of the registry's
routes through it are cooling down. Plus the registry in use and this front door's open requests.
Everything is read from Redis at request time in one pipeline: it is an operator's view, not a
hot path. Only tokens with the admin claim (``reactor_admin: true``) may read it.
"""

from __future__ import annotations

import time

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.errors import Forbidden, Unavailable
from shared.fleet import alive_since

from .auth import ADMIN_CLAIM
from .gateway import Gateway

class Pool(msgspec.Struct):
    provider: str
    live_workers: int
    slots: int
    queued: int
    running: int
    cooling_routes: list[str]


class RegistryState(msgspec.Struct):
    source: str
    version: int
    loaded_at: float | None
    last_error: str | None


class Fleet(msgspec.Struct):
    object: str
    pools: list[Pool]
    registry: RegistryState
    open_requests: int
    timestamp: float


async def fleet(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    identity = await gateway.authenticate(request)
    if not identity.is_admin:
        raise Forbidden(f"The fleet view needs a token with the `{ADMIN_CLAIM}` claim.")
    providers = list(gateway.settings.enabled_providers)
    registry = gateway.registry
    routes = {p: sorted({r.model for m in registry.models.values() for r in m.routes if r.provider == p})
              for p in providers}
    now = time.time()
    since = alive_since(gateway.settings.heartbeat_interval, now)
    keys = gateway.keys
    try:
        async with gateway.redis.pipeline(transaction=False) as pipe:
            for provider in providers:
                pipe.zrangebyscore(keys.workers(provider), since, "+inf")
                pipe.hgetall(keys.worker_slots(provider))
                pipe.zcount(keys.queue(provider), "-inf", int(now * 1000))
                pipe.zcount(keys.queue(provider), f"({int(now * 1000)}", "+inf")
                pipe.mget([keys.route_cooldown(provider, model) for model in routes[provider]] or ["-"])
            answers = await pipe.execute()
    except (RedisError, OSError):
        raise Unavailable("Redis is unreachable.") from None
    pools = []
    for i, provider in enumerate(providers):
        live, slots, queued, running, cooling = answers[5 * i: 5 * i + 5]
        slot_table = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in slots.items()}
        names = [w.decode() if isinstance(w, bytes) else w for w in live]
        pools.append(Pool(provider=provider, live_workers=len(names), slots=sum(slot_table.get(w, 0) for w in names),
                          queued=int(queued), running=int(running),
                          cooling_routes=[m for m, v in zip(routes[provider], cooling) if v is not None]))
    status = gateway.registry_source.status
    body = Fleet(object="fleet", pools=pools,
                 registry=RegistryState(status.source, status.version, status.loaded_at, status.last_error),
                 open_requests=gateway.replies.open_requests, timestamp=now)
    return Response(msgspec.json.encode(body), media_type="application/json")


ROUTES = [Route("/ai/v1/fleet", fleet, methods=["GET"])]
