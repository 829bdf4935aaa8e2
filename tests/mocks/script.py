"""What every mock upstream answers, decided once; each provider's mock only renders it in its wire format.

A mock turns its request into a :class:`Conversation` (the neutral view: texts, tool results,
tool names, limits), asks :func:`plan` what to answer, and writes the resulting :class:`Plan` as
OpenAI chunks, Converse events or whatever its provider speaks. So the conformance suite can drive
every provider with the same prompts and expect the same answers.

Tests steer each answer with directives in the last user text, e.g. ``"hi #chunks=5 #delay=20"``:

- ``#chunks=N``: answer ``tok0 tok1 ... tok{N-1} `` (one token, one content delta each).
- ``#tools`` / ``#tools=N``: call N tools (default 1), in parallel in one turn; call ``i`` uses the
  request's tool ``i % len(tools)`` with arguments ``{"city": CITIES[i]}``.
- ``#delay=MS``: wait before each delta (and before a non-streamed answer).
- ``#status=CODE``: answer that HTTP error in the provider's own error shape.
- ``#midstream_error``: stream ``MIDSTREAM_ERROR_AFTER`` deltas, then the provider's in-stream error.
- ``#hang``: stream one delta (or nothing, non-streamed), then wait until the mock stops.
- ``#no_usage``: leave usage out. ``#cached=N``: report N cached prompt tokens.
- ``#exception=NAME``: with ``#status`` or ``#midstream_error``, the provider's own error type to
  send (e.g. Bedrock's ``ModelNotReadyException``); mocks without error types ignore it.
- ``#error_in_200``, ``#echo_body``: provider-specific; a mock may ignore them.
- ``#fault=NAME``: a broken upstream (``hang_head``, ``truncate``, ``malformed``, ``close``,
  ``bytewise``, ``html``); provider-specific, see the mock's ``FAULTS``; a mock may ignore it.

Without directives the answer is ``REPLY_PREFIX`` + the user's text. When the conversation ends
with tool results the answer is ``TOOL_RESULT_PREFIX`` + the results joined by ``"; "``, so a test
sees that the model got them. ``max_tokens`` cuts the answer to that many tokens (finish
``length``); a ``stop`` sequence cuts it before the first match (finish ``stop``).

Token counts are a deterministic stand-in for a tokenizer: prompt = words in every text + 3 per
message; completion = one per delta (``TOOL_COMPLETION_TOKENS`` per tool call).
"""

from __future__ import annotations

import hashlib
import math
import random
import re

import msgspec
from dataclasses import dataclass, field
from typing import Any, Literal

DIRECTIVES = frozenset(
    {"chunks", "delay", "hang", "status", "midstream_error", "error_in_200", "no_usage", "tools", "echo_body",
     "cached", "exception", "fault"}
)
_DIRECTIVE_RE = re.compile(r"(?<!\S)#(" + "|".join(sorted(DIRECTIVES)) + r")(?:=(\S*))?(?!\S)")
# Directives that carry a number; the rest are bare flags (``tools`` takes an optional one).
_INT_DIRECTIVES = frozenset({"chunks", "delay", "status", "cached"})
_OPTIONAL_INT_DIRECTIVES = frozenset({"tools"})
_STRING_DIRECTIVES = frozenset({"exception", "fault"})

REPLY_PREFIX = "Hello from mock: "
TOOL_RESULT_PREFIX = "Tool results: "
CITIES = ("Oslo", "Paris", "Lima", "Kyoto", "Accra", "Quito", "Hanoi", "Perth")
TOOL_COMPLETION_TOKENS = 7
TOOL_ARGUMENT_FRAGMENTS = 4
MIDSTREAM_ERROR_AFTER = 2

Finish = Literal["stop", "length", "tool_calls"]


class BadRequest(Exception):
    """The request can't be answered as asked; each mock renders it as a 400 in its own shape."""


@dataclass
class Conversation:
    """A request in neutral terms.

    :param texts: the text of every message, system included, in order (for prompt tokens).
    :param last_user_text: the text of the last user message that has text; directives live there.
    :param tool_results: the results of the trailing tool-result messages, when the conversation
        ends with them (then the answer reports them instead of obeying directives).
    :param tool_names: the names of the tools the request offers, in order.
    :param max_tokens: the completion limit, if any.
    :param stop: stop sequences.
    """

    texts: list[str]
    last_user_text: str
    tool_results: list[str] = field(default_factory=list)
    tool_names: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class ToolCallPlan:
    id: str
    name: str
    arguments: str  # a JSON string, as OpenAI sends it

    def fragments(self) -> list[str]:
        """The arguments in ``TOOL_ARGUMENT_FRAGMENTS`` pieces that join back to them."""
        return split(self.arguments, TOOL_ARGUMENT_FRAGMENTS)


@dataclass
class Plan:
    directives: dict[str, Any]
    pieces: list[str]  # content deltas, joined = the answer's text
    tool_calls: list[ToolCallPlan]
    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    delay: float  # seconds before each delta

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> dict:
        """OpenAI's usage object for this answer."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }


def parse_directives(text: str) -> tuple[dict[str, Any], str]:
    """Split ``text`` into its directives and the remaining text (whitespace collapsed).

    Numbers are parsed here so a typo fails loudly as a 400.
    """
    found: dict[str, Any] = {}
    for match in _DIRECTIVE_RE.finditer(text):
        name, value = match.group(1), match.group(2)
        if name in _STRING_DIRECTIVES:
            if not value:
                raise BadRequest(f"directive #{name} needs a value, e.g. #{name}=ThrottlingException")
            found[name] = value
        elif name in _INT_DIRECTIVES or (name in _OPTIONAL_INT_DIRECTIVES and value is not None):
            if value is None or not value.isdigit():
                raise BadRequest(f"directive #{name} needs a non-negative integer, got {value!r}")
            found[name] = int(value)
        else:
            found[name] = None
    return found, " ".join(_DIRECTIVE_RE.sub(" ", text).split())


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector that depends only on ``item`` and ``dimensions``; exposed so tests can predict it."""
    rng = random.Random(hashlib.sha256(msgspec.json.encode(item)).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def split(text: str, parts: int) -> list[str]:
    size = max(1, math.ceil(len(text) / parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def tool_arguments(index: int) -> str:
    return '{"city": "%s"}' % CITIES[index % len(CITIES)]


def plan(conversation: Conversation, *, tool_call_id: str = "call_mock{i}", echo: str | None = None) -> Plan:
    """What to answer.

    :param tool_call_id: a format string with ``{i}``, so each provider's ids look like its own.
    :param echo: the request body as text, answered as is under ``#echo_body``.
    """
    directives, text = parse_directives(conversation.last_user_text)
    prompt_tokens = sum(len(t.split()) for t in conversation.texts) + 3 * len(conversation.texts)
    cached = directives.get("cached") or 0
    delay = (directives.get("delay") or 0) / 1000
    tool_calls: list[ToolCallPlan] = []
    finish: Finish = "stop"
    if conversation.tool_results:
        content = TOOL_RESULT_PREFIX + "; ".join(conversation.tool_results)
    elif "tools" in directives:
        if not conversation.tool_names:
            raise BadRequest("#tools needs at least one tool in the request")
        count = directives["tools"] if directives["tools"] is not None else 1
        names = conversation.tool_names
        tool_calls = [ToolCallPlan(tool_call_id.format(i=i), names[i % len(names)], tool_arguments(i))
                      for i in range(count)]
        content = ""
        finish = "tool_calls"
    elif "echo_body" in directives and echo is not None:
        content = echo
    elif "chunks" in directives:
        content = "".join(f"tok{i} " for i in range(directives["chunks"] or 0))
    else:
        content = REPLY_PREFIX + text
    if conversation.stop and content:
        cut = min((i for i in (content.find(s) for s in conversation.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            content = content[:cut]
    # One word plus its trailing whitespace per delta, so the deltas join back to `content`.
    pieces = re.findall(r"\S+\s*", content)
    if content and not pieces:
        pieces = [content]
    if conversation.max_tokens is not None and len(pieces) > conversation.max_tokens:
        pieces = pieces[: conversation.max_tokens]
        finish = "length"
    completion = len(pieces) + TOOL_COMPLETION_TOKENS * len(tool_calls)
    return Plan(directives, pieces, tool_calls, finish, prompt_tokens, completion, cached, delay)
