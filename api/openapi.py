"""``GET /ai/v1/openapi.json``: the API as an OpenAPI 3.1 document, built from the code's own types.

The request schemas are the msgspec Structs the front door validates with (``shared/wire.py``,
``api/responses.py``), and the answers are the Structs the routes encode (``api/catalog.py``,
``shared/errors.py``, ...), turned into JSON Schema by ``msgspec.json.schema_components``; so
the document cannot promise what the code does not do. Where a route builds its answer as a
dict (the relayed chat completion, the translated Responses and Messages objects), a Struct
here describes it: only the fields every such answer has, and ``tests/test_openapi.py`` checks
the live answers against them. The document is built once per process.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response

from shared import __version__
from shared.errors import ErrorEnvelope
from shared.wire import MAX_COUNT, ChatRequest, EmbeddingsRequest

from .catalog import Health, ModelList, ModelObject
from .fleet_api import Fleet
from .responses import ResponsesRequest
from .usage_api import GROUPINGS, MAX_DAYS

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{name}"


# -------------------------------------------------------------------------------------------
# Request and answer shapes that have no Struct of their own in the routes


class MessagesRequest(Struct):
    """An Anthropic Messages request, as ``api/messages.py`` reads it; other fields are ignored.

    The fields typed ``Any`` are read leniently: ``tools`` and ``stop_sequences`` are ignored when
    empty (or false), ``metadata`` unless it holds a string ``user_id``, and any true ``stream``
    asks for a stream.
    """

    model: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: Any = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: Any = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    metadata: Any = None
    stream: Any = None


class CountTokensRequest(Struct):
    """What ``count_tokens`` reads of a Messages request: the rest is counted if present."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[dict[str, Any]], Meta(min_length=1)]


class ChatCompletion(Struct):
    """A ``chat.completion``, as the serving upstream wrote it (or its provider's translation)."""

    id: str
    object: str
    model: str
    choices: list[dict[str, Any]]
    created: int | None = None
    usage: dict[str, Any] | None = None


class Embedding(Struct):
    object: str
    index: int
    embedding: list[float] | str  # a string when encoding_format is base64


class EmbeddingList(Struct):
    object: str
    data: list[Embedding]
    model: str
    usage: dict[str, Any] | None = None


class ResponseObject(Struct):
    """A Responses API ``response`` (stored ones are returned as they were sent)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ResponseDeleted(Struct):
    id: str
    object: Literal["response.deleted"]
    deleted: bool


class AnthropicMessage(Struct):
    """An Anthropic ``message``."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: dict[str, int]
    stop_sequence: str | None = None


class TokenCount(Struct):
    input_tokens: int


class AnthropicErrorBody(Struct):
    type: str
    message: str


class AnthropicError(Struct):
    """An error in Anthropic's shape, on ``/ai/v1/messages*``."""

    type: Literal["error"]
    error: AnthropicErrorBody


class UsageCounts(Struct):
    requests: int
    tokens_in: int
    tokens_out: int
    cost_usd: float


class UsageReport(Struct):
    """What the caller used between two UTC days, in total and grouped (each group also names its key)."""

    object: Literal["usage"]
    since: str
    until: str
    by: str
    user: str | None
    model: str | None
    totals: UsageCounts
    groups: list[dict[str, Any]]


SCHEMAS: tuple[type, ...] = (
    ChatRequest, EmbeddingsRequest, ResponsesRequest, MessagesRequest, CountTokensRequest,
    ChatCompletion, EmbeddingList, ResponseObject, ResponseDeleted, AnthropicMessage, TokenCount,
    ModelList, ModelObject, Health, UsageReport, Fleet, ErrorEnvelope, AnthropicError,
)


# -------------------------------------------------------------------------------------------
# Paths


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": REF.format(name=kind.__name__)}


def _json(kind: type, description: str, stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(kind)}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
        description += " Server-sent events instead when the request asked for a stream."
    return {"description": description, "content": content}


# The statuses a route's refusals and failures come with (each in the error envelope).
ERRORS = {
    "400": "The request is malformed or invalid: not a JSON object, a field of the wrong type or out of range, "
           "nesting too deep, an integer beyond 64 bits, bytes that are not UTF-8.",
    "401": "Missing, malformed, expired or foreign credentials.",
    "403": "The credentials may not do this.",
    "404": "No such model, route or object.",
    "405": "The method is not allowed on this path.",
    "413": "The request body is larger than the gateway's limit.",
    "429": "A quota or rate limit was reached.",
    "502": "The upstream provider failed or refused the request.",
    "503": "No worker serves the model now, every worker is busy, or Redis is unreachable.",
    "504": "The upstream took longer than the request timeout.",
}
INFERENCE = ("400", "401", "404", "405", "413", "429", "502", "503", "504")


def _errors(codes: tuple[str, ...], envelope: type = ErrorEnvelope) -> dict[str, Any]:
    out = {code: {"$ref": f"#/components/responses/{envelope.__name__}{code}"} for code in codes}
    out["default"] = {"$ref": f"#/components/responses/{envelope.__name__}Default"}
    return out


def _post(summary: str, request: type, answer: type, stream: bool, errors: dict[str, Any],
          security: list[dict[str, list]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": {"200": _json(answer, "The answer.", stream), **errors},
    }
    if security is not None:
        op["security"] = security
    return op


BEARER = [{"bearerAuth": []}]
BEARER_OR_KEY = [{"bearerAuth": []}, {"apiKeyAuth": []}]


def _paths() -> dict[str, Any]:
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    response_param = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    # An empty value counts as absent: the default applies.
    date = {"type": "string", "pattern": r"^(\d{4}-\d{2}-\d{2})?$"}
    usage_params = [
        {"name": "since", "in": "query", "schema": date, "description": "First UTC day (default: 30 days back)."},
        {"name": "until", "in": "query", "schema": date, "description": "Last UTC day (default: today)."},
        {"name": "user", "in": "query", "schema": {"type": "string"},
         "description": "Another user's usage (admin tokens only)."},
        {"name": "model", "in": "query", "schema": {"type": "string"}},
        {"name": "by", "in": "query", "schema": {"enum": [*GROUPINGS, ""]}, "description": "Grouping (default: day)."},
    ]
    return {
        "/health": {"get": {
            "summary": "Whether the gateway can serve: Redis, and live workers per provider.", "security": [],
            "responses": {"200": _json(Health, "Serving (ok or degraded)."),
                          "503": _json(Health, "Not serving: Redis unreachable or no live worker."),
                          **_errors(("405",))}}},
        "/models": {"get": {
            "summary": "The models and aliases this gateway serves.", "security": BEARER_OR_KEY,
            "responses": {"200": _json(ModelList, "The list."), **_errors(("401", "405"))}}},
        "/models/{model}": {"get": {
            "summary": "One model or alias.", "security": BEARER_OR_KEY, "parameters": [model_param],
            "responses": {"200": _json(ModelObject, "The model."), **_errors(("401", "404", "405"))}}},
        "/chat/completions": {"post": _post("OpenAI chat completions.", ChatRequest, ChatCompletion, True,
                                            _errors(INFERENCE))},
        "/embeddings": {"post": _post("OpenAI embeddings.", EmbeddingsRequest, EmbeddingList, False,
                                      _errors(INFERENCE))},
        "/responses": {"post": _post("The OpenAI Responses API, served through chat completions.", ResponsesRequest,
                                     ResponseObject, True, _errors(INFERENCE))},
        "/responses/{response_id}": {
            "get": {"summary": "A stored response.", "parameters": [response_param],
                    "responses": {"200": _json(ResponseObject, "The response."),
                                  **_errors(("400", "401", "404", "405", "503"))}},
            "delete": {"summary": "Delete a stored response.", "parameters": [response_param],
                       "responses": {"200": _json(ResponseDeleted, "Deleted."),
                                     **_errors(("401", "404", "405", "503"))}},
        },
        "/messages": {"post": _post("The Anthropic Messages API, served through chat completions.", MessagesRequest,
                                    AnthropicMessage, True, _errors(INFERENCE, AnthropicError), BEARER_OR_KEY)},
        "/messages/count_tokens": {"post": _post(
            "An over-estimate of a Messages request's input tokens, without asking any upstream.", CountTokensRequest,
            TokenCount, False, _errors(("400", "401", "404", "405", "413"), AnthropicError), BEARER_OR_KEY)},
        "/usage": {"get": {
            "summary": f"The caller's usage per day, model, user or provider (at most {MAX_DAYS} days).",
            "security": BEARER_OR_KEY, "parameters": usage_params,
            "responses": {"200": _json(UsageReport, "The report."), **_errors(("400", "401", "403", "405", "503"))}}},
        "/fleet": {"get": {
            "summary": "Worker pools, queues and cooling routes (admin tokens only).",
            "responses": {"200": _json(Fleet, "The fleet now."), **_errors(("401", "403", "405", "503"))}}},
        "/openapi.json": {"get": {
            "summary": "This document.", "security": [],
            "responses": {"200": {"description": "An OpenAPI 3.1 document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(("405",))}}},
    }


def _responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for envelope, where in ((ErrorEnvelope, "OpenAI's error shape"), (AnthropicError, "Anthropic's error shape")):
        for code, text in (*ERRORS.items(), ("Default", "Any other failure.")):
            out[f"{envelope.__name__}{code}"] = {"description": f"{text} ({where}.)",
                                                 "content": {"application/json": {"schema": _ref(envelope)}}}
    return out


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/ai/v1``."""
    _, components = msgspec.json.schema_components(SCHEMAS, ref_template=REF)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Reactor Gateway", "version": __version__,
                 "description": "An OpenAI- and Anthropic-compatible LLM gateway. Errors come in OpenAI's shape "
                                "`{\"error\": {...}}`, and in Anthropic's on `/messages*`."},
        "servers": [{"url": "/ai/v1"}],
        "security": BEARER,
        "paths": _paths(),
        "components": {
            "schemas": components,
            "responses": _responses(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key",
                               "description": "The same JWT, as Anthropic's clients send it."},
            },
        },
    }


@cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


async def openapi(request: Request) -> Response:
    return Response(_encoded(), media_type="application/json")
