"""What the front door records of each request: its id, one log line when it ends, and metrics.

:class:`ObserveRequests` wraps the app as plain ASGI, so a stream is measured to its last byte. It
opens a :class:`RequestRecord` per request that the steps every surface shares (``inference.py``)
fill in as the request goes: who asked, the job, the worker's replies, the queue wait, the first
token, the error. The record is reached through :data:`current` rather than passed along, so the
surfaces' signatures stay as they are. When the response is over the middleware writes the line
(logger ``reactor.requests``, at info) and observes the :class:`GatewayMetrics` it was given.
Nothing here touches Redis: the fleet gauges are read when ``/metrics`` is scraped.

``X-Request-Id``: a client's own id, when it is a safe token (:data:`CLIENT_ID`), is echoed back
and carried in the job as ``client_request_id``, beside the gateway's request id and never instead
of it. The gateway's id names the job, its reply stream and its usage record, and must be unique;
clients reuse theirs (a retry sends the same one). Without a usable client id the response
carries the gateway's id: the job's, or one made for a request that never became a job.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import GatewayError
from shared.logs import log_context
from shared.metrics import GatewayMetrics
from shared.tracing import Tracing
from shared.wire import Job

from .replies import ReplyStream
from .sse import BODY_SEND

# What a client's X-Request-Id may be to be kept: a token that is safe in logs, headers and labels.
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
METRICS_PATH = "/metrics"
# The error code of a stream whose client hung up before its end.
CLIENT_CLOSED = "client_closed"
# Inference routes by path, so a request refused before its surface is known (401, 413) still
# counts under it. Other routes count under their handler's name, unknown paths as "unmatched".
INFERENCE_SURFACES = {
    "/ai/v1/chat/completions": "chat",
    "/ai/v1/embeddings": "embeddings",
    "/ai/v1/responses": "responses",
    "/ai/v1/messages": "messages",
}
_REQUEST_ID_HEADER = b"x-request-id"

request_log = logging.getLogger("reactor.requests")


def client_request_id(value: str | None) -> str | None:
    """The client's ``X-Request-Id`` when it is a safe token, else None (a new id is used)."""
    return value if value is not None and CLIENT_ID.fullmatch(value) else None


class RequestRecord:
    """What one request did, filled in as it goes; read when it is over."""

    __slots__ = ("method", "path", "surface", "client_request_id", "started", "user_id", "job", "replies",
                 "queue_wait_s", "first_token_at", "code", "status", "span", "_own_id")

    def __init__(self, method: str, path: str, surface: str | None, client_id: str | None) -> None:
        self.method = method
        self.path = path
        self.surface = surface
        self.client_request_id = client_id
        self.started = time.perf_counter()
        self.user_id: str | None = None
        self.job: Job | None = None
        self.replies: ReplyStream | None = None
        self.queue_wait_s: float | None = None
        self.first_token_at: float | None = None
        self.code: str | None = None
        self.status: int | None = None
        # The request's span when traces are on (shared/tracing.py), ended with the record.
        self.span: Any = None
        self._own_id: str | None = None

    @property
    def request_id(self) -> str:
        """The gateway's id of the request: its job's, or one made for it."""
        if self.job is not None:
            return self.job.request_id
        if self._own_id is None:
            self._own_id = uuid.uuid4().hex
        return self._own_id

    def admitted(self, surface: str, user_id: str) -> None:
        self.surface, self.user_id = surface, user_id

    def first_token(self) -> None:
        """The first token is leaving for the client (later calls change nothing)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def failed(self, code: str) -> None:
        """The request failed with ``code``; the first failure is the one reported."""
        if self.code is None:
            self.code = code

    def served_by(self) -> tuple[str, str]:
        """(model id, provider) that served, or were to serve; ("", "") before a model was chosen.

        The worker's start reply of the attempt that served names both: after a fallback between
        two providers of one model, the model alone would not tell which served.
        """
        job = self.job
        if job is None or not job.targets:
            return "", ""
        replies = self.replies
        if replies is not None and replies.model_id is not None:
            if replies.provider is not None:
                return replies.model_id, replies.provider
            for target in job.targets:  # a start reply from a worker that does not name its provider
                if target.model_id == replies.model_id:
                    return target.model_id, target.provider
        target = job.targets[job.attempt]
        return target.model_id, target.provider


# The record of the request the current task serves, set by ObserveRequests.
current: ContextVar[RequestRecord | None] = ContextVar("reactor_request", default=None)


def note_error(exc: GatewayError) -> None:
    """Record ``exc`` as the current request's failure (the app's error rendering calls this)."""
    record = current.get()
    if record is not None:
        record.failed(exc.code)


class ObserveRequests:
    """ASGI middleware: ``X-Request-Id`` on every response, one log line per request, and the
    request metrics.

    :param app: the application.
    :param metrics: where to count requests; None to only log them.
    :param log: the per-request line's logger.
    :param tracing: ends the span a surface started for the request (``inference.admit``), once
        the response is over.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics | None = None, log: logging.Logger = request_log,
                 tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.log = log
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        client_id = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_HEADER:
                client_id = client_request_id(value.decode("latin-1"))
                break
        path = scope["path"]
        record = RequestRecord(scope["method"], path, INFERENCE_SURFACES.get(path), client_id)
        surface_at_start = record.surface or "other"
        metrics = self.metrics
        if metrics is not None:
            metrics.request_started(surface_at_start)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = message.get("headers", ())
                for name, _ in headers:
                    if name.lower() == _REQUEST_ID_HEADER:
                        break
                else:
                    own = (_REQUEST_ID_HEADER, (record.client_request_id or record.request_id).encode())
                    message = {**message, "headers": [*headers, own]}
            await send(message)

        # Body frames of a stream need none of the wrappers below (each looks at the head only).
        scope[BODY_SEND] = send
        token = current.set(record)
        context = log_context.set(record)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log_context.reset(context)
            current.reset(token)
            self._ended(record, scope, time.perf_counter(), surface_at_start)

    def _ended(self, record: RequestRecord, scope: Scope, now: float, surface_at_start: str) -> None:
        surface = record.surface
        if surface is None:
            endpoint = scope.get("endpoint")
            surface = ("unmatched" if endpoint is None
                       else getattr(endpoint, "__name__", None) or type(endpoint).__name__)
        status = record.status or 500
        model, provider = record.served_by()
        latency = now - record.started
        job = record.job
        stream = job.stream if job is not None else None
        ttft = record.first_token_at - record.started if stream and record.first_token_at is not None else None
        if self.metrics is not None:
            self.metrics.request_ended(surface, model, provider, status, record.code, latency, ttft,
                                       record.queue_wait_s,
                                       job.targets[0].provider if job is not None and job.targets else "",
                                       started_as=surface_at_start)
        if record.span is not None and self.tracing is not None:
            self.tracing.request_ended(record.span, status, record.code, model, provider)
        if self.log.isEnabledFor(logging.INFO):
            self.log.info("request", extra={"fields": {
                "request_id": record.request_id, "client_request_id": record.client_request_id,
                "method": record.method, "path": record.path, "surface": surface, "user": record.user_id,
                "model": model or None, "alias": job.alias if job is not None else None, "provider": provider or None,
                "stream": stream, "status": status, "code": record.code,
                "queue_wait_ms": _ms(record.queue_wait_s), "ttft_ms": _ms(ttft), "latency_ms": _ms(latency),
            }})


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


def metrics_route(metrics: GatewayMetrics) -> Route:
    """``GET /metrics``: the Prometheus text page. No auth: its labels name models, providers and
    surfaces, never users; keep the port off the public internet (or scrape through a proxy)."""

    async def page(request: Request) -> Response:
        body, content_type = await metrics.render()
        return Response(body, media_type=content_type)

    return Route(METRICS_PATH, page, methods=["GET"])
