"""An in-process fake of an OpenAI-compatible upstream (OpenAI itself, or OpenRouter).

What to answer is decided by :func:`tests.mocks.script.plan`, shared by every provider's mock, so
the same prompt gets the same answer whichever provider serves it; this module only turns an
OpenAI request into a :class:`~tests.mocks.script.Conversation` and writes the resulting plan as
OpenAI (or OpenRouter) bodies and chunks. Tests steer each answer with directives in the last user
message, e.g. ``"hi #chunks=5 #delay=20"`` (see ``script.py``). Every request is recorded as a
``Received`` so a test can check what the gateway forwarded, how much of a stream went out, and
whether the gateway hung up.

Broken upstreams: ``#fault=NAME`` (see :data:`FAULTS`) makes the answer fail the way real ones do,
streamed or not, so the gateway's handling of each is tested against the wire.

Standalone: ``python -m tests.mocks.openai --port 18001 [--flavour openrouter] [--api-key K]``.
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
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
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

Flavour = Literal["openai", "openrouter"]

DEFAULT_API_KEY = "sk-mock-upstream"
START_TIMEOUT = 10.0
# Backstop for requests still open at stop(), e.g. in a long #delay: uvicorn cancels them after this.
GRACEFUL_SHUTDOWN = 0.5
# How often a #hang checks whether stop() was called; uvicorn would otherwise cancel it noisily.
STOP_POLL = 0.05
ROUTE_PREFIXES = ("", "/v1", "/api/v1")

EMBEDDING_DIMENSIONS = 8
OPENROUTER_PROVIDER = "MockAI"
OPENROUTER_KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
# Invented price so `cost` is deterministic: USD per token, prompt and completion alike.
OPENROUTER_PRICE_PER_TOKEN = 0.000001

# What ``#fault=NAME`` does. A stream's faults come after its planned deltas, so ``#chunks=N`` sets
# how much of the answer goes out before it breaks (the role chunk always does).
FAULTS = {
    # Nothing at all, not even the response head, until the client hangs up or the mock stops.
    "hang_head": "no response head",
    # Stream: the body ends cleanly but without a finish_reason or [DONE]. Not streamed: half the JSON.
    "truncate": "the body ends early",
    # Stream: a `data:` line that is not JSON. Not streamed: a 200 body that is not JSON.
    "malformed": "a body that is not JSON",
    # The connection is dropped mid-body (no last chunk of the chunked encoding, or short of Content-Length).
    "close": "the connection is dropped",
    # The whole answer, correct, one byte per write.
    "bytewise": "one byte per write",
    # A 200 with a proxy's HTML error page instead of the answer.
    "html": "a 200 HTML page",
}
HTML_ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
MALFORMED_EVENT = b'data: {"choices": [{"delta": {"content": "cut\n\n'
# A dropped connection comes this long after the last bytes, so the client reads them before it sees the drop.
CUT_PAUSE = 0.1

_MODELS: dict[Flavour, list[str]] = {
    "openai": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    "openrouter": ["openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet", "openai/text-embedding-3-small"],
}


class Received(msgspec.Struct):
    """One request as the mock saw it; the mock keeps updating it while it answers."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    stream: bool = False
    # Content (or tool-call) chunks written before the end or the hang-up.
    chunks_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    # What the mock reported, or would have reported had #no_usage / #hang / a hang-up not stopped it.
    usage: dict[str, Any] | None = None


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


class _CutShort:
    """Sends a 200 head and ``body``'s pieces, then drops the connection instead of ending the body.

    Returning without the last body message makes uvicorn close the socket: a chunked body loses its
    terminating chunk, a sized one falls short of its ``Content-Length``.
    """

    def __init__(self, body: AsyncIterator[bytes], media_type: str, declared_length: int | None = None) -> None:
        self._body = body
        self._headers = [(b"content-type", media_type.encode())]
        if declared_length is not None:
            self._headers.append((b"content-length", str(declared_length).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        async for piece in self._body:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await anyio.sleep(CUT_PAUSE)


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _bytewise(parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``parts`` one byte at a time."""
    try:
        async for part in parts:
            for index in range(len(part)):
                yield part[index : index + 1]
    finally:
        aclose = getattr(parts, "aclose", None)
        if aclose is not None:
            await aclose()


class _ChatReply:
    """Everything that stays the same across the chunks (or the body) of one chat answer."""

    def __init__(self, flavour: Flavour, model: str) -> None:
        self.flavour = flavour
        self.model = model
        self.created = int(time.time())
        if flavour == "openrouter":
            self.id = f"gen-{self.created}-{uuid.uuid4().hex[:20]}"
        else:
            self.id = f"chatcmpl-mock{uuid.uuid4().hex[:24]}"

    def envelope(self, object_: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": object_, "created": self.created, "model": self.model}
        if self.flavour == "openrouter":
            out["provider"] = OPENROUTER_PROVIDER
        return out

    def choice(self, finish_reason: str | None, **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"index": 0, **fields, "finish_reason": finish_reason}
        if self.flavour == "openrouter":
            out["native_finish_reason"] = finish_reason
        return out

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        if self.flavour != "openrouter":
            return usage
        details = {**usage["prompt_tokens_details"], "cache_write_tokens": 0}
        return {
            **usage,
            "prompt_tokens_details": details,
            "cost": round(usage["total_tokens"] * OPENROUTER_PRICE_PER_TOKEN, 10),
            "cost_details": {"upstream_inference_cost": None},
        }

    def headers(self) -> dict[str, str]:
        return {"X-Generation-Id": self.id} if self.flavour == "openrouter" else {}


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else msgspec.json.encode(payload)
    return b"data: " + data + b"\n\n"


class MockUpstream:
    """A fake OpenAI-compatible upstream served by uvicorn on a background thread.

    api_key: the only key accepted as ``Authorization: Bearer <key>``.
    flavour: ``"openai"`` or ``"openrouter"``; decides ids, error shapes, keep-alives and usage extras.
    host, port: where to listen; port 0 lets the OS choose a free one.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        flavour: Flavour = "openai",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if flavour not in _MODELS:
            raise ValueError(f"unknown flavour {flavour!r}")
        self.api_key = api_key
        self.flavour: Flavour = flavour
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._bound_port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        routes = []
        for prefix in ROUTE_PREFIXES:
            routes += [
                Route(prefix + "/chat/completions", self._chat, methods=["POST"]),
                Route(prefix + "/embeddings", self._embeddings, methods=["POST"]),
                Route(prefix + "/models", self._models, methods=["GET"]),
            ]
        self.app = Starlette(routes=routes)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("mock upstream is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, ready for ``openai.OpenAI(base_url=...)``."""
        return f"http://{self._host}:{self.port}/v1"

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

    def start(self) -> MockUpstream:
        """Serve on a background thread; returns once the port accepts connections."""
        server = self._bind()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="mock-upstream", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mock upstream failed to start")
            time.sleep(0.005)
        return self

    def run(self) -> None:
        """Serve in the calling thread until interrupted (the standalone mode)."""
        server = self._bind()
        print(f"mock upstream ({self.flavour}) on {self.url}", flush=True)
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

    def __enter__(self) -> MockUpstream:
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

    async def _record(self, request: Request) -> Received:
        raw = await request.body()
        body: dict[str, Any] | None = None
        if raw:
            try:
                decoded = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                decoded = None
            body = decoded if isinstance(decoded, dict) else None
        record = Received(
            method=request.method,
            path=request.url.path,
            headers=dict(request.headers),
            body=body,
            stream=bool(body and body.get("stream") is True),
        )
        with self._lock:
            self.received.append(record)
        return record

    # -- errors ------------------------------------------------------------------------------

    def _error(self, status: int, message: str, *, metadata: dict[str, Any] | None = None) -> JSONResponse:
        if self.flavour == "openrouter":
            error: dict[str, Any] = {"code": status, "message": message}
            if metadata is not None:
                error["metadata"] = metadata
        else:
            code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
            kind = "server_error" if status >= 500 else "invalid_request_error"
            error = {"message": message, "type": kind, "param": None, "code": code}
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    def _status_directive(self, status: int) -> JSONResponse:
        if not 400 <= status <= 599:
            raise BadRequest(f"#status must be an HTTP error code, got {status}")
        message = f"mock error {status}"
        if status == 401:
            # The key is echoed unmasked on purpose: gateway tests check that it gets redacted.
            message += f": Incorrect API key provided: {self.api_key}."
        return self._error(
            status, message, metadata={"provider_name": OPENROUTER_PROVIDER, "raw": "upstream said no"}
        )

    def _unauthorised(self, request: Request) -> JSONResponse | None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented == self.api_key:
            return None
        if not presented:
            return self._error(401, "You didn't provide an API key (Authorization: Bearer <key>).")
        return self._error(401, f"Incorrect API key provided: {presented}.")

    # -- routes ------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        if denied := self._unauthorised(request):
            return denied
        if self.flavour == "openrouter":
            # OpenRouter quotes prices as decimal strings, USD per token.
            price = f"{OPENROUTER_PRICE_PER_TOKEN:.7f}"
            data = [
                {
                    "id": model,
                    "name": f"Mock {model}",
                    "context_length": 128000,
                    "pricing": {"prompt": price, "completion": price},
                }
                for model in _MODELS["openrouter"]
            ]
            return JSONResponse({"data": data})
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "mock"} for m in _MODELS["openai"]]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        record = await self._record(request)
        if denied := self._unauthorised(request):
            return denied
        try:
            return await self._answer_chat(request, record)
        except BadRequest as exc:
            return self._error(400, str(exc))

    async def _answer_chat(self, request: Request, record: Received) -> Response:
        body = record.body
        if body is None or not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            raise BadRequest("body must be a JSON object with a string 'model' and a list 'messages'")
        conversation = _conversation(body)
        # Checked before planning, so an error status wins over anything else the prompt asks for.
        directives, _ = parse_directives(conversation.last_user_text)
        if "status" in directives:
            return self._status_directive(directives["status"] or 0)
        fault = directives.get("fault")
        if fault is not None and fault not in FAULTS:
            raise BadRequest(f"#fault must be one of {', '.join(FAULTS)}, got {fault!r}")
        if fault == "hang_head":
            if await self._client_left_during(request, math.inf):
                record.disconnected = True
                return Response(status_code=499)
            return self._error(503, "mock upstream is shutting down")
        if fault == "html":
            # After `#delay`, like an answer: a proxy gives up on a slow upstream the same way.
            delay = (directives.get("delay") or 0) / 1000
            if delay and await self._client_left_during(request, delay):
                record.disconnected = True
                return Response(status_code=499)
            record.completed = True
            return HTMLResponse(HTML_ERROR_PAGE)
        echo = msgspec.json.encode(body).decode() if "echo_body" in directives else None
        answer = plan(conversation, echo=echo)
        record.usage = answer.usage()
        reply = _ChatReply(self.flavour, body["model"])
        if record.stream:
            events = self._chat_events(reply, record, answer)
            if fault == "close":
                return _CutShort(events, "text/event-stream")
            if fault == "bytewise":
                events = _bytewise(events)
            return _EventStream(events, record, reply.headers())
        return await self._chat_body(request, reply, record, answer)

    async def _chat_body(self, request: Request, reply: _ChatReply, record: Received, answer: Plan) -> Response:
        directives = answer.directives
        wait = math.inf if "hang" in directives else answer.delay
        if wait and await self._client_left_during(request, wait):
            record.disconnected = True
            # Nobody is left to read this; uvicorn drops it. 499 is nginx's "client closed request".
            return Response(status_code=499)
        if "hang" in directives:
            return self._error(503, "mock upstream is shutting down")
        if "error_in_200" in directives:
            record.completed = True
            return JSONResponse({"error": {"code": 502, "message": "upstream model failed"}})

        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_calls:
            message["content"] = answer.text or None
            message["tool_calls"] = [_tool_call(call) for call in answer.tool_calls]
        out = reply.envelope("chat.completion")
        out["system_fingerprint"] = "fp_mock"
        out["choices"] = [reply.choice(answer.finish, message=message, logprobs=None)]
        if "no_usage" not in directives and record.usage is not None:
            out["usage"] = reply.usage(record.usage)
        fault = directives.get("fault")
        if fault is not None:
            return self._broken_body(fault, msgspec.json.encode(out), record)
        record.completed = True
        return JSONResponse(out, headers=reply.headers())

    def _broken_body(self, fault: str, body: bytes, record: Received) -> Response | _CutShort:
        """The non-streamed answer ``body``, broken as ``fault`` says."""
        if fault == "close":
            return _CutShort(_pieces(body[: len(body) // 2]), "application/json", declared_length=len(body))
        record.completed = True
        if fault == "truncate":
            return Response(body[: len(body) // 2], media_type="application/json")
        if fault == "malformed":
            return Response(b"upstream says: this is not JSON", media_type="application/json")
        return StreamingResponse(_bytewise(_pieces(body)), media_type="application/json")

    async def _chat_events(self, reply: _ChatReply, record: Received, answer: Plan) -> AsyncIterator[bytes]:
        body = record.body or {}
        directives = answer.directives
        openrouter = self.flavour == "openrouter"
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        # OpenRouter always sends usage, whatever stream_options says.
        usage_on = include_usage or openrouter

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            out = reply.envelope("chat.completion.chunk")
            out["choices"] = [reply.choice(finish_reason, delta=delta, logprobs=None)]
            if usage_on:
                out["usage"] = None
            return _sse(out)

        deltas: list[dict[str, Any]] = [{"content": piece} for piece in answer.pieces]
        for index, call in enumerate(answer.tool_calls):
            # As OpenAI streams parallel calls: one after the other, each opened by a delta that
            # names it (arguments empty), then argument fragments that carry only its index.
            deltas.append({"tool_calls": [{"index": index, **_tool_call(call, arguments="")}]})
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
                for fragment in call.fragments()
            ]
        if "hang" in directives:
            deltas = deltas[:1]
        elif "midstream_error" in directives:
            deltas = deltas[:MIDSTREAM_ERROR_AFTER]

        if openrouter:
            yield OPENROUTER_KEEPALIVE
        await anyio.sleep(answer.delay)
        yield chunk({"role": "assistant", "content": ""})
        for index, delta in enumerate(deltas):
            await anyio.sleep(answer.delay)
            if openrouter and index % 2 == 1:
                yield OPENROUTER_KEEPALIVE
            yield chunk(delta)
            record.chunks_sent += 1

        if "hang" in directives:
            await self._hang()
            return
        fault = directives.get("fault")
        if fault in ("truncate", "close"):
            # No finish_reason, no usage, no [DONE]; `close` also drops the connection (_CutShort).
            record.completed = fault == "truncate"
            return
        if fault == "malformed":
            yield MALFORMED_EVENT
            record.completed = True
            return
        if "midstream_error" in directives:
            out = reply.envelope("chat.completion.chunk")
            out["error"] = {"code": "server_error", "message": "Provider disconnected unexpectedly"}
            out["choices"] = [reply.choice("error", delta={"content": ""})]
            yield _sse(out)
            # OpenRouter ends such a stream without [DONE]; so does the mock.
            record.completed = True
            return

        yield chunk({}, answer.finish)
        if usage_on and "no_usage" not in directives and record.usage is not None:
            out = reply.envelope("chat.completion.chunk")
            out["choices"] = []
            out["usage"] = reply.usage(record.usage)
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

    async def _embeddings(self, request: Request) -> Response:
        record = await self._record(request)
        if denied := self._unauthorised(request):
            return denied
        try:
            return await self._answer_embeddings(request, record)
        except BadRequest as exc:
            return self._error(400, str(exc))

    async def _answer_embeddings(self, request: Request, record: Received) -> Response:
        body = record.body
        if body is None or not isinstance(body.get("model"), str):
            raise BadRequest("body must be a JSON object with a string 'model'")
        inputs = _embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise BadRequest("dimensions must be a positive integer")
        # Real embeddings have no directives; these let gateway tests provoke errors and slowness here too.
        directives, _ = parse_directives(" ".join(i for i in inputs if isinstance(i, str)))
        if "status" in directives:
            return self._status_directive(directives["status"] or 0)
        delay = (directives.get("delay") or 0) / 1000
        if delay and await self._client_left_during(request, delay):
            record.disconnected = True
            return Response(status_code=499)

        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item, dimensions)
            embedding: list[float] | str = vector
            if as_base64:
                embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
        usage: dict[str, Any] = {"prompt_tokens": tokens, "total_tokens": tokens}
        if self.flavour == "openrouter":
            usage["cost"] = round(tokens * OPENROUTER_PRICE_PER_TOKEN, 10)
        record.usage = usage
        record.completed = True
        return JSONResponse({"object": "list", "data": data, "model": body["model"], "usage": usage})


def _tool_call(call: ToolCallPlan, arguments: str | None = None) -> dict[str, Any]:
    """A planned tool call in OpenAI's shape; ``arguments`` overrides the planned ones (a stream's head)."""
    function = {"name": call.name, "arguments": call.arguments if arguments is None else arguments}
    return {"id": call.id, "type": "function", "function": function}


def _conversation(body: dict[str, Any]) -> Conversation:
    """An OpenAI chat request in the neutral terms the plan is made from."""
    messages: list[Any] = body["messages"]
    user_texts = [_message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last_user_text = next((text for text in reversed(user_texts) if text), "")
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
    # max_completion_tokens is the current name; max_tokens the deprecated one, still widely sent.
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
        last_user_text=last_user_text,
        tool_results=tool_results,
        tool_names=tool_names,
        max_tokens=max_tokens,
        stop=stops,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the mock OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--flavour", choices=sorted(_MODELS), default="openai")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    args = parser.parse_args(argv)
    MockUpstream(args.api_key, args.flavour, host=args.host, port=args.port).run()


if __name__ == "__main__":
    main()
