"""The OpenAI Responses API: ``POST /ai/v1/responses``, ``GET`` and ``DELETE /ai/v1/responses/{id}``.

Clients built on the Responses API (the ``openai`` SDK's ``client.responses``, Codex, agent
frameworks) should reach every model the gateway serves, not only OpenAI's. So this surface never
calls a provider itself: it translates the request into an OpenAI chat completions body and goes
through the seam every surface shares (``inference.py``), so providers, routing, fallback, quotas
and metering are the chat surface's own; then it translates the chat answer back, one result into
a Response object, a chunk stream into the Responses event stream. Both directions of the answer
go through one :class:`ResponseBuilder`, so a streamed and a plain response never differ.

Conversation state lives in Redis. With ``store`` (the default) a response is kept for
``STORE_TTL_S`` with the input items that led to it, readable only by the user who made it; a
later request naming it in ``previous_response_id`` continues that conversation, and the earlier
turns are sent to the model (and billed) again, as the Responses API does. A record is written
before the client hears that the response is done, so an immediate follow-up always finds it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.errors import GatewayError, InvalidRequest, NotFound, Unavailable
from shared.usage import tokens_from_usage
from shared.wire import ChatRequest, PositiveInt, check_chat, decode_request

from .auth import Identity
from .gateway import Gateway
from .inference import StreamFailed, admit, chunks, response_headers, single, submit
from .sse import EventStreamResponse

logger = logging.getLogger("reactor.api")

# How long a stored response (and so a conversation built on previous_response_id) stays readable;
# the Responses API promises "at least 30 days".
STORE_TTL_S = 30 * 86_400

RESPONSE_ID_PREFIX = "resp_"
MESSAGE_ID_PREFIX = "msg_"
FUNCTION_CALL_ID_PREFIX = "fc_"

# Chat finish reasons that leave a response incomplete, and the reason the Responses API names.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
# Codes a failed response may carry as they are (the SDK's enum, and what Codex reacts to); any
# other failure is a ``server_error``, with the gateway's message.
FAILURE_CODES = frozenset({"server_error", "rate_limit_exceeded", "context_length_exceeded", "insufficient_quota"})
RATE_LIMITED_STATUS = 429

MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
# Input items with nothing a chat model can use: a reasoning model's own notes (often encrypted).
DROPPED_ITEM_TYPES = frozenset({"reasoning"})
TEXT_PART_TYPES = frozenset({"input_text", "output_text"})

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class ResponsesRequest(msgspec.Struct):
    """What this surface reads of a ``POST /responses`` body; item and tool shapes are checked
    while translating, where the error can name the offending item."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    # Features with no chat form: refused rather than silently ignored.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


# -------------------------------------------------------------------------------------------
# Request: Responses → chat completions


def _check(req: ResponsesRequest) -> None:
    if req.background:
        raise InvalidRequest("Background responses are not supported by this gateway.", param="background")
    if req.conversation is not None:
        raise InvalidRequest("Conversations are not supported by this gateway; use 'previous_response_id'.",
                             param="conversation")
    if req.prompt is not None:
        raise InvalidRequest("Prompt templates are not supported by this gateway; send 'input'.", param="prompt")


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for Responses input items.

    Function calls become the ``tool_calls`` of one assistant message, together with the calls
    and the assistant message right before them; function call outputs become ``tool`` messages
    keyed by ``call_id``; reasoning items are dropped.

    :raises InvalidRequest: for an item with no chat form, naming it.
    """
    messages: list[dict[str, Any]] = []
    assistant: dict[str, Any] | None = None  # the message the next function call joins
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if not isinstance(kind, str):
            raise InvalidRequest(f"{where}: an input item needs a string 'type'.", param=f"{where}.type")
        if kind in DROPPED_ITEM_TYPES:
            continue
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in MESSAGE_ROLES:
                raise InvalidRequest(f"{where}: 'role' must be one of user, assistant, system or developer.",
                                     param=f"{where}.role")
            content = _content(role, item.get("content"), where)
            if role == "assistant":
                assistant = {"role": "assistant", "content": content or None}
                messages.append(assistant)
                continue
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            for field, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
                if not isinstance(value, str):
                    raise InvalidRequest(f"{where}: a function_call item needs a string '{field}'.",
                                         param=f"{where}.{field}")
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                messages.append(assistant)
            assistant.setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
            continue
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}: a function_call_output item needs 'call_id'.", param=f"{where}.call_id")
            output = _tool_output(item.get("output"), where)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "item_reference":
            raise InvalidRequest(f"{where}: item references are not supported; send the item itself, or continue "
                                 "a stored conversation with 'previous_response_id'.", param=where)
        else:
            raise InvalidRequest(f"{where}: input items of type {kind!r} cannot be sent through this gateway.",
                                 param=f"{where}.type")
        assistant = None
    # An assistant turn that said nothing (an empty answer stored earlier) is no message to a chat model.
    return [m for m in messages if m["role"] != "assistant" or m.get("content") or m.get("tool_calls")]


def _content(role: str, content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: 'content' must be a string or a list of parts.", param=f"{where}.content")
    parts = [_part(role, part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    if role != "user" and len(parts) == 1:
        return parts[0]["text"]
    return parts


def _part(role: str, part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequest(f"{where}: a content part must be an object with a string 'type'.", param=f"{where}.type")
    if kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if role != "user":
        raise InvalidRequest(f"{where}: a '{role}' message may hold only text.", param=where)
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}: images must be sent as 'image_url' (a URL or a data URL); "
                                 "file ids cannot be resolved by this gateway.", param=f"{where}.image_url")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str) and part["detail"] in IMAGE_DETAILS:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {key: part[key] for key in ("file_data", "file_id", "filename") if isinstance(part.get(key), str)}
        if "file_data" not in file and "file_id" not in file:
            raise InvalidRequest(f"{where}: files must be sent as 'file_data' or 'file_id'.", param=where)
        return {"type": "file", "file": file}
    raise InvalidRequest(f"{where}: content parts of type {kind!r} cannot be sent through this gateway.",
                         param=f"{where}.type")


def _tool_output(output: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str) or kind not in TEXT_PART_TYPES or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.output[{j}]: a function call output can return only text to a chat "
                                     "model.", param=f"{where}.output[{j}]")
            texts.append({"type": "text", "text": part["text"]})
        return texts[0]["text"] if len(texts) == 1 else texts
    raise InvalidRequest(f"{where}: 'output' must be a string or a list of parts.", param=f"{where}.output")


def chat_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    """A flat Responses function tool as a nested chat tool."""
    if tool.get("type") != "function":
        raise InvalidRequest(f"tools[{i}]: tools of type {tool.get('type')!r} are not available through this "
                             "gateway; only function tools are.", param=f"tools[{i}].type")
    if not isinstance(tool.get("name"), str):
        raise InvalidRequest(f"tools[{i}]: a function tool needs 'name'.", param=f"tools[{i}].name")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice in TOOL_CHOICES:
            return choice
    elif choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": …}.",
                         param="tool_choice")


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` (flat) as chat's ``response_format`` (nested); None for plain text."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("'text.format' of type json_schema needs 'name' and 'schema'.", param="text.format")
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if fmt.get(key) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("'text.format.type' must be text, json_object or json_schema.", param="text.format.type")


def chat_body(req: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions request that serves ``req``; ``items`` is the whole conversation."""
    messages = chat_messages(items)
    if not any(m["role"] != "system" and m["role"] != "developer" for m in messages):
        raise InvalidRequest("'input' must hold at least one message for the model.", param="input")
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = [chat_tool(tool, i) for i, tool in enumerate(req.tools)]
    if req.tool_choice is not None:
        body["tool_choice"] = chat_tool_choice(req.tool_choice)
    optional = {"parallel_tool_calls": req.parallel_tool_calls, "max_completion_tokens": req.max_output_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "user": req.user,
                "response_format": chat_response_format(req.text),
                "reasoning_effort": (req.reasoning or {}).get("effort"),
                "verbosity": (req.text or {}).get("verbosity")}
    body.update({key: value for key, value in optional.items() if value is not None})
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# -------------------------------------------------------------------------------------------
# Answer: chat → Response object and events


def response_skeleton(req: ResponsesRequest, response_id: str, created_at: int, model: str) -> dict[str, Any]:
    """The Response object before any output: everything the request decides, echoed."""
    text = {"format": (req.text or {}).get("format") or {"type": "text"}}
    if (req.text or {}).get("verbosity") is not None:
        text["verbosity"] = req.text["verbosity"]
    tools = [{"type": "function", "name": t.get("name"), "description": t.get("description"),
              "parameters": t.get("parameters"), "strict": t.get("strict")} for t in req.tools or ()]
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": model, "output": [],
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None},
        "store": req.store is not False, "temperature": req.temperature, "text": text,
        "tool_choice": "auto" if req.tool_choice is None else req.tool_choice, "tools": tools,
        "top_p": req.top_p, "truncation": "disabled", "usage": None, "user": req.user,
        "metadata": req.metadata or {},
    }


def response_usage(usage: Any) -> dict[str, Any]:
    """Chat usage as Responses usage (``input_tokens`` includes the cached ones, as in chat)."""
    tokens = tokens_from_usage(usage)
    tin, tout = (tokens.tokens_in, tokens.tokens_out) if tokens else (0, 0)
    return {
        "input_tokens": tin,
        "input_tokens_details": {"cached_tokens": tokens.cached_tokens if tokens else 0,
                                 "cache_write_tokens": tokens.cache_write_tokens if tokens else 0},
        "output_tokens": tout,
        "output_tokens_details": {"reasoning_tokens": tokens.reasoning_tokens if tokens else 0},
        "total_tokens": tin + tout,
    }


def _content_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


PENDING, LIVE, CLOSED = "pending", "live", "closed"


class _Message:
    """An assistant message item: its parts (``output_text`` or ``refusal``) in order, and how far
    the client has been told of them."""

    def __init__(self, item_id: str, index: int) -> None:
        self.id, self.index = item_id, index
        self.parts: list[list[str]] = []  # [kind, text]
        self.open_part = -1               # the part the client is being sent
        self.sent = 0                     # characters of that part sent
        self.state = PENDING
        self.status = "in_progress"

    def add(self, kind: str, text: str) -> None:
        if self.parts and self.parts[-1][0] == kind:
            self.parts[-1][1] += text
        else:
            self.parts.append([kind, text])

    def complete(self) -> bool:
        return True  # a message is over once a later item starts

    def item(self, empty: bool = False) -> dict[str, Any]:
        content = [] if empty else [_content_part(kind, text) for kind, text in self.parts]
        return {"id": self.id, "type": "message", "status": self.status, "role": "assistant", "content": content}


class _Call:
    """A function call item and how much of its arguments the client has been sent."""

    def __init__(self, item_id: str, index: int, call_id: str, name: str) -> None:
        self.id, self.index, self.call_id, self.name = item_id, index, call_id, name
        self.arguments = ""
        self.sent = 0
        self.state = PENDING
        self.status = "in_progress"

    def complete(self) -> bool:
        """Whether the arguments are whole: a JSON text no longer grows once it parses."""
        try:
            json.loads(self.arguments)
        except ValueError:
            return False
        return True

    def item(self, empty: bool = False) -> dict[str, Any]:
        return {"id": self.id, "type": "function_call", "status": self.status, "call_id": self.call_id,
                "name": self.name, "arguments": "" if empty else self.arguments}


class ResponseBuilder:
    """Builds a Response from chat chunks, and the Responses events that tell a client about it.

    Output items never interleave: the item being sent is *live*; what arrives for a later item
    (a second parallel call, text after the calls) is kept until the live one is whole, then sent
    at once and followed live. A message is whole once anything follows it, a call once its
    arguments parse. Deltas are only ever the new characters, and ``*.done`` events carry the
    whole text, so nothing reaches the client twice.

    :param response: :func:`response_skeleton`'s object.
    :param request_id: the job's id, which the item ids are made from.
    :param silent: make no events (a non-streamed response).
    """

    def __init__(self, response: dict[str, Any], request_id: str, silent: bool = False) -> None:
        self.response = response
        self.request_id = request_id
        self.silent = silent
        self.items: list[_Message | _Call] = []
        self.calls: dict[int, _Call] = {}
        self.live = -1
        self.sequence = 0
        self.finish_reason: str | None = None
        self.usage: Any = None
        self._frames: list[bytes] = []

    # -- events -----------------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.silent:
            return
        data = _encode({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        self._frames.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")

    def take(self) -> bytes:
        """The SSE frames made since the last call."""
        out = b"".join(self._frames)
        self._frames.clear()
        return out

    def start(self) -> None:
        self._emit("response.created", response=self.response)
        self._emit("response.in_progress", response=self.response)

    # -- chunks -----------------------------------------------------------------------------

    def feed(self, chunk: dict[str, Any]) -> None:
        """Take one ``chat.completion.chunk``; a usage-only chunk (no choices) only sets the usage."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for kind in ("content", "refusal"):
                text = delta.get(kind)
                if isinstance(text, str) and text:
                    self._text("refusal" if kind == "refusal" else "output_text", text)
            for position, call in enumerate(delta.get("tool_calls") or ()):
                if isinstance(call, dict):
                    self._call(call, position)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        self._advance()

    def _text(self, kind: str, text: str) -> None:
        last = self.items[-1] if self.items else None
        if not isinstance(last, _Message) or last.state == CLOSED:
            last = _Message(f"{MESSAGE_ID_PREFIX}{self.request_id}_{len(self.items)}", len(self.items))
            self.items.append(last)
        last.add(kind, text)

    def _call(self, delta: dict[str, Any], position: int) -> None:
        index = delta.get("index")
        index = index if isinstance(index, int) else position
        function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        call = self.calls.get(index)
        if call is None:
            call_id = delta.get("id") if isinstance(delta.get("id"), str) and delta.get("id") else \
                f"call_{self.request_id}_{index}"
            call = _Call(f"{FUNCTION_CALL_ID_PREFIX}{self.request_id}_{len(self.items)}", len(self.items), call_id,
                         function.get("name") or "")
            self.calls[index] = call
            self.items.append(call)
        elif not call.name and function.get("name"):
            call.name = function["name"]
        if isinstance(function.get("arguments"), str):
            call.arguments += function["arguments"]

    # -- items ------------------------------------------------------------------------------

    def _advance(self) -> None:
        if self.live < 0:
            if not self.items:
                return
            self.live = 0
            self._open(self.items[0])
        if self.live >= len(self.items):
            return
        current = self.items[self.live]
        self._pump(current)
        while self.live + 1 < len(self.items) and current.complete():
            self._close(current, "completed")
            self.live += 1
            current = self.items[self.live]
            self._open(current)
            self._pump(current)

    def _open(self, item: _Message | _Call) -> None:
        item.state = LIVE
        self._emit("response.output_item.added", output_index=item.index, item=item.item(empty=True))

    def _pump(self, item: _Message | _Call) -> None:
        """Send what the client has not seen of the live item."""
        if isinstance(item, _Call):
            if len(item.arguments) > item.sent:
                self._emit("response.function_call_arguments.delta", item_id=item.id, output_index=item.index,
                           delta=item.arguments[item.sent:])
                item.sent = len(item.arguments)
            return
        while True:
            if item.open_part >= 0:
                kind, text = item.parts[item.open_part]
                if len(text) > item.sent:
                    self._emit("response.refusal.delta" if kind == "refusal" else "response.output_text.delta",
                               item_id=item.id, output_index=item.index, content_index=item.open_part,
                               delta=text[item.sent:], **({} if kind == "refusal" else {"logprobs": []}))
                    item.sent = len(text)
            if item.open_part + 1 >= len(item.parts):
                return
            if item.open_part >= 0:
                self._close_part(item)
            item.open_part += 1
            item.sent = 0
            self._emit("response.content_part.added", item_id=item.id, output_index=item.index,
                       content_index=item.open_part, part=_content_part(item.parts[item.open_part][0], ""))

    def _close_part(self, item: _Message) -> None:
        kind, text = item.parts[item.open_part]
        if kind == "refusal":
            self._emit("response.refusal.done", item_id=item.id, output_index=item.index,
                       content_index=item.open_part, refusal=text)
        else:
            self._emit("response.output_text.done", item_id=item.id, output_index=item.index,
                       content_index=item.open_part, text=text, logprobs=[])
        self._emit("response.content_part.done", item_id=item.id, output_index=item.index,
                   content_index=item.open_part, part=_content_part(kind, text))

    def _close(self, item: _Message | _Call, status: str) -> None:
        self._pump(item)
        if isinstance(item, _Message):
            if item.open_part >= 0:
                self._close_part(item)
        else:
            self._emit("response.function_call_arguments.done", item_id=item.id, output_index=item.index,
                       name=item.name, arguments=item.arguments)
        item.state, item.status = CLOSED, status
        self._emit("response.output_item.done", output_index=item.index, item=item.item())

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Close every item and return the final Response (``completed`` or ``incomplete``).

        An answer with no output at all still gets its (empty) message, so ``output_text`` is "".
        """
        if not self.items:
            self._text("output_text", "")
        self._advance()
        reason = INCOMPLETE_REASONS.get(self.finish_reason or "")
        status = "incomplete" if reason else "completed"
        for index in range(self.live, len(self.items)):
            item = self.items[index]
            if item.state == PENDING:
                self._open(item)
            self._close(item, status)
        self.live = len(self.items)
        return {**self.response, "status": status,
                "incomplete_details": {"reason": reason} if reason else None,
                "output": [item.item() for item in self.items], "usage": response_usage(self.usage)}

    def terminal(self, response: dict[str, Any]) -> None:
        """The event that ends a stream that ran to its end: ``response.completed`` or ``.incomplete``."""
        self._emit("response.incomplete" if response["status"] == "incomplete" else "response.completed",
                   response=response)

    def fail(self, error: GatewayError) -> dict[str, Any]:
        """End the stream with ``response.failed``; the output is what the client was sent."""
        code = error.code if error.code in FAILURE_CODES else (
            "rate_limit_exceeded" if error.status == RATE_LIMITED_STATUS else "server_error")
        output = []
        for item in self.items:
            if item.state == PENDING:
                continue
            if item.state == LIVE:
                item.status = "incomplete"
            output.append(item.item())
        response = {**self.response, "status": "failed", "error": {"code": code, "message": error.message},
                    "output": output, "usage": response_usage(self.usage) if self.usage else None}
        self._emit("response.failed", response=response)
        return response


def from_completion(completion: dict[str, Any], response: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The Response for a ``chat.completion`` body."""
    builder = ResponseBuilder(response, request_id, silent=True)
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    calls = [{"index": i, **call} for i, call in enumerate(message.get("tool_calls") or ()) if isinstance(call, dict)]
    delta = {"content": message.get("content"), "refusal": message.get("refusal"), "tool_calls": calls}
    builder.feed({"choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}],
                  "usage": completion.get("usage")})
    return builder.finish()


# -------------------------------------------------------------------------------------------
# Storage


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


async def _load(gateway: Gateway, identity: Identity, response_id: str) -> dict[str, Any] | None:
    """The stored record of ``response_id``, or None if there is none for this user (another
    user's response is reported exactly like one that does not exist)."""
    try:
        raw = await gateway.redis.get(gateway.keys.stored_response(response_id))
    except (RedisError, OSError):
        raise Unavailable("Redis is unreachable.") from None
    if raw is None:
        return None
    record = _decode(raw)
    if record.get("user_id") != identity.user_id:
        return None
    return record


async def _save(gateway: Gateway, identity: Identity, items: list[dict[str, Any]], response: dict[str, Any]) -> None:
    """Keep a response for ``STORE_TTL_S``. The answer matters more than its record: a failed
    write is logged, and the client still gets the answer."""
    record = {"user_id": identity.user_id, "input": items, "response": response}
    try:
        await gateway.redis.set(gateway.keys.stored_response(response["id"]), _encode(record), ex=STORE_TTL_S)
    except (RedisError, OSError):
        logger.warning("response %s was not stored: Redis is unreachable", response["id"])


async def _history(gateway: Gateway, identity: Identity, previous_id: str) -> list[dict[str, Any]]:
    """The conversation ``previous_id`` ended: its input items, then its output items."""
    record = await _load(gateway, identity, previous_id)
    if record is None:
        raise InvalidRequest(f"Previous response with id '{previous_id}' not found.", param="previous_response_id",
                             code="previous_response_not_found")
    return [*record["input"], *record["response"]["output"]]


# -------------------------------------------------------------------------------------------
# Routes


async def create_response(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    identity = await gateway.authenticate(request)
    body = await gateway.read_body(request)
    created_at = int(time.time())
    req, _ = decode_request(body, ResponsesRequest)
    _check(req)
    history = await _history(gateway, identity, req.previous_response_id) if req.previous_response_id else []
    items = [*history, *input_items(req.input)]
    chat = _encode(chat_body(req, items))
    _, job = await admit(gateway, identity, request.headers, chat, ChatRequest, check_chat, "chat",
                         surface="responses")
    job.stream = job.include_usage = bool(req.stream)
    replies = await submit(gateway, job)
    headers = response_headers(gateway, job)
    response_id = RESPONSE_ID_PREFIX + job.request_id
    store = req.store is not False
    if not req.stream:
        completion = _decode(await single(gateway, replies, request.receive))
        skeleton = response_skeleton(req, response_id, created_at, completion.get("model") or req.model)
        response = from_completion(completion, skeleton, job.request_id)
        if store:
            await _save(gateway, identity, items, response)
        return Response(_encode(response), media_type="application/json", headers=headers)

    stream = chunks(gateway, job, replies)
    try:
        # Waiting for the first chunk lets a failure before the answer starts (a rate limit, no
        # model could serve) be an HTTP error the SDK raises, as on the chat surface.
        first: dict[str, Any] | None = await anext(stream)
    except StopAsyncIteration:
        first = None
    except StreamFailed as exc:
        raise exc.error from None
    except BaseException:
        await stream.aclose()
        raise
    model = (first or {}).get("model") or req.model
    builder = ResponseBuilder(response_skeleton(req, response_id, created_at, model), job.request_id)
    saver = (lambda response: _save(gateway, identity, items, response)) if store else None
    return EventStreamResponse(_Frames(_events(builder, stream, first, saver), stream), headers=headers)


class _Frames:
    """The event frames; closing them always closes the chunk stream (which stops the worker),
    even when the client left before the first frame was asked for."""

    def __init__(self, frames: AsyncIterator[bytes], stream: AsyncIterator[dict[str, Any]]) -> None:
        self.frames, self.stream = frames, stream

    def __aiter__(self) -> "_Frames":
        return self

    async def __anext__(self) -> bytes:
        return await self.frames.__anext__()

    async def aclose(self) -> None:
        try:
            await self.frames.aclose()
        finally:
            await self.stream.aclose()


async def _events(builder: ResponseBuilder, stream: AsyncIterator[dict[str, Any]], first: dict[str, Any] | None,
                  saver: Callable[[dict[str, Any]], Awaitable[None]] | None) -> AsyncIterator[bytes]:
    try:
        builder.start()
        if first is not None:
            builder.feed(first)
        yield builder.take()
        try:
            async for chunk in stream:
                builder.feed(chunk)
                frames = builder.take()
                if frames:
                    yield frames
        except StreamFailed as exc:
            builder.fail(exc.error)
            yield builder.take()
            return
        response = builder.finish()
        if saver is not None:
            await saver(response)
        builder.terminal(response)
        yield builder.take()
    finally:
        # Leaving early (the client hung up) closes the chunk stream, which stops the worker.
        await stream.aclose()


async def get_response(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    identity = await gateway.authenticate(request)
    response_id = request.path_params["response_id"]
    if request.query_params.get("stream", "").lower() in ("true", "1"):
        raise InvalidRequest("A stored response cannot be replayed as a stream; retrieve it without 'stream'.",
                             param="stream")
    record = await _load(gateway, identity, response_id)
    if record is None:
        raise _not_found(response_id)
    return Response(_encode(record["response"]), media_type="application/json")


async def delete_response(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    identity = await gateway.authenticate(request)
    response_id = request.path_params["response_id"]
    if await _load(gateway, identity, response_id) is None:
        raise _not_found(response_id)
    try:
        await gateway.redis.delete(gateway.keys.stored_response(response_id))
    except (RedisError, OSError):
        raise Unavailable("Redis is unreachable.") from None
    return Response(_encode({"id": response_id, "object": "response.deleted", "deleted": True}),
                    media_type="application/json")


ROUTES = [
    Route("/ai/v1/responses", create_response, methods=["POST"]),
    Route("/ai/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/ai/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]
