"""An in-process fake of Azure OpenAI / Azure AI Foundry, for testing the gateway's Azure provider.

It serves the three URL families a resource answers on, all OpenAI-shaped plus Azure's extras:

- classic, ``POST /openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=V``:
  the deployment in the path decides, ``model`` in the body is ignored, ``api-version`` is required;
- v1, ``POST /openai/v1/{chat/completions|embeddings}`` with the deployment name as ``model``, and
  ``GET /openai/v1/models[/{id}]``; an ``api-version`` query parameter is tolerated, not required;
- Foundry model inference, ``POST /models/{chat/completions|embeddings}?api-version=V`` with
  ``model`` in the body.

Auth is ``api-key: <key>`` or ``Authorization: Bearer <key>``. Checks run in Azure's order: a
missing ``api-version`` (404 ``Resource not found``), the key (401), an unsupported version (400),
the body, the deployment (404 ``DeploymentNotFound``; ``unknown_model`` on ``/models``), and the
operation (400 ``OperationNotSupported``, e.g. chat on an embedding deployment).

Every chat answer is the one :func:`tests.mocks.script.plan` decides, so the same prompt gets the
same answer from every provider's mock. Answers carry ``prompt_filter_results`` and per-choice
``content_filter_results``. A stream starts with Azure's empty chunk (no choices, ``id``/``model``/
``object`` empty, ``created`` 0, only ``prompt_filter_results``), then a role chunk, content or
tool-call chunks annotated with ``content_filter_results`` (``{}`` on some), a finish chunk with an
empty delta, a ``choices: []`` usage chunk when ``stream_options.include_usage`` is true, and
``data: [DONE]``.

Directives in the last user text (see script.py for the shared ones):

- ``#chunks=N``, ``#tools[=N]``, ``#delay=MS``, ``#hang``, ``#no_usage``, ``#cached=N``,
  ``#echo_body``: as script.py describes.
- ``#status=CODE``: that HTTP error in Azure's shape, ``{"error":{"code":"CODE","message":...}}``
  (a numeric string, no ``type``). ``429`` carries ``retry-after``, ``retry-after-ms``,
  ``x-ratelimit-remaining-*`` and ``apim-request-id`` and Azure's rate-limit message.
- ``#status=CODE #exception=content_filter``: the prompt-filtered error (``code: content_filter``,
  ``param: prompt``, ``innererror`` with ``ResponsibleAIPolicyViolation`` and hate filtered high).
- ``#status=CODE #exception=NAME``: the same error with ``code`` NAME (e.g. ``context_length_exceeded``).
- ``#exception=content_filter`` alone: the output is filtered, HTTP 200 with the first
  ``CONTENT_FILTER_AFTER`` pieces, ``finish_reason: "content_filter"`` and ``OUTPUT_FILTER_CATEGORY``
  filtered in ``content_filter_results``, streamed or not.
- ``#midstream_error``: ``MIDSTREAM_ERROR_AFTER`` deltas, then ``data: {"error":{...}}`` and the end
  of the stream without ``[DONE]``; ``#exception=NAME`` sets the error's ``code``.

Embeddings take ``#status``/``#exception`` and ``#delay`` from their string inputs.

Standalone: ``python -m tests.mocks.azure --port 18003 [--api-key K]``.
"""

from __future__ import annotations

import argparse
import base64
import math
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import anyio
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from .script import (
    MIDSTREAM_ERROR_AFTER,
    BadRequest,
    Conversation,
    Plan,
    ToolCallPlan,
    embedding_vector,
    parse_directives,
    plan,
)

Style = Literal["deployment", "v1", "models"]
Operation = Literal["chat", "embeddings"]

DEFAULT_API_KEY = "azure-mock-key"
DEFAULT_PORT = 18003
DEFAULT_DEPLOYMENTS: dict[str, str] = {
    name: name for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "text-embedding-3-small", "text-embedding-3-large")
}
SUPPORTED_API_VERSIONS: tuple[str, ...] = (
    "2024-02-01",
    "2024-06-01",
    "2024-10-21",
    "2024-05-01-preview",
    "2024-08-01-preview",
    "2024-10-01-preview",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
)
FOUNDRY_API_VERSION = "2024-05-01-preview"
# Stands in for the api-version in messages about v1 requests, which carry none.
V1_VERSION_LABEL = "v1"

TOOL_CALL_ID = "call_azure{i}"
SYSTEM_FINGERPRINT = "fp_azuremock"
MODELS_CREATED = 1715367049

# Native sizes; ``dimensions`` may shorten text-embedding-3-* vectors, never lengthen them.
EMBEDDING_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_EMBEDDING_DIMENSIONS = 1536
SHORTENABLE_EMBEDDING_PREFIX = "text-embedding-3-"

FILTER_CATEGORIES = ("hate", "self_harm", "sexual", "violence")
PROMPT_FILTER_CATEGORY = "hate"
PROMPT_FILTER_SEVERITY = "high"
OUTPUT_FILTER_CATEGORY = "violence"
OUTPUT_FILTER_SEVERITY = "medium"
CONTENT_FILTER_AFTER = 2
CONTENT_FILTER_EXCEPTION = "content_filter"
# Azure annotates the output in batches: every this-many content chunks (and the last) carry the full
# content_filter_results, the rest carry {}.
FILTER_ANNOTATION_EVERY = 2

RETRY_AFTER_SECONDS = 6
RATE_LIMIT_REMAINING_REQUESTS = 99
RATE_LIMIT_REMAINING_TOKENS = 99000
REGION = "Mock Region"

START_TIMEOUT = 10.0
# Backstop for requests still open at stop(), e.g. in a long #delay: uvicorn cancels them after this.
GRACEFUL_SHUTDOWN = 0.5
# How often a #hang checks whether stop() was called; uvicorn would otherwise cancel it noisily.
STOP_POLL = 0.05

RESOURCE_NOT_FOUND = "Resource not found"
API_VERSION_NOT_SUPPORTED = "API version not supported"
ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, "
    "please wait a moment and try again."
)
NO_MODEL_NAME = (
    "No model specified in request. Please provide a model name in the request body or as a "
    "x-ms-model-mesh-model-name header."
)
OPERATION_NOT_SUPPORTED = (
    "The {operation} operation does not work with the specified model, {model}. Please choose different model and "
    "try again. You can learn more about which models can be used with each operation here: "
    "https://go.microsoft.com/fwlink/?linkid=2197993."
)
PROMPT_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify "
    "your prompt and retry. To learn more about our content filtering policies please read our documentation: "
    "https://go.microsoft.com/fwlink/?linkid=2198766"
)
RATE_LIMITED = (
    "Requests to the {operation} Operation under Azure OpenAI API version {version} have exceeded token rate limit "
    "of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds. Please go here: "
    "https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
)
MIDSTREAM_ERROR_CODE = "server_error"
MIDSTREAM_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
STATUS_MESSAGES: dict[int, str] = {
    401: ACCESS_DENIED,
    403: "Public access is disabled. Please configure private endpoint.",
    404: RESOURCE_NOT_FOUND,
    408: "The operation was timeout.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request. Please try again later.",
}
_OPERATION_NAMES: dict[Operation, str] = {"chat": "ChatCompletions_Create", "embeddings": "Embeddings_Create"}
_OPERATION_LABELS: dict[Operation, str] = {"chat": "chatCompletion", "embeddings": "embeddings"}


class Received(msgspec.Struct):
    """One request as the mock saw it; the mock keeps updating it while it answers.

    style: the URL family, or None for a path the mock doesn't serve. deployment: the deployment (or
    Foundry model) name the request asked for, known or not.
    """

    method: str
    path: str
    query: dict[str, str]
    style: Style | None
    deployment: str | None
    headers: dict[str, str]
    body: dict[str, Any] | None
    stream: bool = False
    # Content (or tool-call) chunks written before the end or the hang-up.
    chunks_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    # What the mock reported, or would have reported had #no_usage / #hang / a hang-up not stopped it.
    usage: dict[str, Any] | None = None


class _AzureError(Exception):
    """Ends a request with this status and body."""

    def __init__(self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error
        self.headers = headers or {}


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status, headers=headers, media_type="application/json")


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else msgspec.json.encode(payload)
    return b"data: " + data + b"\n\n"


def _azure_error(status: int, code: str, message: str, **extra: Any) -> _AzureError:
    return _AzureError(status, {"code": code, "message": message, **extra})


def _invalid_request(message: str, param: str | None = None) -> _AzureError:
    """A body the model rejects; Azure passes these on in OpenAI's shape."""
    return _AzureError(400, {"message": message, "type": "invalid_request_error", "param": param, "code": None})


def filter_results(
    filtered: str | None = None, severity: str = "safe", *, output: bool = True
) -> dict[str, dict[str, Any]]:
    """Azure's content-filter annotation: ``filtered`` is the category that tripped, if any.

    output: True for a choice (adds the protected-material checks), False for the prompt (adds jailbreak).
    """
    out: dict[str, dict[str, Any]] = {
        category: {"filtered": category == filtered, "severity": severity if category == filtered else "safe"}
        for category in FILTER_CATEGORIES
    }
    if output:
        out["protected_material_code"] = {"filtered": False, "detected": False}
        out["protected_material_text"] = {"filtered": False, "detected": False}
    else:
        out["jailbreak"] = {"filtered": False, "detected": False}
    return out


def prompt_filter_results() -> list[dict[str, Any]]:
    return [{"prompt_index": 0, "content_filter_results": filter_results(output=False)}]


def _message_text(message: Any) -> str:
    """The text of a message: its content string, or its text parts joined by spaces."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def conversation_of(body: dict[str, Any]) -> Conversation:
    """An OpenAI-shaped chat request in the neutral terms the plan is made from."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    user_texts = [_message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    tool_results: list[str] = []
    for message in reversed(messages):
        if not (isinstance(message, dict) and message.get("role") == "tool"):
            break
        tool_results.insert(0, _message_text(message))
    tool_names: list[str] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            tool_names.append(function["name"])
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    stop = body.get("stop")
    if isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list):
        stops = [s for s in stop if isinstance(s, str)]
    else:
        stops = []
    return Conversation(
        texts=[_message_text(m) for m in messages],
        last_user_text=next((text for text in reversed(user_texts) if text), ""),
        tool_results=tool_results,
        tool_names=tool_names,
        max_tokens=max_tokens,
        stop=stops,
    )


def _embedding_inputs(raw: Any) -> list[str] | list[list[int]]:
    """Normalise the four accepted ``input`` shapes to a list of inputs."""

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            return raw
        if all(is_int(x) for x in raw):
            return [raw]
        if all(isinstance(x, list) and x and all(is_int(t) for t in x) for x in raw):
            return raw
    raise BadRequest("input must be a string, a list of strings, a list of ints or a list of int lists")


def is_embedding_model(model: str) -> bool:
    return "embedding" in model


class _Answer(msgspec.Struct):
    """What a chat request gets: the plan, narrowed by Azure's output filter when it trips."""

    pieces: list[str]
    tool_calls: list[ToolCallPlan]
    finish: str
    usage: dict[str, Any]
    filtered: bool

    @classmethod
    def of(cls, decided: Plan) -> _Answer:
        directives = decided.directives
        filtered = directives.get("exception") == CONTENT_FILTER_EXCEPTION and "status" not in directives
        if not filtered:
            return cls(decided.pieces, decided.tool_calls, decided.finish, decided.usage(), False)
        pieces = decided.pieces[:CONTENT_FILTER_AFTER]
        usage = decided.usage()
        usage["completion_tokens"] = len(pieces)
        usage["total_tokens"] = usage["prompt_tokens"] + len(pieces)
        return cls(pieces, [], "content_filter", usage, True)

    def choice_filter(self) -> dict[str, Any]:
        if self.filtered:
            return filter_results(OUTPUT_FILTER_CATEGORY, OUTPUT_FILTER_SEVERITY)
        return filter_results() if self.pieces else {}


class _EventStream(StreamingResponse):
    """An SSE response that notices a hang-up even while the body is asleep, and records it."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], record: Received, headers: dict[str, str]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", **headers})
        self._events = events
        self._record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette only races the body against http.disconnect for ASGI < 2.4; from 2.4 on it learns
        # of a hang-up from a failed write, which never comes while #hang or #delay sleeps.
        ended = False

        async def send_noting_end(message: Message) -> None:
            # Noted before the write: once the last body message is out, uvicorn answers receive()
            # with http.disconnect too, and that must not pass for a hang-up.
            nonlocal ended
            ended = ended or (message["type"] == "http.response.body" and not message.get("more_body", False))
            await send(message)

        try:
            async with anyio.create_task_group() as group:

                async def relay() -> None:
                    await self.stream_response(send_noting_end)
                    group.cancel_scope.cancel()

                group.start_soon(relay)
                await self.listen_for_disconnect(receive)
                if not ended and not self._record.completed:
                    self._record.disconnected = True
                group.cancel_scope.cancel()
        finally:
            # The generator may be parked at a yield rather than inside an await; close it now
            # instead of whenever it is garbage-collected.
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()


class _ChatReply:
    """Everything that stays the same across the chunks (or the body) of one chat answer."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.created = int(time.time())
        self.id = f"chatcmpl-{uuid.uuid4().hex[:29]}"

    def envelope(self, object_: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }


def _tool_call(call: ToolCallPlan, arguments: str | None = None) -> dict[str, Any]:
    """A planned tool call in OpenAI's shape; ``arguments`` overrides the planned ones (a stream's head)."""
    function = {"name": call.name, "arguments": call.arguments if arguments is None else arguments}
    return {"id": call.id, "type": "function", "function": function}


class MockAzure:
    """A fake Azure OpenAI resource served by uvicorn on a background thread.

    api_key: the only key accepted, as ``api-key: <key>`` or ``Authorization: Bearer <key>``.
    deployments: deployment name → the model it serves (what answers report as ``model``).
    api_versions: the dated ``api-version`` values the classic and ``/models`` routes accept.
    host, port: where to listen; port 0 lets the OS choose a free one.
    """

    def __init__(
        self,
        api_key: str,
        *,
        deployments: dict[str, str] | None = None,
        api_versions: tuple[str, ...] = SUPPORTED_API_VERSIONS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.deployments = dict(DEFAULT_DEPLOYMENTS if deployments is None else deployments)
        self.api_versions = tuple(api_versions)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._bound_port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        routes = [
            Route("/openai/deployments/{deployment}/chat/completions", self._classic_chat, methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", self._classic_embeddings, methods=["POST"]),
            Route("/openai/v1/chat/completions", self._v1_chat, methods=["POST"]),
            Route("/openai/v1/embeddings", self._v1_embeddings, methods=["POST"]),
            Route("/openai/v1/models", self._v1_models, methods=["GET"]),
            Route("/openai/v1/models/{model}", self._v1_model, methods=["GET"]),
            Route("/models/chat/completions", self._foundry_chat, methods=["POST"]),
            Route("/models/embeddings", self._foundry_embeddings, methods=["POST"]),
            # Anything else, including a known path with the wrong method, is Azure's bare 404.
            Route(
                "/{path:path}",
                self._unknown,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
            ),
        ]
        self.app = Starlette(routes=routes)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("mock Azure is not started")
        return self._bound_port

    @property
    def endpoint(self) -> str:
        """The resource endpoint, as ``https://RES.openai.azure.com`` would be; for ``azure_endpoint=``."""
        return f"http://{self._host}:{self.port}"

    @property
    def v1_base_url(self) -> str:
        """Base URL of the v1 family, ready for ``openai.OpenAI(base_url=...)``."""
        return f"{self.endpoint}/openai/v1/"

    @property
    def models_base_url(self) -> str:
        """Base URL of the Foundry model-inference family (add ``?api-version=``)."""
        return f"{self.endpoint}/models"

    def _bind(self) -> uvicorn.Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._socket = sock
        self._bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="h11",
            loop="asyncio",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        self._server = uvicorn.Server(config)
        return self._server

    def start(self) -> MockAzure:
        """Serve on a background thread; returns once the port accepts connections."""
        server = self._bind()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="mock-azure", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mock Azure failed to start")
            time.sleep(0.005)
        return self

    def run(self) -> None:
        """Serve in the calling thread until interrupted (the standalone mode)."""
        server = self._bind()
        print(f"mock Azure OpenAI on {self.endpoint}", flush=True)
        server.run(sockets=[self._socket])

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = None

    def __enter__(self) -> MockAzure:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- recording ---------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.received.clear()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> bool:
        """Poll until ``predicate(received)`` holds; False once ``timeout`` seconds pass.

        predicate: called with a snapshot of the list (same Received objects); an IndexError or
        KeyError from it counts as "not yet", so ``lambda r: r[-1].completed`` is safe to pass.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                snapshot = list(self.received)
            try:
                if predicate(snapshot):
                    return True
            except LookupError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    async def _record(self, request: Request, style: Style | None) -> Received:
        raw = await request.body()
        body: dict[str, Any] | None = None
        if raw:
            try:
                decoded = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                decoded = None
            body = decoded if isinstance(decoded, dict) else None
        deployment = request.path_params.get("deployment")
        if deployment is None and body is not None and isinstance(body.get("model"), str):
            deployment = body["model"]
        record = Received(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            style=style,
            deployment=deployment,
            headers=dict(request.headers),
            body=body,
            stream=bool(body and body.get("stream") is True),
        )
        with self._lock:
            self.received.append(record)
        return record

    # -- checks ------------------------------------------------------------------------------

    @staticmethod
    def _headers(**overrides: str) -> dict[str, str]:
        """The headers Azure puts on every answer."""
        request_id = str(uuid.uuid4())
        return {
            "apim-request-id": request_id,
            "x-request-id": request_id,
            "x-ms-region": REGION,
            "x-ratelimit-remaining-requests": str(RATE_LIMIT_REMAINING_REQUESTS),
            "x-ratelimit-remaining-tokens": str(RATE_LIMIT_REMAINING_TOKENS),
            **overrides,
        }

    def _error_response(self, error: _AzureError) -> Response:
        return _json({"error": error.error}, error.status, self._headers(**error.headers))

    def _api_version(self, request: Request, style: Style) -> str:
        """The request's api-version after the checks that come before auth; V1_VERSION_LABEL for v1."""
        version = request.query_params.get("api-version")
        if style == "v1":
            return version or V1_VERSION_LABEL
        if not version:
            raise _azure_error(404, "404", RESOURCE_NOT_FOUND)
        return version

    def _authorise(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if request.headers.get("api-key") == self.api_key:
            return
        if scheme.lower() == "bearer" and token == self.api_key:
            return
        raise _azure_error(401, "401", ACCESS_DENIED)

    def _check_version(self, style: Style, version: str) -> None:
        if style != "v1" and version not in self.api_versions:
            raise _azure_error(400, "BadRequest", API_VERSION_NOT_SUPPORTED)

    def _resolve(self, request: Request, record: Received, style: Style, operation: Operation) -> str:
        """The model behind the requested deployment, after checking it can do ``operation``."""
        name = record.deployment
        if style == "models":
            name = name or request.headers.get("x-ms-model-mesh-model-name")
            record.deployment = name
            if not name:
                raise _azure_error(400, "no_model_name", NO_MODEL_NAME)
            if name not in self.deployments:
                raise _azure_error(404, "unknown_model", f"Unknown model: {name}", details=f"Unknown model: {name}")
        elif not name:
            raise _invalid_request("you must provide a model parameter", "model")
        elif name not in self.deployments:
            raise _azure_error(404, "DeploymentNotFound", DEPLOYMENT_NOT_FOUND)
        if record.body is None:
            raise _invalid_request("The request body must be a JSON object.")
        model = self.deployments[name]
        if is_embedding_model(model) != (operation == "embeddings"):
            message = OPERATION_NOT_SUPPORTED.format(operation=_OPERATION_LABELS[operation], model=model)
            raise _azure_error(400, "OperationNotSupported", message)
        return model

    def _status_error(self, directives: dict[str, Any], operation: Operation, version: str) -> _AzureError:
        """The error a ``#status`` directive asks for."""
        status = directives["status"] or 0
        if not 400 <= status <= 599:
            raise BadRequest(f"#status must be an HTTP error code, got {status}")
        exception = directives.get("exception")
        if exception == CONTENT_FILTER_EXCEPTION:
            innererror = {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": filter_results(PROMPT_FILTER_CATEGORY, PROMPT_FILTER_SEVERITY, output=False),
            }
            error = {
                "message": PROMPT_FILTERED,
                "type": None,
                "param": "prompt",
                "code": CONTENT_FILTER_EXCEPTION,
                "status": status,
                "innererror": innererror,
            }
            return _AzureError(status, error)
        code = exception or str(status)
        if status == 429:
            message = RATE_LIMITED.format(
                operation=_OPERATION_NAMES[operation], version=version, seconds=RETRY_AFTER_SECONDS
            )
            headers = {
                "retry-after": str(RETRY_AFTER_SECONDS),
                "retry-after-ms": str(RETRY_AFTER_SECONDS * 1000),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "0",
            }
            return _AzureError(429, {"code": code, "message": message}, headers)
        return _AzureError(status, {"code": code, "message": STATUS_MESSAGES.get(status, f"mock error {status}")})

    # -- routes ------------------------------------------------------------------------------

    async def _classic_chat(self, request: Request) -> Response:
        return await self._serve(request, "deployment", "chat")

    async def _classic_embeddings(self, request: Request) -> Response:
        return await self._serve(request, "deployment", "embeddings")

    async def _v1_chat(self, request: Request) -> Response:
        return await self._serve(request, "v1", "chat")

    async def _v1_embeddings(self, request: Request) -> Response:
        return await self._serve(request, "v1", "embeddings")

    async def _foundry_chat(self, request: Request) -> Response:
        return await self._serve(request, "models", "chat")

    async def _foundry_embeddings(self, request: Request) -> Response:
        return await self._serve(request, "models", "embeddings")

    async def _unknown(self, request: Request) -> Response:
        await self._record(request, None)
        return self._error_response(_azure_error(404, "404", RESOURCE_NOT_FOUND))

    def _model_entry(self, name: str) -> dict[str, Any]:
        embeds = is_embedding_model(self.deployments[name])
        return {
            "id": name,
            "object": "model",
            "created": MODELS_CREATED,
            "owned_by": "system",
            "model": self.deployments[name],
            "status": "succeeded",
            "lifecycle_status": "generally-available",
            "capabilities": {"chat_completion": not embeds, "completion": False, "embeddings": embeds},
        }

    async def _v1_models(self, request: Request) -> Response:
        await self._record(request, "v1")
        try:
            self._authorise(request)
        except _AzureError as exc:
            return self._error_response(exc)
        data = [self._model_entry(name) for name in self.deployments]
        return _json({"object": "list", "data": data}, headers=self._headers())

    async def _v1_model(self, request: Request) -> Response:
        record = await self._record(request, "v1")
        name = request.path_params["model"]
        record.deployment = name
        try:
            self._authorise(request)
            if name not in self.deployments:
                raise _azure_error(404, "DeploymentNotFound", DEPLOYMENT_NOT_FOUND)
        except _AzureError as exc:
            return self._error_response(exc)
        record.completed = True
        return _json(self._model_entry(name), headers=self._headers())

    async def _serve(self, request: Request, style: Style, operation: Operation) -> Response:
        record = await self._record(request, style)
        try:
            version = self._api_version(request, style)
            self._authorise(request)
            self._check_version(style, version)
            model = self._resolve(request, record, style, operation)
            if operation == "chat":
                return await self._answer_chat(request, record, model, version)
            return await self._answer_embeddings(request, record, model, version)
        except _AzureError as exc:
            return self._error_response(exc)
        except BadRequest as exc:
            return self._error_response(_invalid_request(str(exc)))

    # -- chat --------------------------------------------------------------------------------

    async def _answer_chat(self, request: Request, record: Received, model: str, version: str) -> Response:
        body = record.body or {}
        decided = plan(conversation_of(body), tool_call_id=TOOL_CALL_ID, echo=msgspec.json.encode(body).decode())
        directives = decided.directives
        if "status" in directives:
            raise self._status_error(directives, "chat", version)
        answer = _Answer.of(decided)
        record.usage = answer.usage
        reply = _ChatReply(model)
        if record.stream:
            events = self._chat_events(reply, record, directives, answer, decided.delay)
            return _EventStream(events, record, self._headers())
        return await self._chat_body(request, reply, record, directives, answer, decided.delay)

    async def _chat_body(
        self,
        request: Request,
        reply: _ChatReply,
        record: Received,
        directives: dict[str, Any],
        answer: _Answer,
        delay: float,
    ) -> Response:
        wait = math.inf if "hang" in directives else delay
        if wait and await self._client_left_during(request, wait):
            record.disconnected = True
            # Nobody is left to read this; uvicorn drops it. 499 is nginx's "client closed request".
            return Response(status_code=499)
        if "hang" in directives:
            return self._error_response(_azure_error(503, "503", STATUS_MESSAGES[503]))
        message: dict[str, Any] = {
            "annotations": [],
            "content": "".join(answer.pieces),
            "refusal": None,
            "role": "assistant",
        }
        if answer.tool_calls:
            message["content"] = None
            message["tool_calls"] = [_tool_call(call) for call in answer.tool_calls]
        out = reply.envelope("chat.completion")
        out["choices"] = [
            {
                "content_filter_results": answer.choice_filter(),
                "finish_reason": answer.finish,
                "index": 0,
                "logprobs": None,
                "message": message,
            }
        ]
        out["prompt_filter_results"] = prompt_filter_results()
        if "no_usage" not in directives:
            out["usage"] = answer.usage
        record.completed = True
        return _json(out, headers=self._headers())

    async def _chat_events(
        self,
        reply: _ChatReply,
        record: Received,
        directives: dict[str, Any],
        answer: _Answer,
        delay: float,
    ) -> AsyncIterator[bytes]:
        body = record.body or {}
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        def chunk(delta: dict[str, Any], filters: dict[str, Any], finish_reason: str | None = None) -> bytes:
            out = reply.envelope("chat.completion.chunk")
            out["choices"] = [
                {
                    "content_filter_results": filters,
                    "delta": delta,
                    "finish_reason": finish_reason,
                    "index": 0,
                    "logprobs": None,
                }
            ]
            if include_usage:
                out["usage"] = None
            return _sse(out)

        deltas: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for call_index, call in enumerate(answer.tool_calls):
            deltas.append(({"tool_calls": [{"index": call_index, **_tool_call(call, arguments="")}]}, {}))
            deltas += [
                ({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]}, {})
                for fragment in call.fragments()
            ]
        last = len(answer.pieces) - 1
        for index, piece in enumerate(answer.pieces):
            annotated = index % FILTER_ANNOTATION_EVERY == FILTER_ANNOTATION_EVERY - 1 or index == last
            deltas.append(({"content": piece}, filter_results() if annotated else {}))
        if "hang" in directives:
            deltas = deltas[:1]
        elif "midstream_error" in directives:
            deltas = deltas[:MIDSTREAM_ERROR_AFTER]

        await anyio.sleep(delay)
        yield _sse(
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": prompt_filter_results(),
            }
        )
        yield chunk({"content": "", "refusal": None, "role": "assistant"}, {})
        for delta, filters in deltas:
            await anyio.sleep(delay)
            yield chunk(delta, filters)
            record.chunks_sent += 1

        if "hang" in directives:
            await self._hang()
            return
        if "midstream_error" in directives:
            code = directives.get("exception") or MIDSTREAM_ERROR_CODE
            error = {"code": code, "message": MIDSTREAM_ERROR_MESSAGE, "param": None, "type": MIDSTREAM_ERROR_CODE}
            yield _sse({"error": error})
            record.completed = True
            return

        finish_filters = answer.choice_filter() if answer.filtered else {}
        yield chunk({}, finish_filters, answer.finish)
        if include_usage and "no_usage" not in directives:
            out = reply.envelope("chat.completion.chunk")
            out["choices"] = []
            out["usage"] = answer.usage
            yield _sse(out)
        yield _sse("[DONE]")
        record.completed = True

    async def _hang(self) -> None:
        """Sleep until stop() is called (or the caller is cancelled by a hang-up)."""
        while not self._stopping.is_set():
            await anyio.sleep(STOP_POLL)

    async def _client_left_during(self, request: Request, seconds: float) -> bool:
        """Wait ``seconds`` (``math.inf``: until stop()); True as soon as the client hangs up instead."""
        with anyio.move_on_after(seconds):
            while not self._stopping.is_set():
                with anyio.move_on_after(STOP_POLL):
                    # The body is already read, so the next ASGI message can only be the disconnect.
                    if (await request.receive())["type"] == "http.disconnect":
                        return True
        return False

    # -- embeddings --------------------------------------------------------------------------

    async def _answer_embeddings(self, request: Request, record: Received, model: str, version: str) -> Response:
        body = record.body or {}
        inputs = _embedding_inputs(body.get("input"))
        native = EMBEDDING_DIMENSIONS.get(model, DEFAULT_EMBEDDING_DIMENSIONS)
        dimensions = body.get("dimensions")
        if dimensions is None:
            dimensions = native
        elif not model.startswith(SHORTENABLE_EMBEDDING_PREFIX):
            raise _invalid_request("This model does not support specifying dimensions.", "dimensions")
        elif not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= native:
            raise _invalid_request(f"dimensions must be an integer between 1 and {native}", "dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _invalid_request("encoding_format must be 'float' or 'base64'", "encoding_format")
        directives, _ = parse_directives(" ".join(i for i in inputs if isinstance(i, str)))
        if "status" in directives:
            raise self._status_error(directives, "embeddings", version)
        delay = (directives.get("delay") or 0) / 1000
        if delay and await self._client_left_during(request, delay):
            record.disconnected = True
            return Response(status_code=499)

        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, dimensions)
            embedding: list[float] | str = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        record.usage = usage
        record.completed = True
        return _json({"object": "list", "data": data, "model": model, "usage": usage}, headers=self._headers())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the mock Azure OpenAI / Foundry resource.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    args = parser.parse_args(argv)
    MockAzure(args.api_key, host=args.host, port=args.port).run()


if __name__ == "__main__":
    main()
