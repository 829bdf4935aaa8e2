"""The Starlette application: the front door's routes, error rendering and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.config import Settings
from shared.errors import GatewayError, InternalError, InvalidRequest, MethodNotAllowed, NotFound
from shared.extensions import Extension, build_extensions
from shared.metrics import GatewayMetrics
from shared.overlay import FixedRegistry, RegistrySource
from shared.redis_client import open_redis
from shared.registry import Registry
from shared.tracing import Tracing

from .auth import JWKSVerifier, LocalKey, LocalVerifier, Verifier
from .catalog import get_model, health, list_models
from .openapi import openapi
from .completions import chat_completions, embeddings
from . import responses
from . import usage_api
from .messages import ROUTES as MESSAGES_ROUTES
from .messages import render_error as render_anthropic_error
from .fleet_api import ROUTES as FLEET_ROUTES
from .console import ROUTES as CONSOLE_ROUTES
from .gateway import Gateway
from .identity import ROUTES as IDENTITY_ROUTES
from .identity import IdentityService
from .observe import ObserveRequests, metrics_route, note_error

logger = logging.getLogger("reactor.api")
# The front door's Redis connections at most: a request holds one only for a command, so this
# bounds Redis's client count per replica, not the requests in flight.
MAX_REDIS_CONNECTIONS = 512
# Errors under this path are rendered in Anthropic's shape (see api/messages.py).
MESSAGES_PATH = "/ai/v1/messages"


def render(exc: GatewayError) -> Response:
    note_error(exc)
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return Response(exc.to_json(), status_code=exc.status, media_type="application/json", headers=headers)


def render_for(request: Request, exc: GatewayError) -> Response:
    """``exc`` in the shape the caller's SDK parses: Anthropic's under ``/ai/v1/messages``, else OpenAI's."""
    path = request.url.path
    if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/"):
        note_error(exc)
        return render_anthropic_error(exc)
    return render(exc)


async def on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return render_for(request, exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return render_for(request, NotFound(f"No route {request.method} {request.url.path}."))
    if exc.status_code == 405:
        return render_for(request, MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.",
                                                    headers=dict(exc.headers or {})))
    return render_for(request, InvalidRequest(str(exc.detail), status=exc.status_code))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return render_for(request, InternalError("The gateway failed to handle this request."))


def create_app(settings: Settings, registry: Registry | None = None, verifier: Verifier | None = None,
               on_ready: Callable[[], None] | None = None,
               extensions: Sequence[Extension] | None = None, metrics: GatewayMetrics | None = None,
               tracing: Tracing | None = None) -> Starlette:
    """Build the app.

    :param settings: the gateway settings.
    :param registry: the registry to serve; loaded from ``settings`` at start-up when None.
    :param verifier: the token verifier; JWKS or the local key from ``settings`` when None.
    :param on_ready: called once start-up is done, before the first request (the CLI tunes the
        garbage collector and the open-files limit there: ``shared.runtime.tune_process``).
    :param extensions: quota, routing and usage hooks (``shared/extensions.py``); when None, the
        ones ``settings`` names (``[gateway.quota]``, ``extensions = [...]``).
    :param metrics: served at ``GET /metrics`` and fed by every request; None for no metrics (every
        request is still logged and gets its ``X-Request-Id``: ``api/observe.py``).
    :param tracing: a span per inference request, its context carried to the workers in the job
        (``shared/tracing.py``); None for no traces. Whoever made it closes it.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        source = FixedRegistry(registry) if registry is not None else RegistrySource(settings)
        await source.load()
        redis = open_redis(settings.redis_url, timeout=settings.redis_timeout, max_connections=MAX_REDIS_CONNECTIONS)
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
            gateway = Gateway(settings, source, redis, ver, exts, tracing=tracing)
            await gateway.start()
            stack.push_async_callback(gateway.stop)
            if metrics is not None:
                metrics.fleet.attach(redis, gateway.keys, list(settings.enabled_providers),
                                     settings.heartbeat_interval)
                stack.callback(metrics.fleet.detach)
            app.state.gateway = gateway
            if on_ready is not None:
                on_ready()
            yield

    # The embedded Identity (api/identity.py) serves sign-in unless an external one is configured.
    embedded_identity = not settings.auth_url and settings.data_dir is not None

    routes = [
        Route("/ai/v1/health", health, methods=["GET"]),
        Route("/ai/v1/openapi.json", openapi, methods=["GET"]),
        Route("/ai/v1/models", list_models, methods=["GET"]),
        Route("/ai/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/ai/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/ai/v1/embeddings", embeddings, methods=["POST"]),
        Route("/ai/v1/usage", usage_api.usage, methods=["GET"]),
        *responses.ROUTES,
        *MESSAGES_ROUTES,
        *FLEET_ROUTES,
        *CONSOLE_ROUTES,
        *(IDENTITY_ROUTES if embedded_identity else ()),
        *((metrics_route(metrics),) if metrics is not None else ()),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(ObserveRequests, metrics=metrics, tracing=tracing)],
        exception_handlers={GatewayError: on_gateway_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
