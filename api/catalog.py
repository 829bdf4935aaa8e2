"""``GET /ai/v1/models`` and ``GET /ai/v1/health``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from shared import __version__
from shared.errors import ModelNotFound
from shared.fleet import live_workers
from shared.registry import Registry

from .gateway import Gateway
from .messages import authenticate  # a Bearer token, or Anthropic's x-api-key header


class ModelObject(msgspec.Struct, omit_defaults=True):
    id: str
    created: int
    owned_by: str
    object: str  # no default: omit_defaults would drop it, and clients need it
    # Extras (OpenAI clients ignore unknown fields): what an alias is, and what a model can do.
    alias: bool = False
    strategy: str | None = None
    targets: list[str] | None = None
    capabilities: list[str] | None = None
    context_window: int | None = None
    input_price_per_mtok: float | None = None
    output_price_per_mtok: float | None = None
    cached_input_price_per_mtok: float | None = None
    # The provider tables that can serve the model, in the order they are tried.
    providers: list[str] | None = None
    # Anthropic's model fields, set on every model so the anthropic SDKs parse the same list.
    type: str | None = None
    display_name: str | None = None
    created_at: str | None = None  # RFC 3339, from `created`


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"
    # Anthropic's page fields: the whole list is one page.
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def model_objects(registry: Registry) -> dict[str, ModelObject]:
    objects = {
        m.id: ModelObject(id=m.id, created=m.created, owned_by=m.owned_by, object="model", capabilities=sorted(m.capabilities),
                          context_window=m.context_window or None, input_price_per_mtok=m.input_price_per_mtok,
                          output_price_per_mtok=m.output_price_per_mtok,
                          cached_input_price_per_mtok=m.cached_input_price_per_mtok,
                          providers=list(dict.fromkeys(route.provider for route in m.routes)))
        for m in registry.models.values()
    }
    for a in registry.aliases.values():
        objects[a.name] = ModelObject(id=a.name, created=0, owned_by="reactor", object="model", alias=True, strategy=a.strategy,
                                      targets=list(a.targets))
    for obj in objects.values():
        obj.type, obj.display_name = "model", obj.id
        obj.created_at = datetime.fromtimestamp(obj.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return objects


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await authenticate(gateway, request)
    data = list(request.app.state.gateway.model_objects().values())
    body = ModelList(data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None)
    return Response(msgspec.json.encode(body), media_type="application/json")


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await authenticate(gateway, request)
    name = request.path_params["name"]
    obj = gateway.model_objects().get(name)
    if obj is None:
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
    return Response(msgspec.json.encode(obj), media_type="application/json")


class RegistryHealth(msgspec.Struct):
    """Which registry serves, and whether its last reload failed (the last good one stays in use)."""

    source: str
    version: int
    loaded_at: float | None
    last_error: str | None


class Health(msgspec.Struct):
    status: str
    redis: bool
    workers: dict[str, int]
    version: str
    registry: RegistryHealth | None = None
    # What to set for each enabled provider this process sees no credentials for (never a secret).
    missing_credentials: dict[str, str] = {}


async def health(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    providers = list(gateway.settings.enabled_providers)
    workers = dict.fromkeys(providers, 0)
    redis_ok = True
    try:
        counts = await asyncio.wait_for(
            live_workers(gateway.redis, gateway.keys, providers, gateway.settings.heartbeat_interval), timeout=2.0)
        workers.update(zip(providers, counts))
    except (RedisError, OSError, TimeoutError):
        redis_ok = False
    # Until the reply channel is subscribed again no answer could reach a client: not healthy.
    redis_ok = redis_ok and gateway.replies.ready
    alive = sum(workers.values())
    if gateway.draining:
        status, code = "draining", 503
    elif not redis_ok or alive == 0:
        status, code = "unavailable", 503
    elif all(workers.values()):
        status, code = "ok", 200
    else:
        status, code = "degraded", 200
    reg = gateway.registry_source.status
    registry = RegistryHealth(reg.source, reg.version, reg.loaded_at, reg.last_error)
    missing = {name: hint for name, p in gateway.settings.enabled_providers.items() if (hint := p.missing_credentials())}
    return Response(msgspec.json.encode(Health(status, redis_ok, workers, __version__, registry, missing)),
                    status_code=code, media_type="application/json")
