"""The Anthropic surface: ``POST /ai/v1/messages`` and ``POST /ai/v1/messages/count_tokens``.

Claude clients (the ``anthropic`` SDKs, Claude Code with ``ANTHROPIC_BASE_URL=$REACTOR_URL/ai``)
speak the Messages API. Rather than a second pipeline, a Messages request is translated into an
OpenAI chat request and goes through the same seam as chat completions (``api/inference.py``):
providers, routing, fallback, quotas and metering are shared, and the usage records say
``surface == "messages"``. The answer (one ``chat.completion``, or its chunks) is translated back.

Request (Messages → chat)
    * Credentials: ``Authorization: Bearer <JWT>`` or ``x-api-key: <JWT>`` (Claude Code sends one
      or the other); ``anthropic-version``, ``anthropic-beta`` and ``?beta=true`` are accepted
      and ignored.
    * ``model``: the registry name as sent; failing that, a normalised form (see
      :func:`model_candidates`). Unknown → 404 ``not_found_error``.
    * ``max_tokens`` is required (as Anthropic requires it) and becomes chat ``max_tokens``.
    * ``system`` (a string or text blocks) → one leading system message; ``cache_control`` is
      ignored everywhere.
    * ``text`` and ``image`` blocks (``base64`` → a ``data:`` URL, ``url`` → the URL) → content
      parts; ``tool_use`` → assistant ``tool_calls`` (arguments = the input as JSON);
      ``tool_result`` → one ``tool`` message each, in order, followed by a user message with the
      rest of that turn (images inside results go there, as tool messages hold only text);
      ``is_error`` results are prefixed with :data:`TOOL_ERROR_PREFIX`. ``thinking`` blocks are
      dropped. Block types with no chat form (server tools, file sources) → 400.
    * ``stop_sequences`` → ``stop``; chat takes at most :data:`MAX_STOP_SEQUENCES`, so more is a
      400 rather than a silent cut. ``temperature``, ``top_p`` as they are; ``top_k`` is dropped
      (chat has no such knob). ``tools`` → function tools; server tools (a ``type`` other than
      ``custom``) → 400. ``tool_choice`` auto/any/tool/none → auto/required/named/none, and
      ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``. ``metadata.user_id`` →
      ``user`` (hashed when longer than :data:`MAX_USER_CHARS`). ``output_config.format`` (a JSON
      schema) → ``response_format``.
    * ``thinking`` is dropped: upstreams differ in whether and how they reason, and sending
      ``reasoning_effort`` to a model without reasoning is refused by OpenAI-compatible
      upstreams. No ``thinking`` block is ever returned. Other fields (``context_management``,
      ``service_tier``, ``container``, …) are dropped too.

Response (chat → Messages)
    * ``content``: a text block when there is text, then one ``tool_use`` block per call (the
      upstream's call id kept as the block id, so ``tool_result.tool_use_id`` maps back).
    * ``stop_reason``: ``stop`` → ``end_turn``, ``length`` → ``max_tokens``, ``tool_calls`` (or
      any answer with calls) → ``tool_use``, ``content_filter`` → ``refusal``. Chat does not say
      whether a stop string matched, so ``stop_sequence`` is never reported (always null).
    * ``usage``: ``input_tokens`` excludes cache reads and writes, as Anthropic counts them.
    * ``model``: the name the client sent.
    * Streams: ``message_start`` (with the :func:`estimate_input_tokens` estimate, replaced by
      the real numbers in ``message_delta``), blocks started once each with indexes 0, 1, … in
      order, never interleaved (a parallel call that arrives while another call's arguments are
      incomplete is held until they are), ``message_delta``, ``message_stop``. ``ping`` is sent
      after every :data:`PING_INTERVAL_S` without an event, as Claude Code reports a stall after
      about 15 s. A failure before anything was produced, seen within that interval, is an HTTP
      error; later it is an ``error`` event, the stream's last.

Errors are rendered in Anthropic's shape ``{"type":"error","error":{"type","message"}}`` with
the gateway's status (see :func:`error_type`).

``count_tokens`` answers :func:`estimate_input_tokens` without asking any upstream: an estimate
meant never to undercount (Claude Code compacts its context by it, and an undercount makes it
compact too late).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.errors import GatewayError, InternalError, InvalidRequest, ModelNotFound, Unauthorized
from shared.registry import Registry
from shared.wire import ChatRequest, check_chat, decode_json

from .auth import Identity, refuse_query_token
from .gateway import Gateway
from .inference import StreamFailed, admit, chunks, response_headers, single, submit
from .sse import EventStreamResponse

logger = logging.getLogger("reactor.api")

# Seconds of upstream silence before a `ping` event; also how long a stream waits for its first
# chunk before sending its head (a failure seen by then is still a proper HTTP status).
PING_INTERVAL_S = float(os.environ.get("REACTOR_MESSAGES_PING_S", "10"))
MAX_STOP_SEQUENCES = 4
# OpenAI refuses a longer `user`; Claude Code's `metadata.user_id` is longer, so such ids are sent as
# their SHA-256 (64 hex digits), which still tells the upstream's abuse checks one user from another.
MAX_USER_CHARS = 64
TOOL_ERROR_PREFIX = "Error: "

# count_tokens: one token per ASCII_CHARS_PER_TOKEN characters, one per NON_ASCII_BYTES_PER_TOKEN
# further UTF-8 bytes of other text (CJK, emoji tokenize densely), plus fixed overheads. Tokenizers
# do better on prose and code, so the estimate errs high.
ASCII_CHARS_PER_TOKEN = 3
NON_ASCII_BYTES_PER_TOKEN = 2
REQUEST_OVERHEAD_TOKENS = 8
MESSAGE_OVERHEAD_TOKENS = 6
BLOCK_OVERHEAD_TOKENS = 4
# Anthropic adds a tool-use system prompt of about 350 tokens whenever tools are offered.
TOOLS_OVERHEAD_TOKENS = 400
TOOL_OVERHEAD_TOKENS = 12
# An image costs at most about 1,600 tokens once Anthropic has scaled it to its size limits.
IMAGE_TOKENS = 1600

_DATE_SUFFIX = re.compile(r"-(\d{8}|latest)$")
_FAMILY_FIRST = re.compile(r"^claude-(opus|sonnet|haiku)-(\d+(?:-\d+)?)$")
_VERSION_FIRST = re.compile(r"^claude-(\d+(?:-\d+)?)-(opus|sonnet|haiku)$")

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                 "content_filter": "refusal"}

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


# -------------------------------------------------------------------------------------------
# Errors


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status, so the SDKs raise the matching class."""
    if status in (503, 529):
        return "overloaded_error"
    known = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
             403: "permission_error", 404: "not_found_error", 413: "request_too_large",
             429: "rate_limit_error", 504: "timeout_error"}
    if status in known:
        return known[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(exc: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}


def render_error(exc: GatewayError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return Response(_encoder.encode(error_body(exc)), status_code=exc.status, media_type="application/json",
                    headers=headers)


# -------------------------------------------------------------------------------------------
# Authentication and model names


async def authenticate(gateway: Gateway, request: Request) -> Identity:
    """The caller, from ``Authorization: Bearer <JWT>`` or else ``x-api-key: <JWT>``."""
    refuse_query_token(request.query_params)
    if request.headers.get("authorization"):
        return await gateway.authenticate(request)
    key = (request.headers.get("x-api-key") or "").strip()
    if not key:
        raise Unauthorized("Missing credentials: send 'x-api-key: <JWT>' or 'Authorization: Bearer <JWT>'.")
    return await gateway.verifier.verify(key)


def model_candidates(name: str) -> list[str]:
    """The names tried for a Claude model id, in order.

    The name as sent; then without a ``-YYYYMMDD`` or ``-latest`` suffix and with dots as dashes
    (``claude-3-5-sonnet-20241022`` → ``claude-3-5-sonnet``, ``claude-sonnet-4.5`` →
    ``claude-sonnet-4-5``); then that name in the other Claude naming order
    (``claude-sonnet-4-5`` ↔ ``claude-4-5-sonnet``). A different version is never substituted:
    an operator maps such names with aliases in the registry overlay.
    """
    base = _DATE_SUFFIX.sub("", name).replace(".", "-")
    candidates = [name, base]
    if match := _FAMILY_FIRST.match(base):
        candidates.append(f"claude-{match.group(2)}-{match.group(1)}")
    elif match := _VERSION_FIRST.match(base):
        candidates.append(f"claude-{match.group(2)}-{match.group(1)}")
    return list(dict.fromkeys(candidates))


def resolve_model(registry: Registry, name: str) -> str:
    """The registry name (model or alias) that serves ``name``.

    :raises ModelNotFound: no candidate of :func:`model_candidates` is in the registry.
    """
    for candidate in model_candidates(name):
        if registry.lookup(candidate)[1]:
            return candidate
    raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")


# -------------------------------------------------------------------------------------------
# Request: Messages → chat


def _decode_body(body: bytes) -> dict[str, Any]:
    # The front door's one JSON reader: refuses bad UTF-8, deep nesting and oversized integers too.
    return decode_json(body)


def _model_name(raw: dict[str, Any]) -> str:
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a non-empty string).")
    return model


def _messages_list(raw: dict[str, Any]) -> list[Any]:
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required (a non-empty list).")
    return messages


def _text_of(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text: a text block needs a string 'text'.")
    return text


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str) or not data:
            raise InvalidRequest(f"{where}.source: a base64 image needs 'media_type' and 'data'.")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}.source: a url image needs 'url'.")
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"{where}.source: images must be 'base64' or 'url' sources; {kind!r} cannot be served here.")


def _user_parts(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Chat content parts of user blocks other than tool results."""
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "document" and isinstance(block.get("source"), dict) and block["source"].get("type") == "text":
            data = block["source"].get("data")
            parts.append({"type": "text", "text": data if isinstance(data, str) else ""})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise InvalidRequest(f"{at}: content blocks of type {kind!r} cannot be served by this gateway; "
                           "send text, image, tool_use and tool_result blocks.")
    return parts


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string (what every upstream takes), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tool message of a ``tool_result``, and the images it held (for the next user message)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_use_id: a tool_result block needs 'tool_use_id'.")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in _user_parts(content, f"{where}.content"):
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
    elif content is not None:
        raise InvalidRequest(f"{where}.content: a tool result's content must be a string or a list of blocks.")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: content must be a string or a list of blocks.")
    out: list[dict[str, Any]] = []
    rest: list[Any] = []
    images: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            message, held = _tool_result(block, f"{where}[{j}]")
            out.append(message)
            images += held
        else:
            rest.append(block)
    parts = _user_parts(rest, where) + images
    if parts or not out:
        out.append({"role": "user", "content": _chat_content(parts)})
    return out


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: content must be a string or a list of blocks.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not isinstance(name, str) or not call_id or not name:
                raise InvalidRequest(f"{at}: a tool_use block needs 'id' and 'name'.")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": _encoder.encode(arguments).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise InvalidRequest(f"{at}: assistant blocks of type {kind!r} cannot be served by this gateway; "
                           "send text and tool_use blocks.")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system_text(system: Any) -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise InvalidRequest("system: must be a string or a list of text blocks.")
    texts = [_text_of(block, f"system[{j}]") for j, block in enumerate(system)
             if isinstance(block, dict) and block.get("type") == "text"]
    if len(texts) != len(system):
        raise InvalidRequest("system: only text blocks are allowed.")
    return "\n\n".join(texts) or None


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list.")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools[{i}]: must be an object.")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise InvalidRequest(f"tools[{i}]: server tools such as {kind!r} cannot be served by this gateway; "
                           "only tools with 'name', 'description' and 'input_schema' can.")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].name: Field required.")
        function: dict[str, Any] = {"name": name,
                                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool]:
    """The chat ``tool_choice``, and whether parallel calls are turned off."""
    if not isinstance(choice, dict):
        raise InvalidRequest("tool_choice: must be an object such as {\"type\": \"auto\"}.")
    kind = choice.get("type")
    serial = bool(choice.get("disable_parallel_tool_use"))
    if kind == "auto":
        return "auto", serial
    if kind == "any":
        return "required", serial
    if kind == "none":
        return "none", False
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("tool_choice.name: Field required when the type is 'tool'.")
        return {"type": "function", "function": {"name": name}}, serial
    raise InvalidRequest(f"tool_choice.type: must be 'auto', 'any', 'tool' or 'none', not {kind!r}.")


def to_chat(raw: dict[str, Any], model: str) -> dict[str, Any]:
    """The OpenAI chat request for a Messages request (see the module docstring).

    :param model: the registry name that serves it.
    :raises InvalidRequest: what has no chat form, or what Anthropic requires and is missing.
    """
    max_tokens = raw.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required.")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: must be a positive integer.")
    messages: list[dict[str, Any]] = []
    if (system := _system_text(raw.get("system"))) is not None:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(_messages_list(raw)):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            messages += _user_messages(message.get("content"), f"{where}.content")
        elif role == "assistant":
            messages.append(_assistant_message(message.get("content"), f"{where}.content"))
        else:
            raise InvalidRequest(f"{where}.role: must be 'user' or 'assistant', not {role!r}.")
    chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if raw.get(name) is not None:
            chat[name] = raw[name]
    stops = raw.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("stop_sequences: must be a list of strings.")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"stop_sequences: this gateway serves at most {MAX_STOP_SEQUENCES} stop sequences "
                           f"(the chat upstreams' limit), not {len(stops)}.")
        chat["stop"] = stops
    if raw.get("tools"):
        chat["tools"] = _tools(raw["tools"])
    if raw.get("tool_choice") is not None:
        choice, serial = _tool_choice(raw["tool_choice"])
        chat["tool_choice"] = choice
        if serial and chat.get("tools"):
            chat["parallel_tool_calls"] = False
    metadata = raw.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        user = metadata["user_id"]
        chat["user"] = user if len(user) <= MAX_USER_CHARS else hashlib.sha256(user.encode()).hexdigest()
    output_config = raw.get("output_config")
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": fmt.get("schema") or {}}}
    if raw.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# -------------------------------------------------------------------------------------------
# Token estimate (count_tokens, and message_start before the real numbers arrive)


def _text_tokens(text: str) -> float:
    size = len(text)
    return size / ASCII_CHARS_PER_TOKEN + (len(text.encode("utf-8", "replace")) - size) / NON_ASCII_BYTES_PER_TOKEN


def _block_tokens(block: Any) -> float:
    if isinstance(block, str):
        return _text_tokens(block)
    if not isinstance(block, dict):
        return _text_tokens(_encoder.encode(block).decode())
    kind = block.get("type")
    tokens: float = BLOCK_OVERHEAD_TOKENS
    if kind == "text":
        tokens += _text_tokens(str(block.get("text") or ""))
    elif kind == "image":
        tokens += IMAGE_TOKENS
    elif kind == "tool_use":
        tokens += _text_tokens(str(block.get("name") or "") + str(block.get("id") or ""))
        tokens += _text_tokens(_encoder.encode(block.get("input", {})).decode())
    elif kind == "tool_result":
        tokens += _text_tokens(str(block.get("tool_use_id") or ""))
        content = block.get("content")
        tokens += sum(_block_tokens(b) for b in content) if isinstance(content, list) else _block_tokens(content or "")
    elif kind in ("thinking", "redacted_thinking"):
        tokens += _text_tokens(str(block.get("thinking") or block.get("data") or ""))
    else:
        tokens += _text_tokens(_encoder.encode(block).decode())
    return tokens


def estimate_input_tokens(raw: dict[str, Any]) -> int:
    """An over-estimate of a Messages request's input tokens: system, messages and tools.

    See the constants above for the rule; images count :data:`IMAGE_TOKENS` each, whatever their size.
    """
    tokens: float = REQUEST_OVERHEAD_TOKENS
    system = raw.get("system")
    if isinstance(system, list):
        tokens += sum(_block_tokens(b) for b in system)
    elif system:
        tokens += _block_tokens(system)
    messages = raw.get("messages")
    for message in messages if isinstance(messages, list) else ():
        tokens += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, dict) else message
        tokens += sum(_block_tokens(b) for b in content) if isinstance(content, list) else _block_tokens(content or "")
    tools = raw.get("tools")
    if isinstance(tools, list) and tools:
        tokens += TOOLS_OVERHEAD_TOKENS
        for tool in tools:
            tokens += TOOL_OVERHEAD_TOKENS + _text_tokens(_encoder.encode(tool).decode())
    return math.ceil(tokens)


# -------------------------------------------------------------------------------------------
# Response: chat → Messages


def _usage(usage: Any) -> dict[str, int]:
    """Anthropic's usage from chat's: ``input_tokens`` leaves out cache reads and writes."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}

    def number(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    prompt, cached, written = (number(usage.get("prompt_tokens")), number(details.get("cached_tokens")),
                               number(details.get("cache_write_tokens")))
    return {"input_tokens": max(0, prompt - cached - written), "output_tokens": number(usage.get("completion_tokens")),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": written}


def _stop_reason(finish: Any, called: bool) -> str:
    if called and finish in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"
    return _STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is; what is not one becomes ``{}``."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            value = _decoder.decode(arguments)
        except msgspec.DecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def _text_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def to_message(result: dict[str, Any], model: str, message_id: str) -> dict[str, Any]:
    """The Messages response for a ``chat.completion`` body."""
    choices = result.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    if text := _text_content(message.get("content")):
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{len(content)}",
                        "name": function.get("name") or "", "input": _tool_input(function.get("arguments"))})
    called = any(block["type"] == "tool_use" for block in content)
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": _stop_reason(choice.get("finish_reason"), called), "stop_sequence": None,
            "usage": _usage(result.get("usage"))}


def _complete_json(text: str) -> bool:
    """Whether a call's arguments so far are a whole JSON value (so nothing more can follow)."""
    if not text.rstrip().endswith(("}", "]")):
        return False
    try:
        _decoder.decode(text)
    except msgspec.DecodeError:
        return False
    return True


class StreamTranslator:
    """Turns ``chat.completion.chunk`` dicts into Messages stream events.

    Blocks never interleave: the open block takes its deltas at once; content for another block
    waits (in arrival order) until the open block can close, which for a tool call is when its
    arguments are whole JSON, and otherwise at the end.

    :param message_id: the ``msg_…`` id.
    :param model: the model name the client sent.
    :param input_estimate: ``message_start``'s input tokens, until the real usage arrives.
    """

    def __init__(self, message_id: str, model: str, input_estimate: int) -> None:
        self.message_id = message_id
        self.model = model
        self.input_estimate = input_estimate
        self.next_index = 0
        self.open: str | int | None = None  # "text", or the chat index of the open tool call
        self.open_arguments = ""
        self.started: set[int] = set()
        # Content that arrived for blocks not yet open, in arrival order: "text" → text, or a
        # chat tool index → {"id", "name", "arguments"}.
        self.waiting: dict[str | int, Any] = {}
        self.called = False
        self.finish_reason: str | None = None
        self.usage: Any = None

    def start(self) -> list[dict[str, Any]]:
        usage = {"input_tokens": self.input_estimate, "output_tokens": 0, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        return [{"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = _text_content(delta.get("content"))
            if text:
                if self.open == "text":
                    out.append(self._delta({"type": "text_delta", "text": text}))
                else:
                    self.waiting["text"] = self.waiting.get("text", "") + text
            for call in delta.get("tool_calls") or []:
                self._tool_delta(call, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            self._advance(out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self._advance(out, final=True)
        self._close(out)
        usage = _usage(self.usage) if self.usage is not None else {
            "input_tokens": self.input_estimate, "output_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0}
        out.append({"type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(self.finish_reason, self.called), "stop_sequence": None},
                    "usage": usage})
        out.append({"type": "message_stop"})
        return out

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}

    def _tool_delta(self, call: Any, out: list[dict[str, Any]]) -> None:
        if not isinstance(call, dict):
            return
        index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        piece = function.get("arguments") or ""
        if index == self.open:
            if piece:
                self.open_arguments += piece
                out.append(self._delta({"type": "input_json_delta", "partial_json": piece}))
            return
        if index in self.started:
            return  # a closed call only ever closes once its arguments are whole: nothing can follow
        item = self.waiting.setdefault(index, {"id": None, "name": None, "arguments": ""})
        item["id"] = item["id"] or call.get("id")
        item["name"] = item["name"] or function.get("name")
        item["arguments"] += piece

    def _advance(self, out: list[dict[str, Any]], final: bool = False) -> None:
        """Open waiting blocks, in order, while the open block can close."""
        while self.waiting:
            key = next(iter(self.waiting))
            if isinstance(self.open, int) and not final and not _complete_json(self.open_arguments):
                return
            if key != "text" and not self.waiting[key]["name"] and not final:
                return  # a call's block needs its name, which comes with its first delta
            item = self.waiting.pop(key)
            self._close(out)
            self.next_index += 1
            if key == "text":
                self.open = "text"
                out.append({"type": "content_block_start", "index": self.next_index - 1,
                            "content_block": {"type": "text", "text": ""}})
                out.append(self._delta({"type": "text_delta", "text": item}))
                continue
            self.open, self.open_arguments, self.called = key, item["arguments"], True
            self.started.add(key)
            call_id = item["id"] or f"toolu_{self.message_id.removeprefix('msg_')}_{key}"
            out.append({"type": "content_block_start", "index": self.next_index - 1,
                        "content_block": {"type": "tool_use", "id": call_id, "name": item["name"] or "", "input": {}}})
            if item["arguments"]:
                out.append(self._delta({"type": "input_json_delta", "partial_json": item["arguments"]}))

    def _close(self, out: list[dict[str, Any]]) -> None:
        if self.open is not None:
            out.append({"type": "content_block_stop", "index": self.next_index - 1})
            self.open, self.open_arguments = None, ""


def _event(event: dict[str, Any]) -> bytes:
    # The `event:` line is required: the SDKs skip data-only events.
    return b"event: " + event["type"].encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"


def _events(events: list[dict[str, Any]]) -> bytes:
    return b"".join(_event(e) for e in events)


_PING = _event({"type": "ping"})
_END = object()


async def _next(source: AsyncIterator[dict[str, Any]]) -> Any:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _END


async def _stream(translator: StreamTranslator, source: AsyncIterator[dict[str, Any]],
                  pending: asyncio.Task | None) -> AsyncIterator[bytes]:
    """The SSE frames: ``pending`` is the task reading the next chunk (already started)."""
    try:
        yield _events(translator.start())
        while pending is not None:
            done, _ = await asyncio.wait({pending}, timeout=PING_INTERVAL_S)
            if not done:
                yield _PING
                continue
            try:
                chunk = pending.result()
            except StreamFailed as exc:
                pending = None
                yield _event(error_body(exc.error))
                return
            except Exception:
                pending = None
                logger.exception("the stream of %s failed", translator.message_id)
                yield _event(error_body(InternalError("The gateway failed while streaming this answer.")))
                return
            if chunk is _END:
                pending = None
                yield _events(translator.finish())
                return
            pending = asyncio.create_task(_next(source))
            if out := translator.feed(chunk):
                yield _events(out)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


# -------------------------------------------------------------------------------------------
# Routes


async def messages(request: Request) -> Response:
    try:
        return await _messages(request)
    except GatewayError as exc:
        return render_error(exc)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(InternalError("The gateway failed to handle this request."))


async def count_tokens(request: Request) -> Response:
    try:
        gateway: Gateway = request.app.state.gateway
        await authenticate(gateway, request)
        raw = _decode_body(await gateway.read_body(request))
        resolve_model(gateway.registry, _model_name(raw))
        _messages_list(raw)
        return Response(_encoder.encode({"input_tokens": estimate_input_tokens(raw)}), media_type="application/json")
    except GatewayError as exc:
        return render_error(exc)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return render_error(InternalError("The gateway failed to handle this request."))


async def _messages(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    identity = await authenticate(gateway, request)
    raw = _decode_body(await gateway.read_body(request))
    requested = _model_name(raw)
    chat = to_chat(raw, resolve_model(gateway.registry, requested))
    stream = bool(chat.get("stream"))
    _, job = await admit(gateway, identity, request.headers, _encoder.encode(chat), ChatRequest, check_chat, "chat",
                         surface="messages")
    job.stream = job.include_usage = stream
    replies = await submit(gateway, job)
    headers = {**response_headers(gateway, job), "request-id": job.request_id}
    message_id = f"msg_{job.request_id}"
    if not stream:
        result = _decoder.decode(await single(gateway, replies, request.receive))
        return Response(_encoder.encode(to_message(result, requested, message_id)), media_type="application/json",
                        headers=headers)
    source = chunks(gateway, job, replies)
    pending = asyncio.create_task(_next(source))
    try:
        # A failure before any output, seen soon enough, is still a proper HTTP status.
        await asyncio.wait({pending}, timeout=PING_INTERVAL_S)
        if pending.done() and isinstance(pending.exception(), StreamFailed) and not pending.exception().partial:
            raise pending.exception().error
    except BaseException:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await source.aclose()
        raise
    translator = StreamTranslator(message_id, requested, estimate_input_tokens(raw))
    return EventStreamResponse(_stream(translator, source, pending), headers=headers)


ROUTES = [
    Route("/ai/v1/messages", messages, methods=["POST"]),
    Route("/ai/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
