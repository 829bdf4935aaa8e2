"""``GET /ai/v1/models`` and ``GET /ai/v1/health``."""

from __future__ import annotations

import asyncio

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from shared import __version__
from shared.errors import ModelNotFound
from shared.fleet import live_workers
from shared.registry import Registry

from .gateway import Gateway


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


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


def model_objects(registry: Registry) -> dict[str, ModelObject]:
    objects = {
        m.id: ModelObject(id=m.id, created=m.created, owned_by=m.owned_by, object="model", capabilities=sorted(m.capabilities),
                          context_window=m.context_window or None, input_price_per_mtok=m.input_price_per_mtok,
                          output_price_per_mtok=m.output_price_per_mtok)
        for m in registry.models.values()
    }
    for a in registry.aliases.values():
        objects[a.name] = ModelObject(id=a.name, created=0, owned_by="reactor", object="model", alias=True, strategy=a.strategy,
                                      targets=list(a.targets))
    return objects


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await gateway.authenticate(request)
    body = ModelList(list(request.app.state.gateway.model_objects().values()))
    return Response(msgspec.json.encode(body), media_type="application/json")


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await gateway.authenticate(request)
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
    if not redis_ok or alive == 0:
        status, code = "unavailable", 503
    elif all(workers.values()):
        status, code = "ok", 200
    else:
        status, code = "degraded", 200
    reg = gateway.registry_source.status
    registry = RegistryHealth(reg.source, reg.version, reg.loaded_at, reg.last_error)
    return Response(msgspec.json.encode(Health(status, redis_ok, workers, __version__, registry)), status_code=code,
                    media_type="application/json")
