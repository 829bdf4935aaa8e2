"""The Starlette application: the front door's routes, error rendering and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.config import Settings
from shared.errors import GatewayError, InternalError, InvalidRequest, MethodNotAllowed, NotFound
from shared.extensions import Extension, build_extensions
from shared.overlay import FixedRegistry, RegistrySource
from shared.registry import Registry

from .auth import JWKSVerifier, LocalKey, LocalVerifier, Verifier
from .catalog import get_model, health, list_models
from .completions import chat_completions, embeddings
from . import responses
from .messages import ROUTES as MESSAGES_ROUTES
from .fleet_api import ROUTES as FLEET_ROUTES
from .gateway import Gateway
from .identity import ROUTES as IDENTITY_ROUTES
from .identity import IdentityService

logger = logging.getLogger("reactor.api")


def render(exc: GatewayError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return Response(exc.to_json(), status_code=exc.status, media_type="application/json", headers=headers)


async def on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return render(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return render(NotFound(f"No route {request.method} {request.url.path}."))
    if exc.status_code == 405:
        return render(MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}."))
    return render(InvalidRequest(str(exc.detail), status=exc.status_code))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return render(InternalError("The gateway failed to handle this request."))


def create_app(settings: Settings, registry: Registry | None = None, verifier: Verifier | None = None,
               on_ready: Callable[[], None] | None = None,
               extensions: Sequence[Extension] | None = None) -> Starlette:
    """Build the app.

    :param settings: the gateway settings.
    :param registry: the registry to serve; loaded from ``settings`` at start-up when None.
    :param verifier: the token verifier; JWKS or the local key from ``settings`` when None.
    :param on_ready: called once start-up is done, before the first request (the CLI tunes the
        garbage collector and the open-files limit there: ``shared.runtime.tune_process``).
    :param extensions: quota, routing and usage hooks (``shared/extensions.py``); when None, the
        ones ``settings`` names (``[gateway.quota]``, ``extensions = [...]``).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        source = FixedRegistry(registry) if registry is not None else RegistrySource(settings)
        await source.load()
        redis = Redis.from_url(settings.redis_url, max_connections=512)
        async with contextlib.AsyncExitStack() as stack:
            watcher = asyncio.create_task(source.watch(), name="registry-watch")
            stack.callback(watcher.cancel)
            if source.install_sighup():
                stack.callback(source.remove_sighup)
            stack.push_async_callback(redis.aclose)
            ver = verifier
            # Without an external Identity the local key signs (the embedded Identity's tokens and
            # `reactor auth token`'s) and verifies.
            local_key = LocalKey.load_or_create(settings.data_dir) if embedded_identity else None
            if ver is None and settings.auth_url:
                http = await stack.enter_async_context(httpx.AsyncClient())
                ver = JWKSVerifier(settings.auth_url, http, settings.auth_issuer, settings.auth_audience)
            elif ver is None:
                ver = LocalVerifier(local_key or LocalKey.load_or_create(settings.data_dir), settings.auth_issuer,
                                    settings.auth_audience)
            if local_key is not None:
                app.state.identity = IdentityService(settings, redis, local_key, ver)
            exts = list(extensions) if extensions is not None else build_extensions(settings, redis)
            for extension in exts:
                stack.push_async_callback(extension.close)
            gateway = Gateway(settings, source, redis, ver, exts)
            await gateway.start()
            stack.push_async_callback(gateway.stop)
            app.state.gateway = gateway
            if on_ready is not None:
                on_ready()
            yield

    # The embedded Identity (api/identity.py) serves sign-in unless an external one is configured.
    embedded_identity = not settings.auth_url and settings.data_dir is not None

    routes = [
        Route("/ai/v1/health", health, methods=["GET"]),
        Route("/ai/v1/models", list_models, methods=["GET"]),
        Route("/ai/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/ai/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/ai/v1/embeddings", embeddings, methods=["POST"]),
        *responses.ROUTES,
        *MESSAGES_ROUTES,
        *FLEET_ROUTES,
        *(IDENTITY_ROUTES if embedded_identity else ()),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={GatewayError: on_gateway_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
