"""An in-process fake of Amazon Bedrock Runtime, for testing the gateway's Bedrock provider.

It speaks Bedrock's own wire format, faithfully enough for botocore's real client to talk to it:

- ``POST /model/{modelId}/converse``: Converse, a JSON answer.
- ``POST /model/{modelId}/converse-stream``: ConverseStream, ``application/vnd.amazon.eventstream``
  frames (prelude and message CRCs) written in deliberately odd chunk sizes, so frames are split
  across writes; ``messageStop`` comes before ``metadata`` (which carries the usage), the text
  block has no ``contentBlockStart`` and each tool block has one.
- ``POST /model/{modelId}/invoke``: InvokeModel for the embedding models (Titan Text Embeddings v2,
  Cohere Embed v3), with the token count in ``X-Amzn-Bedrock-Input-Token-Count``.

The model id is one percent-encoded path segment (``anthropic.claude-3-haiku-20240307-v1%3A0``,
ARNs with ``%2F``); the mock reads it from the raw path. Every request must carry a SigV4
signature (service ``bedrock``) that the mock recomputes with its own secret, or the configured
``Authorization: Bearer`` API key. Failures answer in Bedrock's error shape: body
``{"message": ...}``, header ``x-amzn-ErrorType: <Type>:http://internal.amazon.com/coral/...``.
Requests are validated the way Bedrock validates them (alternating roles, ``toolConfig`` present
for tool blocks, parameter ranges, ...) and rejected with a ``ValidationException``.

What to answer comes from :mod:`tests.mocks.script`, so every provider mock answers the same
prompts the same way. Directives, written in the last user text (or in an embedding input):

- ``#chunks=N``, ``#tools[=N]``, ``#delay=MS``, ``#cached=N``, ``#no_usage``, ``#echo_body``: as in
  the script. ``#cached=N`` is reported as ``cacheReadInputTokens`` and left out of ``inputTokens``.
  ``#no_usage`` leaves out ``usage`` (Converse) or the ``metadata`` event (ConverseStream).
- ``#status=CODE``: the HTTP error with Bedrock's exception for that status (``STATUS_EXCEPTIONS``).
- ``#exception=NAME``: with ``#status``, the exception type to send instead (the status stays);
  with ``#midstream_error``, the in-stream exception (``ThrottlingException`` by default).
- ``#midstream_error``: ``MIDSTREAM_ERROR_AFTER`` deltas, then an exception frame, then the end.
- ``#hang``: one delta (nothing, non-streamed), then wait until the mock stops.

Every request is recorded as a :class:`Received`, so a test can check what the gateway sent, how
much of a stream went out, and whether the gateway hung up.

Standalone: ``python -m tests.mocks.bedrock --port 18004 --access-key A --secret-key S [--region R]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import itertools
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal, cast
from urllib.parse import unquote

import anyio
import msgspec
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from tests.mocks.script import (
    MIDSTREAM_ERROR_AFTER,
    BadRequest,
    Conversation,
    Plan,
    embedding_vector,
    parse_directives,
    plan,
)

Operation = Literal["converse", "converse-stream", "invoke"]
ModelKind = Literal["chat", "titan-embed", "cohere-embed"]

DEFAULT_REGION = "us-east-1"
SIGNING_SERVICE = "bedrock"
DEFAULT_PORT = 18004
START_TIMEOUT = 10.0
# Backstop for requests still open at stop(), e.g. in a long #delay: uvicorn cancels them after this.
GRACEFUL_SHUTDOWN = 0.5
# How often a #hang checks whether stop() was called; uvicorn would otherwise cancel it noisily.
STOP_POLL = 0.05
# How far X-Amz-Date may be from the mock's clock, as AWS allows.
MAX_CLOCK_SKEW = datetime.timedelta(minutes=5)
SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

TOOL_USE_ID = "tooluse_mock{i}"
JSON_CONTENT_TYPE = "application/json"
EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
ERROR_TYPE_HEADER = "x-amzn-ErrorType"
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
REQUEST_ID_HEADER = "x-amzn-RequestId"
INPUT_TOKEN_HEADER = "X-Amzn-Bedrock-Input-Token-Count"
LATENCY_HEADER = "X-Amzn-Bedrock-Invocation-Latency"
# Sizes, cycled, of the writes a stream is cut into; none lines up with a frame boundary.
STREAM_WRITE_SIZES = (7, 1, 23, 64, 5, 130, 2, 41)

CHAT_MODELS = frozenset(
    {
        "anthropic.claude-3-haiku-20240307-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "meta.llama3-1-70b-instruct-v1:0",
        "mistral.mistral-large-2407-v1:0",
    }
)
TITAN_EMBED_MODELS = frozenset({"amazon.titan-embed-text-v2:0"})
COHERE_EMBED_MODELS = frozenset({"cohere.embed-english-v3", "cohere.embed-multilingual-v3"})
KNOWN_MODELS = CHAT_MODELS | TITAN_EMBED_MODELS | COHERE_EMBED_MODELS
# Cross-region inference profiles: one of these prefixes on a known model's id.
INFERENCE_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.")
# ARN resource types whose last part is a model or profile id the mock can resolve.
ARN_MODEL_RESOURCES = ("foundation-model", "inference-profile")

TITAN_DIMENSIONS = (256, 512, 1024)
TITAN_DEFAULT_DIMENSIONS = 1024
TITAN_EMBEDDING_TYPES = ("float", "binary")
COHERE_DIMENSIONS = 1024
COHERE_MAX_TEXTS = 96
COHERE_MAX_TEXT_CHARS = 2048
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
COHERE_TRUNCATE = ("NONE", "START", "END")
COHERE_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")

# Converse and ConverseStream body members (botocore's service model, modelId is in the path).
CONVERSE_FIELDS = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "projectIdentifier",
        "additionalModelRequestFields",
        "promptVariables",
        "additionalModelResponseFieldPaths",
        "requestMetadata",
        "performanceConfig",
        "serviceTier",
        "outputConfig",
    }
)
CONTENT_BLOCK_KEYS = frozenset(
    {
        "text",
        "image",
        "document",
        "video",
        "audio",
        "toolUse",
        "toolResult",
        "guardContent",
        "cachePoint",
        "reasoningContent",
        "citationsContent",
        "searchResult",
        "toolAddition",
        "toolRemoval",
    }
)
SYSTEM_BLOCK_KEYS = frozenset({"text", "guardContent", "cachePoint"})
ROLES = ("user", "assistant")
IMAGE_FORMATS = ("gif", "jpeg", "png", "webp")
TOOL_CHOICES = ("auto", "any", "tool")
TOOL_NAME_RE = re.compile(r"[a-zA-Z0-9_-]+")
TOOL_NAME_MAX = 64

STATUS_EXCEPTIONS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
EXCEPTION_MESSAGES = {
    "ValidationException": "Malformed input request, please reformat your input and try again.",
    "AccessDeniedException": "You don't have access to the model with the specified model ID.",
    "ResourceNotFoundException": "The requested model was not found.",
    "ModelTimeoutException": "Model has timed out in processing the request. Try your request again.",
    "ModelErrorException": "The system encountered an unexpected error during processing. Try your request again.",
    "ModelNotReadyException": "Model is not ready to serve inference requests. Try your request again later.",
    "ModelStreamErrorException": "The model encountered an error while streaming its response.",
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "ServiceQuotaExceededException": "Your request exceeds the service quota for your account.",
    "InternalServerException": "An internal server error occurred. Retry your request.",
    "ServiceUnavailableException": "Bedrock is unable to process your request.",
}
DEFAULT_STREAM_EXCEPTION = "ThrottlingException"
# What a ModelErrorException / modelStreamErrorException says the model itself answered.
MODEL_ERROR_ORIGINAL_STATUS = 500
MODEL_ERROR_ORIGINAL_MESSAGE = "Internal server error from the model."

MSG_MISSING_AUTH = "Missing Authentication Token"
MSG_BAD_TOKEN = "The security token included in the request is invalid."
MSG_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
MSG_BAD_API_KEY = "Authentication failed: Please make sure your API Key is valid."
MSG_UNKNOWN_MODEL = "The provided model identifier is invalid."
MSG_UNSUPPORTED_MODEL = (
    "This action doesn't support the model that you provided. Try again with a supported text or chat model."
)
MSG_INVOKE_CHAT_MODEL = "The mock serves InvokeModel for embedding models only; use Converse for this model."
MSG_MALFORMED = "Malformed input request, please reformat your input and try again."
MSG_FIRST_ROLE = (
    "A conversation must start with a user message. Try again with a conversation that starts with a user message."
)
MSG_ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the conversation alternates "
    "between user and assistant roles and try again."
)
MSG_TOOLS_WITHOUT_CONFIG = "The toolConfig field must be defined when using toolUse and toolResult content blocks."
MSG_SHUTTING_DOWN = "Bedrock is unable to process your request."


class Received(msgspec.Struct):
    """One request as the mock saw it; the mock keeps updating it while it answers.

    path: exactly as sent, still percent-encoded; model_id: the path's model id, unquoted.
    operation: ``None`` when the path is not one of the three routes.
    usage: what the mock reported in Bedrock's shape (``inputTokens``, ``outputTokens``, ...; for
    embeddings ``{"inputTokens": N}``), or would have had #no_usage / #hang / a hang-up not stopped it.
    error_type: the exception it answered with (HTTP or in-stream), e.g. ``"ThrottlingException"``
    or ``"throttlingException"``.
    """

    method: str
    path: str
    model_id: str | None
    operation: Operation | None
    headers: dict[str, str]
    body: dict[str, Any] | None
    stream: bool = False
    # Content-block deltas written before the end or the hang-up.
    chunks_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    usage: dict[str, Any] | None = None
    error_type: str | None = None


class BedrockError(Exception):
    """An answer in Bedrock's HTTP error shape."""

    def __init__(
        self,
        error_type: str,
        status: int,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        message_key: str = "message",
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status
        self.message = message
        self.extra = extra or {}
        self.message_key = message_key


def _validation(message: str) -> BedrockError:
    return BedrockError("ValidationException", 400, message)


def _constraint(value: Any, path: str, constraint: str) -> BedrockError:
    """Bedrock's (Coral's) wording for a request member that breaks the service model."""
    shown = "null" if value is None else f"'{value}'"
    return _validation(
        f"1 validation error detected: Value {shown} at '{path}' failed to satisfy constraint: {constraint}"
    )


def _malformed(detail: str) -> BedrockError:
    """The wording of a model's own body schema check (InvokeModel bodies, unknown keys)."""
    return _validation(f"Malformed input request: {detail}, please reformat your input and try again.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def exception_member(name: str) -> str:
    """The ConverseStream union member for an exception type: ``ThrottlingException`` → ``throttlingException``."""
    return name[:1].lower() + name[1:]


def exception_body(error_type: str, message: str) -> dict[str, Any]:
    """An exception's payload: ``{"message"}`` plus the members the service model gives that type."""
    body: dict[str, Any] = {"message": message}
    if error_type == "ModelErrorException":
        body.update(originalStatusCode=MODEL_ERROR_ORIGINAL_STATUS, resourceName="mock-model")
    elif error_type == "ModelStreamErrorException":
        body.update(originalStatusCode=MODEL_ERROR_ORIGINAL_STATUS, originalMessage=MODEL_ERROR_ORIGINAL_MESSAGE)
    return body


# -- event-stream framing -------------------------------------------------------------------------


def _string_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack("!B", len(raw_name)) + raw_name + b"\x07" + struct.pack("!H", len(raw_value)) + raw_value


def eventstream_frame(name: str, payload: dict[str, Any], kind: Literal["event", "exception"] = "event") -> bytes:
    """One ``application/vnd.amazon.eventstream`` message: prelude, prelude CRC, headers, payload, CRC."""
    headers = (
        _string_header(":exception-type" if kind == "exception" else ":event-type", name)
        + _string_header(":content-type", JSON_CONTENT_TYPE)
        + _string_header(":message-type", kind)
    )
    body = msgspec.json.encode(payload)
    prelude = struct.pack("!II", 12 + len(headers) + len(body) + 4, len(headers))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + headers + body
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


class _OddWriter:
    """Collects frames and hands them out cut at ``STREAM_WRITE_SIZES``, regardless of frame boundaries."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._sizes = itertools.cycle(STREAM_WRITE_SIZES)

    def add(self, frame: bytes) -> None:
        self._pending += frame

    def drain(self) -> list[bytes]:
        parts: list[bytes] = []
        while self._pending:
            size = next(self._sizes)
            parts.append(bytes(self._pending[:size]))
            del self._pending[:size]
        return parts


class _EventStream(StreamingResponse):
    """An event-stream response that notices a hang-up even while the body is asleep, and records it."""

    media_type = EVENTSTREAM_CONTENT_TYPE

    def __init__(self, events: AsyncIterator[bytes], record: Received, headers: dict[str, str]) -> None:
        super().__init__(events, headers=headers)
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
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()


# -- Converse request → neutral conversation ------------------------------------------------------


def _block_kind(block: Any, path: str, allowed: frozenset[str]) -> str:
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in allowed:
        keys = sorted(block) if isinstance(block, dict) else type(block).__name__
        raise _validation(f"The content block at {path} must set exactly one of its members; got {keys}.")
    return next(iter(block))


def _check_text(block: dict[str, Any], where: str, what: str) -> str:
    text = block["text"]
    if not isinstance(text, str):
        raise _constraint(text, where, "Member must be a string")
    if not text.strip():
        raise _validation(
            f"The text field in the {what} object at {where} is blank. Add text to the text field, and try again."
        )
    return text


def _check_image(image: Any, path: str, coral_path: str) -> None:
    if not isinstance(image, dict):
        raise _constraint(image, coral_path, "Member must be a structure")
    if image.get("format") not in IMAGE_FORMATS:
        raise _constraint(
            image.get("format"),
            coral_path + ".format",
            f"Member must satisfy enum value set: [{', '.join(IMAGE_FORMATS)}]",
        )
    source = image.get("source")
    if not isinstance(source, dict) or len(source) != 1:
        raise _validation(f"The image source at {path}.image.source must set exactly one of bytes or s3Location.")
    if "bytes" in source:
        data = source["bytes"]
        try:
            if not isinstance(data, str) or not data:
                raise ValueError
            base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            raise _validation(
                f"Unable to decode the image bytes at {path}.image.source.bytes: the value is not valid base64."
            ) from None


def _tool_result_text(result: dict[str, Any]) -> str:
    parts: list[str] = []
    for item in result.get("content") or []:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            parts.append(item["text"])
        elif isinstance(item, dict) and "json" in item:
            parts.append(msgspec.json.encode(item["json"]).decode())
    return " ".join(parts)


def _tool_names(tool_config: Any) -> list[str]:
    if not isinstance(tool_config, dict):
        raise _constraint(tool_config, "toolConfig", "Member must be a structure")
    tools = tool_config.get("tools")
    if not isinstance(tools, list) or not tools:
        raise _constraint(tools, "toolConfig.tools", "Member must have length greater than or equal to 1")
    names: list[str] = []
    for index, tool in enumerate(tools):
        path = f"toolConfig.tools.{index + 1}.member"
        if not isinstance(tool, dict) or len(tool) != 1:
            raise _validation(
                f"The tool at toolConfig.tools.{index} must set exactly one of toolSpec, systemTool or cachePoint."
            )
        if "cachePoint" in tool or "systemTool" in tool:
            continue
        spec = tool.get("toolSpec")
        if not isinstance(spec, dict):
            raise _constraint(spec, path + ".toolSpec", "Member must be a structure")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise _constraint(name, path + ".toolSpec.name", "Member must have length greater than or equal to 1")
        if len(name) > TOOL_NAME_MAX:
            raise _constraint(
                name, path + ".toolSpec.name", f"Member must have length less than or equal to {TOOL_NAME_MAX}"
            )
        if not TOOL_NAME_RE.fullmatch(name):
            raise _constraint(
                name, path + ".toolSpec.name", f"Member must satisfy regular expression pattern: {TOOL_NAME_RE.pattern}"
            )
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict):
            raise _constraint(None, path + ".toolSpec.inputSchema", "Member must not be null")
        names.append(name)
    choice = tool_config.get("toolChoice")
    if choice is not None:
        if not isinstance(choice, dict) or len(choice) != 1 or next(iter(choice)) not in TOOL_CHOICES:
            raise _validation(
                "The toolChoice field must set exactly one of auto, any or tool. "
                f"Got {sorted(choice) if isinstance(choice, dict) else choice!r}."
            )
        if "tool" in choice:
            chosen = choice["tool"].get("name") if isinstance(choice["tool"], dict) else None
            if chosen not in names:
                raise _validation(f"The tool {chosen} named in toolChoice is not one of the tools in toolConfig.")
    return names


def _check_inference_config(config: Any) -> tuple[int | None, list[str]]:
    if config is None:
        return None, []
    if not isinstance(config, dict):
        raise _constraint(config, "inferenceConfig", "Member must be a structure")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None:
        if not _is_int(max_tokens):
            raise _constraint(max_tokens, "inferenceConfig.maxTokens", "Member must be an integer")
        if max_tokens < 1:
            raise _constraint(
                max_tokens, "inferenceConfig.maxTokens", "Member must have value greater than or equal to 1"
            )
    for key in ("temperature", "topP"):
        value = config.get(key)
        if value is None:
            continue
        if not _is_number(value):
            raise _constraint(value, f"inferenceConfig.{key}", "Member must be a number")
        if value < 0:
            raise _constraint(value, f"inferenceConfig.{key}", "Member must have value greater than or equal to 0")
        if value > 1:
            raise _constraint(value, f"inferenceConfig.{key}", "Member must have value less than or equal to 1")
    stop = config.get("stopSequences")
    if stop is None:
        stop = []
    if not isinstance(stop, list):
        raise _constraint(stop, "inferenceConfig.stopSequences", "Member must be a list")
    for index, sequence in enumerate(stop):
        if not isinstance(sequence, str) or not sequence:
            raise _constraint(
                sequence,
                f"inferenceConfig.stopSequences.{index + 1}.member",
                "Member must have length greater than or equal to 1",
            )
    return max_tokens, stop


def converse_conversation(body: Any) -> Conversation:
    """Validate a Converse body as Bedrock does and return it in the script's neutral terms.

    texts: the system blocks' text as one entry, then one entry per message (its text blocks and
    tool-result texts joined by spaces). last_user_text: the text of the last user message that has
    text. tool_results: when the last message is a user message of toolResult blocks, their text and
    JSON contents. Raises :class:`BedrockError` (a ValidationException) for what Bedrock rejects.
    """
    if not isinstance(body, dict):
        raise _validation(MSG_MALFORMED)
    for key in body:
        if key not in CONVERSE_FIELDS:
            raise _malformed(f"extraneous key [{key}] is not permitted")

    texts: list[str] = []
    system = body.get("system")
    if system is not None:
        if not isinstance(system, list):
            raise _constraint(system, "system", "Member must be a list")
        system_texts = []
        for index, block in enumerate(system):
            if _block_kind(block, f"system.{index}", SYSTEM_BLOCK_KEYS) == "text":
                system_texts.append(_check_text(block, f"system.{index}", "SystemContentBlock"))
        if system_texts:
            texts.append(" ".join(system_texts))

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _validation(MSG_FIRST_ROLE)
    tool_config = body.get("toolConfig")
    previous_tool_uses: list[str] = []
    last_user_text = ""
    tool_results: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _constraint(message, f"messages.{i + 1}.member", "Member must be a structure")
        role = message.get("role")
        if role not in ROLES:
            raise _constraint(
                role, f"messages.{i + 1}.member.role", f"Member must satisfy enum value set: [{', '.join(ROLES)}]"
            )
        if i == 0 and role != "user":
            raise _validation(MSG_FIRST_ROLE)
        if i > 0 and role == messages[i - 1].get("role"):
            raise _validation(MSG_ALTERNATE)
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise _validation(
                f"The content field in the Message object at messages.{i} is empty. "
                "Add a ContentBlock object to the content field and try again."
            )
        message_texts: list[str] = []
        result_texts: list[str] = []
        result_ids: list[str] = []
        tool_uses: list[str] = []
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            kind = _block_kind(block, where, CONTENT_BLOCK_KEYS)
            if kind == "text":
                message_texts.append(_check_text(block, where, "ContentBlock"))
            elif kind == "image":
                _check_image(block["image"], where, f"messages.{i + 1}.member.content.{j + 1}.member.image")
            elif kind in ("toolUse", "toolResult") and tool_config is None:
                raise _validation(MSG_TOOLS_WITHOUT_CONFIG)
            elif kind == "toolUse":
                use = block["toolUse"]
                if not isinstance(use, dict) or not all(k in use for k in ("toolUseId", "name", "input")):
                    raise _validation(f"The toolUse block at {where} needs toolUseId, name and input.")
                tool_uses.append(use["toolUseId"])
            elif kind == "toolResult":
                result = block["toolResult"]
                if not isinstance(result, dict) or not isinstance(result.get("toolUseId"), str):
                    raise _validation(f"The toolResult block at {where} needs a toolUseId.")
                if not result.get("content") and result.get("status") == "error":
                    raise _validation(
                        f"The content field at {where}.toolResult cannot be empty when status value is error."
                    )
                result_ids.append(result["toolUseId"])
                result_texts.append(_tool_result_text(result))
        if result_ids:
            if role != "user":
                raise _validation(f"messages.{i}.content: toolResult blocks are only allowed in user messages.")
            if len(result_ids) > len(previous_tool_uses):
                raise _validation(
                    f"The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse "
                    "blocks of previous turn."
                )
            for result_id in result_ids:
                if result_id not in previous_tool_uses:
                    raise _validation(
                        f"The toolResult block at messages.{i}.content has toolUseId {result_id}, which matches "
                        "no toolUse block of the previous turn."
                    )
        if previous_tool_uses and role == "user":
            missing = [u for u in previous_tool_uses if u not in result_ids]
            if missing:
                raise _validation(
                    f"Expected toolResult blocks at messages.{i}.content for the following Ids: {', '.join(missing)}"
                )
        previous_tool_uses = tool_uses if role == "assistant" else []
        texts.append(" ".join(message_texts + result_texts))
        if role == "user" and message_texts:
            last_user_text = " ".join(message_texts)
        if i == len(messages) - 1:
            tool_results = result_texts if role == "user" and result_ids and not message_texts else []

    tool_names = _tool_names(tool_config) if tool_config is not None else []
    max_tokens, stop = _check_inference_config(body.get("inferenceConfig"))
    return Conversation(
        texts=texts,
        last_user_text=last_user_text,
        tool_results=tool_results,
        tool_names=tool_names,
        max_tokens=max_tokens,
        stop=stop,
    )


def stop_reason(conversation: Conversation, answer: Plan, echo: str | None = None) -> str:
    """Bedrock's ``stopReason`` for an answer to ``conversation``."""
    if answer.finish == "length":
        return "max_tokens"
    if answer.finish == "tool_calls":
        return "tool_use"
    if conversation.stop:
        uncut = Conversation(conversation.texts, conversation.last_user_text, conversation.tool_results,
                             conversation.tool_names)
        if plan(uncut, tool_call_id=TOOL_USE_ID, echo=echo).text != answer.text:
            return "stop_sequence"
    return "end_turn"


def bedrock_usage(answer: Plan) -> dict[str, int]:
    """The answer's usage in Bedrock's terms: ``inputTokens`` leaves out the cache reads."""
    cached = min(answer.cached_tokens, answer.prompt_tokens)
    return {
        "inputTokens": answer.prompt_tokens - cached,
        "outputTokens": answer.completion_tokens,
        "totalTokens": answer.prompt_tokens + answer.completion_tokens,
        "cacheReadInputTokens": cached,
        "cacheWriteInputTokens": 0,
    }


# -- embeddings ----------------------------------------------------------------------------------


def _quantised(vector: list[float], kind: str) -> list[int] | list[float]:
    if kind == "float":
        return vector
    if kind == "int8":
        return [max(-128, min(127, round(v * 127))) for v in vector]
    if kind == "uint8":
        return [max(0, min(255, round((v + 1) * 127.5))) for v in vector]
    packed = []
    for start in range(0, len(vector), 8):
        byte = 0
        for bit, value in enumerate(vector[start : start + 8]):
            byte |= (value > 0) << (7 - bit)
        packed.append(byte)
    return packed if kind == "ubinary" else [b - 128 for b in packed]


_JSON_TYPE_NAMES = {bool: "Boolean", int: "Integer", float: "Number", str: "String", list: "JSONArray",
                    dict: "JSONObject"}


def _type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), "Null")


def _check_keys(body: dict[str, Any], allowed: Iterable[str], required: Iterable[str]) -> None:
    allowed = set(allowed)
    for key in body:
        if key not in allowed:
            raise _malformed(f"#: extraneous key [{key}] is not permitted")
    for key in required:
        if key not in body:
            raise _malformed(f"#: required key [{key}] not found")


def _check_types_list(value: Any, field: str, allowed: tuple[str, ...]) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _malformed(f"#/{field}: expected a non-empty JSONArray, found: {_type_name(value)}")
    for index, item in enumerate(value):
        if item not in allowed:
            raise _malformed(f"#/{field}/{index}: {item} is not a valid enum value")
    return value


def titan_embedding(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Titan Text Embeddings v2's answer to ``body`` and its input token count.

    The vector is ``embedding_vector(inputText, dimensions)``, unit length whatever ``normalize`` says.
    """
    _check_keys(body, ("inputText", "dimensions", "normalize", "embeddingTypes"), ("inputText",))
    text = body["inputText"]
    if not isinstance(text, str):
        raise _malformed(f"#/inputText: expected type: String, found: {_type_name(text)}")
    if not text:
        raise _malformed("#/inputText: expected minLength: 1, actual: 0")
    dimensions = body.get("dimensions", TITAN_DEFAULT_DIMENSIONS)
    if not _is_int(dimensions) or dimensions not in TITAN_DIMENSIONS:
        raise _malformed(f"#/dimensions: {dimensions} is not a valid enum value")
    if not isinstance(body.get("normalize", True), bool):
        raise _malformed(f"#/normalize: expected type: Boolean, found: {_type_name(body['normalize'])}")
    kinds = ["float"]
    if "embeddingTypes" in body:
        kinds = _check_types_list(body["embeddingTypes"], "embeddingTypes", TITAN_EMBEDDING_TYPES)
    vector = embedding_vector(text, dimensions)
    tokens = len(text.split())
    answer = {
        "embedding": vector,
        "inputTextTokenCount": tokens,
        "embeddingsByType": {kind: _quantised(vector, kind) for kind in kinds},
    }
    return answer, tokens


def cohere_embedding(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Cohere Embed v3's answer to ``body`` and its input token count (text inputs only, no ``images``)."""
    _check_keys(body, ("texts", "input_type", "truncate", "embedding_types"), ("texts", "input_type"))
    texts = body["texts"]
    if not isinstance(texts, list):
        raise _malformed(f"#/texts: expected type: JSONArray, found: {_type_name(texts)}")
    if not texts:
        raise _malformed("#/texts: expected minimum item count: 1, found: 0")
    if len(texts) > COHERE_MAX_TEXTS:
        raise _malformed(f"#/texts: expected maximum item count: {COHERE_MAX_TEXTS}, found: {len(texts)}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise _malformed(f"#/texts/{index}: expected type: String, found: {_type_name(text)}")
        if len(text) > COHERE_MAX_TEXT_CHARS:
            raise _malformed(f"#/texts/{index}: expected maxLength: {COHERE_MAX_TEXT_CHARS}, actual: {len(text)}")
    if body["input_type"] not in COHERE_INPUT_TYPES:
        raise _malformed(f"#/input_type: {body['input_type']} is not a valid enum value")
    if "truncate" in body and body["truncate"] not in COHERE_TRUNCATE:
        raise _malformed(f"#/truncate: {body['truncate']} is not a valid enum value")
    vectors = [embedding_vector(text, COHERE_DIMENSIONS) for text in texts]
    answer: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": texts}
    if "embedding_types" in body:
        kinds = _check_types_list(body["embedding_types"], "embedding_types", COHERE_EMBEDDING_TYPES)
        answer["response_type"] = "embeddings_by_type"
        answer["embeddings"] = {kind: [_quantised(v, kind) for v in vectors] for kind in kinds}
    else:
        answer["response_type"] = "embeddings_floats"
        answer["embeddings"] = vectors
    return answer, sum(len(text.split()) for text in texts)


# -- the mock ------------------------------------------------------------------------------------

_ROUTE_RE = re.compile(r"/model/([^/]+)/(converse|converse-stream|invoke)")


def model_kind(model_id: str) -> ModelKind:
    """What a (resolved) model id serves: a chat model or one of the two embedding families."""
    if model_id.startswith("amazon.titan-embed"):
        return "titan-embed"
    if model_id.startswith("cohere.embed"):
        return "cohere-embed"
    return "chat"


class MockBedrock:
    """A fake Bedrock Runtime endpoint served by uvicorn on a background thread.

    access_key, secret_key: the only credentials whose SigV4 signatures it accepts.
    region: the region the signature must be scoped to.
    session_token: when set, ``X-Amz-Security-Token`` must carry it (and it is part of the signature).
    bearer_token: when set, ``Authorization: Bearer <bearer_token>`` (a Bedrock API key) is accepted too.
    models: more model ids to accept, besides ``KNOWN_MODELS`` and their inference profiles;
        ids starting ``amazon.titan-embed`` or ``cohere.embed`` are served as those embedding models.
    host, port: where to listen; port 0 lets the OS choose a free one.
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        region: str = DEFAULT_REGION,
        session_token: str | None = None,
        bearer_token: str | None = None,
        models: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.session_token = session_token
        self.bearer_token = bearer_token
        self.models = frozenset(KNOWN_MODELS | set(models))
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._bound_port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
        self.app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=methods)])

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("mock Bedrock is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The endpoint URL, ready for botocore's ``endpoint_url``."""
        return f"http://{self._host}:{self.port}"

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

    def start(self) -> MockBedrock:
        """Serve on a background thread; returns once the port accepts connections."""
        server = self._bind()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="mock-bedrock", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mock Bedrock failed to start")
            time.sleep(0.005)
        return self

    def run(self) -> None:
        """Serve in the calling thread until interrupted (the standalone mode)."""
        server = self._bind()
        print(f"mock Bedrock ({self.region}) on {self.url}", flush=True)
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

    def __enter__(self) -> MockBedrock:
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

    # -- authentication ----------------------------------------------------------------------

    def _authenticate(self, request: Request, raw_body: bytes, raw_path: str) -> None:
        authorization = request.headers.get("authorization", "")
        if not authorization:
            raise BedrockError("MissingAuthenticationTokenException", 403, MSG_MISSING_AUTH)
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() == "bearer":
            presented = rest.strip().encode()
            if self.bearer_token is not None and hmac.compare_digest(presented, self.bearer_token.encode()):
                return
            raise BedrockError("AccessDeniedException", 403, MSG_BAD_API_KEY, message_key="Message")
        params: dict[str, str] = {}
        if scheme == SIGV4_ALGORITHM:
            for part in rest.split(","):
                key, _, value = part.strip().partition("=")
                params[key] = value
        amz_date = request.headers.get("x-amz-date")
        missing = [
            f"Authorization header requires '{name}' parameter."
            for name in ("Credential", "Signature", "SignedHeaders")
            if not params.get(name)
        ]
        if not amz_date:
            missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        if missing:
            raise BedrockError(
                "IncompleteSignatureException", 403, " ".join(missing) + f" Authorization={authorization}"
            )
        scope = params["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise BedrockError(
                "IncompleteSignatureException", 403,
                f"Credential should be scoped with a valid terminator: 'aws4_request', not '{scope[-1]}'.",
            )
        if scope[0] != self.access_key:
            raise BedrockError("UnrecognizedClientException", 403, MSG_BAD_TOKEN)
        presented_token = request.headers.get("x-amz-security-token")
        if presented_token != self.session_token:
            raise BedrockError("UnrecognizedClientException", 403, MSG_BAD_TOKEN)
        try:
            signed_at = datetime.datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise BedrockError(
                "InvalidSignatureException", 403,
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601",
            ) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if abs(now - signed_at) > MAX_CLOCK_SKEW:
            stamp = now.strftime(AMZ_DATE_FORMAT)
            if signed_at < now:
                detail = f"is now earlier than {(now - MAX_CLOCK_SKEW).strftime(AMZ_DATE_FORMAT)} ({stamp} - 5 min.)"
                raise BedrockError("InvalidSignatureException", 403, f"Signature expired: {amz_date} {detail}")
            detail = f"is still later than {(now + MAX_CLOCK_SKEW).strftime(AMZ_DATE_FORMAT)} ({stamp} + 5 min.)"
            raise BedrockError("InvalidSignatureException", 403, f"Signature not yet current: {amz_date} {detail}")
        declared_hash = request.headers.get("x-amz-content-sha256")
        if declared_hash is not None and declared_hash != hashlib.sha256(raw_body).hexdigest():
            raise BedrockError("InvalidSignatureException", 403, MSG_BAD_SIGNATURE)
        expected = self._signature(request, raw_body, raw_path, amz_date, params["SignedHeaders"].split(";"))
        if not hmac.compare_digest(expected.encode(), params["Signature"].encode()):
            raise BedrockError("InvalidSignatureException", 403, MSG_BAD_SIGNATURE)

    def _signature(
        self, request: Request, raw_body: bytes, raw_path: str, amz_date: str, signed_headers: list[str]
    ) -> str:
        """The SigV4 signature botocore computes for this request with the mock's own secret and scope."""
        query = request.scope.get("query_string", b"").decode("latin-1")
        host = request.headers.get("host", f"{self._host}:{self.port}")
        url = f"http://{host}{raw_path}" + (f"?{query}" if query else "")
        recomputed = AWSRequest(method=request.method, url=url, data=raw_body)
        for name in signed_headers:
            for value in request.headers.getlist(name):
                recomputed.headers[name] = value
        recomputed.context["timestamp"] = amz_date
        signer = _ExactHeadersSigV4(Credentials(self.access_key, self.secret_key, self.session_token),
                                    SIGNING_SERVICE, self.region)
        canonical = signer.canonical_request(recomputed)
        return signer.signature(signer.string_to_sign(recomputed, canonical), recomputed)

    # -- dispatch ----------------------------------------------------------------------------

    def _resolve_model(self, model_id: str) -> str:
        """The base model id behind ``model_id`` (an id, an inference profile or an ARN), or a ValidationException."""
        resolved = model_id
        if resolved.startswith("arn:"):
            resource = resolved.split(":", 5)[-1]
            kind, _, rest = resource.partition("/")
            if kind not in ARN_MODEL_RESOURCES or not rest:
                if model_id in self.models:
                    return model_id
                raise _validation(MSG_UNKNOWN_MODEL)
            resolved = rest
        if resolved in self.models:
            return resolved
        for prefix in INFERENCE_PROFILE_PREFIXES:
            base = resolved.removeprefix(prefix)
            if base != resolved and base in self.models:
                return base
        if model_id in self.models:
            return model_id
        raise _validation(MSG_UNKNOWN_MODEL)

    async def _dispatch(self, request: Request) -> Response:
        started = time.monotonic()
        raw_body = await request.body()
        raw_path = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1").partition("?")[0]
        route = _ROUTE_RE.fullmatch(raw_path)
        body: dict[str, Any] | None = None
        if raw_body:
            try:
                decoded = msgspec.json.decode(raw_body)
            except msgspec.DecodeError:
                decoded = None
            body = decoded if isinstance(decoded, dict) else None
        operation = cast(Operation, route.group(2)) if route else None
        record = Received(
            method=request.method,
            path=raw_path,
            model_id=unquote(route.group(1)) if route else None,
            operation=operation,
            headers=dict(request.headers),
            body=body,
            stream=operation == "converse-stream",
        )
        with self._lock:
            self.received.append(record)
        try:
            self._authenticate(request, raw_body, raw_path)
            if route is None or request.method != "POST":
                raise BedrockError("UnknownOperationException", 404, f"Unknown operation {request.method} {raw_path}")
            model = self._resolve_model(record.model_id or "")
            if operation == "invoke":
                return await self._invoke(request, record, model, started)
            return await self._converse(request, record, model, raw_body, started)
        except BedrockError as error:
            record.error_type = error.error_type
            return _error_response(error)

    def _status_error(self, directives: dict[str, Any]) -> BedrockError:
        status = directives["status"]
        if not 400 <= status <= 599:
            return _validation(f"#status must be an HTTP error code, got {status}")
        default = "InternalServerException" if status >= 500 else "ValidationException"
        error_type = directives.get("exception") or STATUS_EXCEPTIONS.get(status, default)
        message = EXCEPTION_MESSAGES.get(error_type, f"mock {error_type} ({status})")
        body = exception_body(error_type, message)
        return BedrockError(error_type, status, message, extra={k: v for k, v in body.items() if k != "message"})

    # -- Converse / ConverseStream -----------------------------------------------------------

    async def _converse(
        self, request: Request, record: Received, model: str, raw_body: bytes, started: float
    ) -> Response:
        if model_kind(model) != "chat":
            raise _validation(MSG_UNSUPPORTED_MODEL)
        if record.body is None:
            raise _validation(MSG_MALFORMED)
        conversation = converse_conversation(record.body)
        echo = raw_body.decode("utf-8", "replace")
        try:
            directives, _ = parse_directives(conversation.last_user_text)
            if "status" in directives:
                raise self._status_error(directives)
            answer = plan(conversation, tool_call_id=TOOL_USE_ID, echo=echo)
        except BadRequest as exc:
            raise _validation(str(exc)) from None
        reason = stop_reason(conversation, answer, echo)
        record.usage = bedrock_usage(answer)
        headers = {REQUEST_ID_HEADER: str(uuid.uuid4())}
        if record.stream:
            return _EventStream(self._converse_events(record, answer, reason, started), record, headers)

        wait = math.inf if "hang" in directives else answer.delay
        if wait and await self._client_left_during(request, wait):
            record.disconnected = True
            # Nobody is left to read this; uvicorn drops it. 499 is nginx's "client closed request".
            return Response(status_code=499)
        if "hang" in directives:
            raise BedrockError("ServiceUnavailableException", 503, MSG_SHUTTING_DOWN)
        content: list[dict[str, Any]] = []
        if answer.text:
            content.append({"text": answer.text})
        for call in answer.tool_calls:
            content.append(
                {"toolUse": {"toolUseId": call.id, "name": call.name, "input": msgspec.json.decode(call.arguments)}}
            )
        out: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": reason,
        }
        if "no_usage" not in answer.directives:
            out["usage"] = record.usage
        out["metrics"] = {"latencyMs": _elapsed_ms(started)}
        record.completed = True
        return _json_response(out, headers=headers)

    async def _converse_events(
        self, record: Received, answer: Plan, reason: str, started: float
    ) -> AsyncIterator[bytes]:
        directives = answer.directives
        writer = _OddWriter()
        # (frame, is_delta); the text block (index 0 when there is text) gets no contentBlockStart.
        frames: list[tuple[bytes | None, bool]] = []
        index = 0
        if answer.pieces:
            for piece in answer.pieces:
                delta = {"contentBlockIndex": index, "delta": {"text": piece}}
                frames.append((eventstream_frame("contentBlockDelta", delta), True))
            frames.append((eventstream_frame("contentBlockStop", {"contentBlockIndex": index}), False))
            index += 1
        for call in answer.tool_calls:
            start = {"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}
            frames.append((eventstream_frame("contentBlockStart", start), False))
            for fragment in call.fragments():
                delta = {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}}
                frames.append((eventstream_frame("contentBlockDelta", delta), True))
            frames.append((eventstream_frame("contentBlockStop", {"contentBlockIndex": index}), False))
            index += 1

        await anyio.sleep(answer.delay)
        writer.add(eventstream_frame("messageStart", {"role": "assistant"}))
        deltas = 0
        # The trailing None stands for "after the last delta", so #hang and #midstream_error still
        # fire when the answer has fewer deltas than they wait for.
        for frame, is_delta in [*frames, (None, True)]:
            if is_delta and "hang" in directives and (deltas >= 1 or frame is None):
                for part in writer.drain():
                    yield part
                record.chunks_sent = deltas
                await self._hang()
                return
            if is_delta and "midstream_error" in directives and (deltas >= MIDSTREAM_ERROR_AFTER or frame is None):
                error_type = directives.get("exception") or DEFAULT_STREAM_EXCEPTION
                payload = exception_body(error_type, EXCEPTION_MESSAGES.get(error_type, f"mock {error_type}"))
                writer.add(eventstream_frame(exception_member(error_type), payload, kind="exception"))
                record.error_type = exception_member(error_type)
                for part in writer.drain():
                    yield part
                record.chunks_sent = deltas
                record.completed = True
                return
            if frame is None:
                break
            if is_delta:
                # What is pending goes out before the wait, so a delta is never held back by the next one.
                for part in writer.drain():
                    yield part
                record.chunks_sent = deltas
                await anyio.sleep(answer.delay)
                deltas += 1
            writer.add(frame)
        writer.add(eventstream_frame("messageStop", {"stopReason": reason}))
        if "no_usage" not in directives:
            metadata = {"usage": record.usage, "metrics": {"latencyMs": _elapsed_ms(started)}}
            writer.add(eventstream_frame("metadata", metadata))
        for part in writer.drain():
            yield part
        record.chunks_sent = deltas
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

    # -- InvokeModel (embeddings) ------------------------------------------------------------

    async def _invoke(self, request: Request, record: Received, model: str, started: float) -> Response:
        kind = model_kind(model)
        if kind == "chat":
            raise _validation(MSG_INVOKE_CHAT_MODEL)
        body = record.body
        if body is None:
            raise _validation(MSG_MALFORMED)
        if kind == "titan-embed":
            texts = [body["inputText"]] if isinstance(body.get("inputText"), str) else []
        else:
            raw_texts = body.get("texts")
            texts = [t for t in raw_texts if isinstance(t, str)] if isinstance(raw_texts, list) else []
        try:
            directives, _ = parse_directives(" ".join(texts))
        except BadRequest as exc:
            raise _validation(str(exc)) from None
        if "status" in directives:
            raise self._status_error(directives)
        answer, tokens = titan_embedding(body) if kind == "titan-embed" else cohere_embedding(body)
        delay = (directives.get("delay") or 0) / 1000
        if delay and await self._client_left_during(request, delay):
            record.disconnected = True
            return Response(status_code=499)
        record.usage = {"inputTokens": tokens}
        record.completed = True
        headers = {
            REQUEST_ID_HEADER: str(uuid.uuid4()),
            INPUT_TOKEN_HEADER: str(tokens),
            LATENCY_HEADER: str(_elapsed_ms(started)),
        }
        return _json_response(answer, headers=headers)


class _ExactHeadersSigV4(SigV4Auth):
    """SigV4 over exactly the headers the request says it signed (botocore's signer skips a few names)."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        header_map = HTTPHeaders()
        for name, value in request.headers.items():
            header_map[name.lower()] = value
        return header_map


def _elapsed_ms(started: float) -> int:
    return max(1, math.ceil((time.monotonic() - started) * 1000))


def _json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, headers=headers, media_type=JSON_CONTENT_TYPE)


def _error_response(error: BedrockError) -> Response:
    headers = {ERROR_TYPE_HEADER: error.error_type + ERROR_TYPE_SUFFIX, REQUEST_ID_HEADER: str(uuid.uuid4())}
    return _json_response({error.message_key: error.message, **error.extra}, status=error.status, headers=headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the mock Amazon Bedrock Runtime endpoint.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--session-token")
    parser.add_argument("--bearer-token", help="also accept this Bedrock API key as Authorization: Bearer")
    parser.add_argument("--model", action="append", default=[], help="one more model id to accept (repeatable)")
    args = parser.parse_args(argv)
    MockBedrock(
        args.access_key,
        args.secret_key,
        region=args.region,
        session_token=args.session_token,
        bearer_token=args.bearer_token,
        models=args.model,
        host=args.host,
        port=args.port,
    ).run()


if __name__ == "__main__":
    main()
