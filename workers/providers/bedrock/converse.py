"""Translation between the OpenAI Chat Completions shapes and Amazon Bedrock's Converse API.

Pure functions and one small state machine, no I/O: the Bedrock provider signs and sends what
:func:`to_converse` builds, hands what comes back to :func:`from_converse` or a
:class:`StreamTranslator`, and maps failures with :func:`error_from_response`. Keeping the
mapping here means every rule below is tested on plain dicts.

Request (:func:`to_converse`)
    * ``system`` and ``developer`` messages, wherever they sit, become the top-level ``system``
      text blocks in their order; each text part is its own block.
    * Converse takes only ``user`` and ``assistant`` turns and needs them to alternate, so
      consecutive turns of one role are merged and ``tool`` messages become ``toolResult`` blocks
      of the user turn next to them. In a merged user turn the ``toolResult`` blocks go first:
      Anthropic models refuse a user turn where text precedes the results of the previous
      assistant turn's calls.
    * Bedrock refuses blank text blocks, so they are dropped, and a message left with no block
      at all is skipped. An empty tool result cannot be dropped (its call must be answered), so
      it is sent as :data:`EMPTY_TOOL_RESULT`.
    * After that the conversation must start with a user turn; otherwise the request is refused
      here with a message that says so, rather than with Bedrock's terser one.
    * Images must be inline ``data:image/...;base64,`` URLs: the base64 text goes to Bedrock as is.
      The gateway does not fetch ``https://`` images for clients (that would make it a proxy that
      fetches arbitrary URLs from inside the operator's network), so those are refused.
    * An assistant turn keeps its text before its ``toolUse`` blocks, as the model produced them.
      ``arguments`` must be a JSON object (Converse's ``input`` is a document); an empty string,
      which some clients send for a call without parameters, is read as ``{}``.
    * Tool call ids that do not fit Bedrock's ``[a-zA-Z0-9_.:-]{1,64}`` (histories that came from
      another provider) are replaced by a stable digest, the same for the call and its result.
    * ``temperature`` is clamped to 1.0: OpenAI allows 0..2 but Bedrock's range, the Anthropic
      models' range, is 0..1, and refusing a value most SDK examples use would be unhelpful.
      ``max_completion_tokens`` wins over the deprecated ``max_tokens`` when both are sent.
    * ``tool_choice``: ``auto`` → ``{"auto":{}}``, ``required`` → ``{"any":{}}``, a named function
      → ``{"tool":{"name":…}}``. Converse has no "none": without tool blocks in the history the
      tools are simply not sent; with them, ``toolConfig`` is mandatory, so the tools stay and the
      choice is ``auto`` (the model is then free to call one; the alternative, rewriting the
      history's tool blocks as text, would change what the model was shown).
    * Bedrock refuses ``toolUse``/``toolResult`` blocks without a ``toolConfig``. When the history
      has them and the request has no ``tools``, a spec with a permissive schema is made for each
      tool name the history used.
    * ``n`` > 1 and JSON ``response_format`` cannot be honoured by Converse and are refused, so a
      client never silently gets one choice or unvalidated text. ``parallel_tool_calls``,
      ``seed``, ``user``, the penalties, ``logprobs``, ``stream``, ``stream_options`` and
      ``model`` are not sent (the model id goes in the URL).

Response (:func:`from_converse`, :class:`StreamTranslator`)
    * Text blocks are joined; ``content`` is None when the answer is only tool calls.
      ``reasoningContent`` and other non-OpenAI blocks are left out.
    * Stream tool calls are numbered 0, 1, … in the order their ``contentBlockStart`` arrives,
      never by Bedrock's ``contentBlockIndex`` (which counts text blocks too), so clients that
      join argument fragments by ``index`` get every parallel call.
    * The finish chunk is sent at ``messageStop`` and the usage chunk at ``metadata``, which
      comes after it; both orders are valid OpenAI streams.
    * Usage: Bedrock's ``inputTokens`` excludes cache reads and writes, so ``prompt_tokens`` adds
      them back and ``cached_tokens`` carries the reads, which the gateway's metering prices at
      the model's cached price. A usage object that is missing or not numeric is left out rather
      than failing an answer the client already has; the worker then estimates the tokens and
      marks the record as estimated.

Errors (:func:`error_from_response`, :meth:`StreamTranslator.exception`)
    Every message names the upstream type ("Upstream bedrock returned ThrottlingException: …")
    and is redacted. ``ValidationException`` becomes a 400 with code ``provider_error``, the code
    the OpenAI-compatible providers use for a request the upstream refused, or
    ``context_length_exceeded`` when the message is about the context window. Credential and
    permission failures are the gateway's own configuration problem, not the client's key, so
    they are a non-retryable 403 (not 401, which the OpenAI SDKs report as a bad client key) with
    code ``provider_access_denied``; only their first line is kept, because AWS signature errors
    go on to quote the canonical request, security token included.

Embeddings (InvokeModel bodies)
    Titan Text Embeddings v2 and Cohere Embed are supported; both take text only, so OpenAI
    token-id inputs are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from shared.errors import GatewayError, InvalidRequest, ProviderError, UpstreamTimeout, redact

__all__ = [
    "COHERE_MAX_TEXTS",
    "EMPTY_TOOL_RESULT",
    "IMAGE_FORMATS",
    "MAX_TEMPERATURE",
    "TITAN_DIMENSIONS",
    "StreamTranslator",
    "cohere_request",
    "cohere_vectors",
    "embedding_family",
    "embedding_texts",
    "error_from_response",
    "finish_reason",
    "from_converse",
    "titan_request",
    "titan_vector",
    "to_converse",
    "usage",
]

# -------------------------------------------------------------------------------------------
# Constants

DEFAULT_PROVIDER = "bedrock"

# Bedrock's temperature range (that of its Anthropic models); OpenAI's goes to 2.
MAX_TEMPERATURE = 1.0

# Converse image formats, and the MIME subtypes clients use for them.
IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
_IMAGE_SUBTYPE_ALIASES = {"jpg": "jpeg", "pjpeg": "jpeg"}

# Sent for a tool message with no text: Bedrock refuses blank text blocks, and the call it
# answers must still be answered.
EMPTY_TOOL_RESULT = "(no output)"

# What a tool that only the history mentions accepts: anything.
PERMISSIVE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": True}
EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
HISTORY_TOOL_DESCRIPTION = "A tool used earlier in this conversation."

# Bedrock's ToolUseId shape.
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")
_TOOL_USE_ID_PREFIX = "call_"

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)

_TOOL_CHOICE_AUTO = {"auto": {}}
_TOOL_CHOICE_ANY = {"any": {}}

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}
_DEFAULT_FINISH = "stop"

# Titan Text Embeddings v2 output sizes; other sizes are made by the gateway shortening 1024.
TITAN_DIMENSIONS = frozenset({256, 512, 1024})
TITAN_MAX_DIMENSIONS = 1024
# Cohere Embed takes at most this many texts per call; splitting is the caller's job.
COHERE_MAX_TEXTS = 96
COHERE_INPUT_TYPE = "search_document"
COHERE_TRUNCATE = "END"

# Inference-profile prefixes in front of a base model id ("us.amazon.titan-…").
_GEO_PREFIXES = frozenset({"us", "eu", "apac", "ap", "global", "us-gov", "ca", "jp", "au"})

# Upstream text beyond this length adds nothing for a client and bloats error bodies and logs.
MAX_ERROR_MESSAGE_CHARS = 1000

# -------------------------------------------------------------------------------------------
# Request


def to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """Build the Converse request body (without the model id, which goes in the URL).

    :param body: the client's OpenAI chat body, already validated by the front door.
    :raises InvalidRequest: for what Bedrock cannot be asked, with ``param`` naming the field.
    """
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest("Bedrock models return one choice per request: 'n' must be 1.", param="n")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        raise InvalidRequest(
            f"response_format of type {response_format.get('type')!r} is not supported for Bedrock models; "
            "ask for JSON in the prompt or use a tool instead.", param="response_format")

    system, messages = _messages(body.get("messages") or [])
    request: dict[str, Any] = {"messages": messages}
    if system:
        request["system"] = system
    inference = _inference_config(body)
    if inference:
        request["inferenceConfig"] = inference
    tool_config = _tool_config(body, messages)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    return request


def _messages(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks, and the alternating user/assistant turns."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(msg.get("content"), i, role))
            continue
        if role == "user":
            blocks, turn_role = _user_blocks(msg.get("content"), i), "user"
        elif role == "assistant":
            blocks, turn_role = _assistant_blocks(msg, i), "assistant"
        elif role == "tool":
            blocks, turn_role = [_tool_result(msg, i)], "user"
        else:
            raise InvalidRequest(
                f"messages[{i}]: role {role!r} is not supported for Bedrock models; "
                "use 'tool' messages with 'tool_calls' instead of legacy function messages.",
                param=f"messages[{i}].role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})

    for turn in turns:
        if turn["role"] == "user":
            # Stable: results keep their order, and so does the rest.
            turn["content"].sort(key=lambda block: "toolResult" not in block)
    if not turns:
        raise InvalidRequest("Bedrock needs at least one user message besides system and developer messages.",
                             param="messages")
    if turns[0]["role"] != "user":
        raise InvalidRequest(
            "Bedrock needs the conversation to start with a user message once system and developer "
            "messages are taken out; this one starts with an assistant message.", param="messages")
    return system, turns


def _texts(content: Any, i: int, role: str, keep_blank: bool = False) -> list[str]:
    """The texts of a content that may hold only text (system, developer, tool, assistant).

    Blank texts are dropped unless ``keep_blank``: Bedrock refuses blank blocks, but a blank
    piece of a text that is joined back together is part of it.
    """
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if keep_blank or content.strip() else []
    if not isinstance(content, list):
        raise InvalidRequest(f"messages[{i}].content must be a string or a list of parts.",
                             param=f"messages[{i}].content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
        elif kind == "refusal" and role == "assistant":
            text = part.get("refusal")
        else:
            raise InvalidRequest(
                f"messages[{i}].content[{j}]: a '{role}' message can only hold text parts for Bedrock models, "
                f"not {kind!r}.", param=f"messages[{i}].content[{j}]")
        if isinstance(text, str) and (keep_blank or text.strip()):
            texts.append(text)
    return texts


def _user_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise InvalidRequest(f"messages[{i}].content must be a string or a list of parts.",
                             param=f"messages[{i}].content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"messages[{i}].content[{j}]"
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                blocks.append({"text": text})
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            blocks.append(_image_block(url, where))
        else:
            raise InvalidRequest(f"{where}: content parts of type {kind!r} are not supported for Bedrock models; "
                                 "send text and images.", param=where)
    return blocks


def _image_block(url: Any, where: str) -> dict[str, Any]:
    """A Converse image block from an inline ``data:`` URL."""
    param = f"{where}.image_url.url"
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: 'image_url.url' must be a non-empty string.", param=param)
    if not url.startswith("data:"):
        raise InvalidRequest(
            f"{where}: Bedrock models need images inline, as 'data:image/<format>;base64,...' URLs; "
            "the gateway does not fetch image URLs on a client's behalf.", param=param)
    match = _DATA_URL.match(url)
    params = match.group("params").lower().split(";") if match else []
    if match is None or "base64" not in params or not match.group("data"):
        raise InvalidRequest(f"{where}: the image data URL must be 'data:image/<format>;base64,<data>'.",
                             param=param)
    kind, _, subtype = match.group("mime").strip().lower().partition("/")
    fmt = _IMAGE_SUBTYPE_ALIASES.get(subtype, subtype)
    if kind != "image" or fmt not in IMAGE_FORMATS:
        raise InvalidRequest(
            f"{where}: image type {match.group('mime') or 'unknown'!r} is not supported for Bedrock models; "
            f"use one of {', '.join(sorted(IMAGE_FORMATS))}.", param=param)
    return {"image": {"format": fmt, "source": {"bytes": match.group("data")}}}


def _assistant_blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"text": text} for text in _texts(msg.get("content"), i, "assistant")]
    for j, call in enumerate(msg.get("tool_calls") or ()):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise InvalidRequest(f"{where} needs 'id' and 'function.name'.", param=where)
        arguments = fn.get("arguments")
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            tool_input: Any = {}
        else:
            try:
                tool_input = json.loads(arguments) if isinstance(arguments, str) else None
            except ValueError:
                tool_input = None
        if not isinstance(tool_input, dict):
            raise InvalidRequest(
                f"{where} (id {call['id']!r}, function {fn['name']!r}): 'arguments' must be a JSON object "
                "for Bedrock models.", param=f"{where}.function.arguments")
        blocks.append({"toolUse": {"toolUseId": _tool_use_id(call["id"]), "name": fn["name"], "input": tool_input}})
    return blocks


def _tool_result(msg: dict[str, Any], i: int) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"messages[{i}]: a 'tool' message needs 'tool_call_id'.",
                             param=f"messages[{i}].tool_call_id")
    # Parts are one text cut in pieces, so they are joined as they are.
    text = "".join(_texts(msg.get("content"), i, "tool", keep_blank=True))
    return {"toolResult": {"toolUseId": _tool_use_id(call_id),
                           "content": [{"text": text if text.strip() else EMPTY_TOOL_RESULT}]}}


def _tool_use_id(call_id: str) -> str:
    """The id as is when Bedrock takes it, else a digest that is the same for a call and its result."""
    if _TOOL_USE_ID.match(call_id):
        return call_id
    return _TOOL_USE_ID_PREFIX + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        config["temperature"] = min(temperature, MAX_TEMPERATURE)
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    stops = [s for s in stops if isinstance(s, str) and s]
    if stops:
        config["stopSequences"] = stops
    return config


def _tool_config(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    history_tools: list[str] = []
    has_tool_blocks = False
    for turn in messages:
        for block in turn["content"]:
            if "toolUse" in block:
                has_tool_blocks = True
                if block["toolUse"]["name"] not in history_tools:
                    history_tools.append(block["toolUse"]["name"])
            elif "toolResult" in block:
                has_tool_blocks = True

    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if choice == "none" and not has_tool_blocks:
        return None
    specs = [_tool_spec(tool, j) for j, tool in enumerate(tools)]
    if not specs and has_tool_blocks:
        specs = [{"toolSpec": {"name": name, "description": HISTORY_TOOL_DESCRIPTION,
                               "inputSchema": {"json": PERMISSIVE_SCHEMA}}} for name in history_tools]
    if not specs:
        return None
    config: dict[str, Any] = {"tools": specs}
    if choice in ("auto", "none"):
        config["toolChoice"] = dict(_TOOL_CHOICE_AUTO)
    elif choice == "required":
        config["toolChoice"] = dict(_TOOL_CHOICE_ANY)
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in {spec["toolSpec"]["name"] for spec in specs} or not tools:
            raise InvalidRequest(f"'tool_choice' names the function {name!r}, which is not among 'tools'.",
                                 param="tool_choice")
        config["toolChoice"] = {"tool": {"name": name}}
    return config


def _tool_spec(tool: Any, j: int) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"tools[{j}] needs 'function.name'.", param=f"tools[{j}].function")
    parameters = fn.get("parameters")
    return {"toolSpec": {
        "name": fn["name"],
        "description": fn.get("description") or fn["name"],
        "inputSchema": {"json": parameters if isinstance(parameters, dict) and parameters else EMPTY_OBJECT_SCHEMA},
    }}


# -------------------------------------------------------------------------------------------
# Response


def from_converse(data: Any, *, provider: str = DEFAULT_PROVIDER) -> dict[str, Any]:
    """A ``chat.completion`` from a Converse response (id, model and created are the worker's).

    :raises ProviderError: when the body is not a Converse response.
    """
    output = data.get("output") if isinstance(data, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    stop_reason = data.get("stopReason") if isinstance(data, dict) else None
    if not isinstance(content, list) or not isinstance(stop_reason, str):
        raise ProviderError(f"Upstream {provider} answered with a body that is not a Converse response.")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise ProviderError(f"Upstream {provider} answered with a malformed content block.")
        if "text" in block:
            if not isinstance(block["text"], str):
                raise ProviderError(f"Upstream {provider} answered with a malformed text block.")
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            if (not isinstance(use, dict) or not isinstance(use.get("toolUseId"), str)
                    or not isinstance(use.get("name"), str)):
                raise ProviderError(f"Upstream {provider} answered with a malformed toolUse block.")
            tool_calls.append({"id": use["toolUseId"], "type": "function",
                               "function": {"name": use["name"], "arguments": _arguments(use.get("input"))}})
    message_out: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        message_out["tool_calls"] = tool_calls
    result: dict[str, Any] = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message_out, "finish_reason": finish_reason(stop_reason),
                     "logprobs": None}],
    }
    counted = _usage_or_none(data.get("usage"))
    if counted is not None:
        result["usage"] = counted
    return result


def _arguments(tool_input: Any) -> str:
    """OpenAI's arguments string: compact JSON, non-ASCII kept as is (as models stream it)."""
    return json.dumps({} if tool_input is None else tool_input, ensure_ascii=False, separators=(",", ":"))


def finish_reason(stop_reason: str) -> str:
    """OpenAI's ``finish_reason`` for a Converse ``stopReason``; unknown reasons end normally."""
    return _STOP_REASONS.get(stop_reason, _DEFAULT_FINISH)


def usage(u: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Converse ``usage``.

    Converse's ``inputTokens`` leaves out tokens read from or written to the prompt cache, so
    ``prompt_tokens`` adds both back: OpenAI's ``prompt_tokens`` counts the whole prompt and its
    ``cached_tokens`` is the part of it served from cache.

    :raises ProviderError: when the token counts are missing or not integers.
    """
    counted = _usage_or_none(u)
    if counted is None:
        raise ProviderError("Upstream usage has no integer inputTokens and outputTokens.")
    return counted


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage_or_none(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    fresh, completion = _int(u.get("inputTokens")), _int(u.get("outputTokens"))
    if fresh is None or completion is None:
        return None
    cache_read = _int(u.get("cacheReadInputTokens")) or 0
    cache_write = _int(u.get("cacheWriteInputTokens"))
    prompt = fresh + cache_read + (cache_write or 0)
    details: dict[str, int] = {"cached_tokens": cache_read}
    if cache_write is not None:
        details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


# -------------------------------------------------------------------------------------------
# Stream


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class StreamTranslator:
    """Turns ConverseStream events into OpenAI chunks, one stream per instance.

    :param provider: the configured provider name, for error messages.
    """

    def __init__(self, provider: str = DEFAULT_PROVIDER) -> None:
        self.provider = provider
        # contentBlockIndex of each tool block → its OpenAI tool-call index.
        self._tools: dict[int, int] = {}
        # Tool blocks (by contentBlockIndex) still waiting for their first argument fragment.
        self._no_input: set[int] = set()

    def events(self, event_type: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event becomes (often none). Unknown event types are ignored.

        :raises ProviderError: when a known event is malformed.
        """
        handler = getattr(self, f"_on_{event_type}", None) if event_type in _STREAM_EVENTS else None
        if handler is None:
            return []
        if not isinstance(payload, dict):
            raise self._malformed(event_type)
        return handler(payload)

    def _malformed(self, event_type: str) -> ProviderError:
        return ProviderError(f"Upstream {self.provider} sent a malformed {event_type} event.")

    def _on_messageStart(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        return [_chunk({"role": "assistant", "content": ""})]

    def _on_contentBlockStart(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        start = payload.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if use is None:
            return []  # text needs no start; other block kinds have no OpenAI form
        block = payload.get("contentBlockIndex")
        if (not isinstance(use, dict) or not isinstance(use.get("toolUseId"), str)
                or not isinstance(use.get("name"), str) or _int(block) is None or block in self._tools):
            raise self._malformed("contentBlockStart")
        index = self._tools[block] = len(self._tools)
        self._no_input.add(block)
        return [_chunk({"tool_calls": [{"index": index, "id": use["toolUseId"], "type": "function",
                                        "function": {"name": use["name"], "arguments": ""}}]})]

    def _on_contentBlockDelta(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            raise self._malformed("contentBlockDelta")
        if "text" in delta:
            text = delta["text"]
            if not isinstance(text, str):
                raise self._malformed("contentBlockDelta")
            return [_chunk({"content": text})] if text else []
        if "toolUse" in delta:
            block = payload.get("contentBlockIndex")
            fragment = delta["toolUse"].get("input") if isinstance(delta["toolUse"], dict) else None
            if block not in self._tools or not isinstance(fragment, str):
                raise self._malformed("contentBlockDelta")
            if not fragment:
                return []
            self._no_input.discard(block)
            return [_arguments_chunk(self._tools[block], fragment)]
        return []  # reasoningContent, citations: no OpenAI form

    def _on_contentBlockStop(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        block = payload.get("contentBlockIndex")
        if block in self._no_input:
            self._no_input.discard(block)
            return [_arguments_chunk(self._tools[block], "{}")]
        return []

    def _on_messageStop(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        # A tool block Bedrock never closed still needs arguments a client can parse.
        chunks = [_arguments_chunk(self._tools[block], "{}") for block in sorted(self._no_input)]
        self._no_input.clear()
        reason = payload.get("stopReason")
        chunks.append(_chunk({}, finish_reason(reason) if isinstance(reason, str) else _DEFAULT_FINISH))
        return chunks

    def _on_metadata(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        counted = _usage_or_none(payload.get("usage"))
        if counted is None:
            return []
        return [{"object": "chat.completion.chunk", "choices": [], "usage": counted}]

    def exception(self, exception_type: str, payload: Any, secrets: tuple[str, ...] = ()) -> GatewayError:
        """The error for an in-stream exception frame (``:exception-type`` is camelCase).

        :param payload: the frame's JSON, ``{"message": ...}``.
        :param secrets: keys to mask in the message.
        """
        name = exception_type[:1].upper() + exception_type[1:] if exception_type else "UnknownException"
        message = _message_of(payload)
        if isinstance(payload, dict):
            original = payload.get("originalMessage")
            if isinstance(original, str) and original and original not in message:
                message = f"{message} (model said: {original})"
        return _map_error(name, message, None, self.provider, secrets)


_STREAM_EVENTS = frozenset({"messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop",
                            "messageStop", "metadata"})


def _arguments_chunk(index: int, fragment: str) -> dict[str, Any]:
    return _chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


# -------------------------------------------------------------------------------------------
# Errors

_CREDENTIAL_ERRORS = frozenset({
    "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
    "IncompleteSignatureException", "MissingAuthenticationTokenException",
})
_THROTTLING_ERRORS = frozenset({"ThrottlingException", "ModelNotReadyException", "ServiceQuotaExceededException"})
_UPSTREAM_FAILURES = {  # type → status the client sees; all retryable
    "ModelErrorException": 502,
    "ModelStreamErrorException": 502,
    "InternalServerException": 502,
    "ServiceUnavailableException": 503,
}
CREDENTIAL_STATUS = 403
CREDENTIAL_HINT = ("check the AWS credentials, region and model access configured for this provider "
                   "on the gateway")

_CONTEXT_WINDOW = re.compile(
    r"too long|context (window|length|limit)|too many (input )?tokens|maximum context", re.IGNORECASE)
# AWS identifiers that are not secrets by themselves but say too much to a client.
_AWS_IDENTIFIERS = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|arn:aws[a-z-]*:(?:iam|sts)::\d{12}:\S+")


def error_from_response(status: int, error_type_header: str | None, body: bytes,
                        secrets: tuple[str, ...] = (), *, provider: str = DEFAULT_PROVIDER) -> GatewayError:
    """Map a Bedrock HTTP error (non-stream, or before a stream's first event) to a gateway error.

    :param status: the HTTP status.
    :param error_type_header: ``x-amzn-ErrorType``, e.g. ``ThrottlingException:http://internal...``.
    :param body: the response body, ``{"message": ...}`` (or ``Message``, or ``__type``).
    :param secrets: keys to mask in the message.
    :param provider: the configured provider name, named in the message.
    """
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    kind = error_type_header.split(":", 1)[0].strip() if error_type_header else ""
    if not kind and isinstance(payload, dict) and isinstance(payload.get("__type"), str):
        # "com.amazon.coral.service#UnrecognizedClientException" or "...Exception:http://..."
        kind = payload["__type"].split(":", 1)[0].rsplit("#", 1)[-1].strip()
    if payload is None and body:
        message = body.decode("utf-8", "replace").strip()
    else:
        message = _message_of(payload)
    return _map_error(kind or f"HTTP {status}", message, status, provider, secrets)


def _message_of(payload: Any) -> str:
    if isinstance(payload, dict):
        for key in ("message", "Message"):
            if isinstance(payload.get(key), str) and payload[key].strip():
                return payload[key].strip()
    return "no detail"


def _map_error(kind: str, message: str, status: int | None, provider: str,
               secrets: tuple[str, ...]) -> GatewayError:
    """The one table from an upstream error type (or, for unknown types, its HTTP status) to ours."""
    credential = kind in _CREDENTIAL_ERRORS or (kind not in _KNOWN_ERRORS and status in (401, 403))
    if credential:
        message = message.splitlines()[0] if message.strip() else "no detail"
    message = _AWS_IDENTIFIERS.sub("[redacted]", message[:MAX_ERROR_MESSAGE_CHARS])
    text = redact(f"Upstream {provider} returned {kind}: {message}", secrets)

    if kind == "ValidationException" or (kind not in _KNOWN_ERRORS and status in (400, 413, 422)):
        code = "context_length_exceeded" if _CONTEXT_WINDOW.search(message) else "provider_error"
        return InvalidRequest(text, code=code)
    if credential:
        return ProviderError(f"{text} ({CREDENTIAL_HINT})", status=CREDENTIAL_STATUS,
                             code="provider_access_denied", retryable=False)
    if kind == "ResourceNotFoundException" or (kind not in _KNOWN_ERRORS and status == 404):
        return ProviderError(text, status=404, code="model_not_found", retryable=False)
    if kind in _THROTTLING_ERRORS or (kind not in _KNOWN_ERRORS and status == 429):
        return ProviderError(text, status=429, code="rate_limit_exceeded", retryable=True)
    if kind == "ModelTimeoutException" or (kind not in _KNOWN_ERRORS and status in (408, 504)):
        return UpstreamTimeout(text)
    if kind in _UPSTREAM_FAILURES:
        return ProviderError(text, status=_UPSTREAM_FAILURES[kind], code="provider_error", retryable=True)
    return ProviderError(text, status=503 if status == 503 else 502, code="provider_error", retryable=True)


_KNOWN_ERRORS = (_CREDENTIAL_ERRORS | _THROTTLING_ERRORS | set(_UPSTREAM_FAILURES)
                 | {"ValidationException", "ResourceNotFoundException", "ModelTimeoutException"})


# -------------------------------------------------------------------------------------------
# Embeddings (InvokeModel)


def embedding_family(model_id: str) -> Literal["titan", "cohere"] | None:
    """Which request shape a Bedrock embeddings model takes; None for models this module does not speak.

    Only Titan Text Embeddings v2 is "titan": v1 refuses v2's ``dimensions`` and ``normalize``.
    ARNs and inference-profile prefixes (``us.``, ``eu.``, ``global.``, …) are looked through.
    """
    base = model_id.rsplit("/", 1)[-1].lower()
    head, dot, rest = base.partition(".")
    if dot and head in _GEO_PREFIXES:
        base = rest
    if base.startswith("amazon.titan-embed-text-v2"):
        return "titan"
    if base.startswith("cohere.embed-"):
        return "cohere"
    return None


def embedding_texts(inputs: Any) -> list[str]:
    """The texts of an OpenAI embeddings ``input``; token ids are refused (Bedrock models take text)."""
    items = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise InvalidRequest("Bedrock embedding models take text: 'input' must be a string or an array of "
                             "strings, not token ids.", param="input")
    return items


def titan_request(text: str, dimensions: int | None) -> dict[str, Any]:
    """One Titan v2 InvokeModel body (Titan takes one text per call).

    ``dimensions`` is passed only when Titan produces that size itself (256, 512, 1024); any other
    smaller size is left to the gateway, which shortens the 1024-dimension vector and
    re-normalises it. Sizes above 1024 cannot be produced and are refused.
    """
    if not isinstance(text, str):
        raise InvalidRequest("Bedrock embedding models take text, not token ids.", param="input")
    if dimensions is not None and dimensions > TITAN_MAX_DIMENSIONS:
        raise InvalidRequest(f"Titan embeddings have at most {TITAN_MAX_DIMENSIONS} dimensions.",
                             param="dimensions")
    request: dict[str, Any] = {"inputText": text, "normalize": True, "embeddingTypes": ["float"]}
    if dimensions in TITAN_DIMENSIONS:
        request["dimensions"] = dimensions
    return request


def cohere_request(texts: list[str]) -> dict[str, Any]:
    """One Cohere Embed InvokeModel body for at most :data:`COHERE_MAX_TEXTS` texts.

    OpenAI's embeddings API has no notion of query versus document, and stored documents are
    what most callers embed, so ``search_document`` is used; over-long texts are cut at the end
    rather than failing the batch.
    """
    if not all(isinstance(text, str) for text in texts):
        raise InvalidRequest("Bedrock embedding models take text, not token ids.", param="input")
    if len(texts) > COHERE_MAX_TEXTS:
        raise ValueError(f"Cohere takes at most {COHERE_MAX_TEXTS} texts per call; split the batch.")
    return {"texts": list(texts), "input_type": COHERE_INPUT_TYPE, "truncate": COHERE_TRUNCATE,
            "embedding_types": ["float"]}


def _vector(value: Any) -> list[float] | None:
    if isinstance(value, list) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return None


def titan_vector(data: Any, *, provider: str = DEFAULT_PROVIDER) -> tuple[list[float], int | None]:
    """The vector and input token count of a Titan answer (the count is None when absent).

    :raises ProviderError: when the answer holds no float vector.
    """
    by_type = data.get("embeddingsByType") if isinstance(data, dict) else None
    vector = _vector(by_type.get("float")) if isinstance(by_type, dict) else None
    if vector is None and isinstance(data, dict):
        vector = _vector(data.get("embedding"))
    if vector is None:
        raise ProviderError(f"Upstream {provider}'s Titan answer holds no embedding.")
    return vector, _int(data.get("inputTextTokenCount"))


def cohere_vectors(data: Any, *, provider: str = DEFAULT_PROVIDER) -> list[list[float]]:
    """The float vectors of a Cohere answer, ``embeddings_floats`` or ``embeddings_by_type``.

    :raises ProviderError: when the answer holds no float vectors.
    """
    embeddings = data.get("embeddings") if isinstance(data, dict) else None
    if isinstance(embeddings, dict):  # embeddings_by_type
        embeddings = embeddings.get("float")
    vectors = [_vector(v) for v in embeddings] if isinstance(embeddings, list) and embeddings else None
    if vectors is None or any(v is None for v in vectors):
        raise ProviderError(f"Upstream {provider}'s Cohere answer holds no float embeddings.")
    return vectors  # type: ignore[return-value]
