"""A provider that answers locally (``kind = "demo"``), so the gateway can be tried without any key.

Nothing leaves the process: every chat model gets a short answer made from the prompt by a
deterministic generator, and every embeddings model a deterministic unit vector. The answers are
plausible in shape, not in substance; what they exercise is the rest of the gateway (queueing,
streaming, usage metering, aliases, the CLI and SDKs) end to end.

Its table (every key optional)::

    [gateway.providers.demo]
    kind = "demo"
    delay_ms = 20        # pause between streamed words, so a stream looks like one
    dimensions = 1536    # embedding size when the request does not ask for one

What it answers:

- Chat: one choice (``n`` is ignored). A greeting gets a greeting that says what answers; a
  prompt asking for a haiku or poem gets three short lines; any other gets one or two sentences
  about the prompt's main words. Streams send one word
  per chunk. ``max_tokens`` (or ``max_completion_tokens``) cuts the answer to that many words
  (finish ``length``); a ``stop`` sequence cuts it before the first match (finish ``stop``).
- Usage counts words, a stand-in for a tokenizer: prompt = words in every message, completion =
  words answered.
- Tools: when the request offers tools, it calls one with ``{}`` as arguments if ``tool_choice``
  names it or is ``"required"``, or if the last user message names a tool (the first named one
  wins); otherwise it answers in text. After tool results it answers with a sentence quoting them.
- Embeddings: a unit vector seeded by the input, ``dimensions`` long when the request asks.

``reactor serve --demo`` (``api/cli.py``) runs a whole gateway on it: :func:`write_demo_overlay`
writes a registry overlay that routes every model and alias of the configured registry to this
provider (plus the product page's example aliases, so its alias commands work too), and
:func:`demo_settings` switches every other provider table off, so API and worker need no key and
make no upstream call. The overlay is written once, at start-up: edits to your own overlay show
in the demo at its next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import msgspec

from shared.errors import InvalidRequest

from .base import Provider, ProviderSettings, SettingError
from .http import UpstreamHTTP

# The provider table `reactor serve --demo` adds.
DEMO_PROVIDER = "demo"
DEFAULT_DELAY_MS = 20
DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 8192
# Where in the data directory `reactor serve --demo` keeps the overlay it routes with.
DEMO_OVERLAY = Path("demo") / "ai-models.demo.toml"
# The product page's example aliases, added to the demo's registry unless it defines these names,
# so the page's alias commands work in the demo too: (name, strategy, targets).
DEMO_ALIASES = (
    ("reasoning/cheapest", "cheapest", ("gpt-4o-mini", "claude-3-haiku")),
    ("reasoning/best", "first", ("gpt-4", "claude-3-5-sonnet")),
)
# How many of the prompt's words an answer is about.
TOPIC_WORDS = 3
# Longest quote of a tool result in the answer that follows it, in characters.
TOOL_RESULT_QUOTE = 120

_STOPWORDS = frozenset("""
a about above after again all am an and any are as at be because been before being below between both but by
can could did do does doing down during each explain few for from further give had has have having he her here
hers him his how i if in into is it its itself just let like me more most my no nor not now of off on once one
only or other our out over own please same sentence sentences she short should so some such tell than that the
their them then there these they this those through to too under until up very was we were what when where which
while who whom why will with would write you your yours briefly describe summarize summarise quick
""".split())

_GREETINGS = frozenset({"hello", "hi", "hey", "hiya", "greetings", "howdy", "yo", "ping", "test", "there", "world", "all",
                        "everyone", "again"})
_GREETING_ANSWER = ("Hello! I am the demo provider of Reactor Gateway: I answer on this machine, without a model, "
                    "so every reply is short and made up.")
_POEM = re.compile(r"\b(haiku|poem|verse|limerick|sonnet)s?\b", re.IGNORECASE)

_SENTENCES = (
    "{Topic} is best understood as a small set of clear ideas: what it is for, how its parts fit together, "
    "and what it costs to run.",
    "In short, {topic} comes down to doing one job well, keeping the moving parts few, and measuring what matters.",
    "{Topic} works by breaking a big problem into simple steps, each of them easy to test and to explain.",
    "The key thing about {topic} is that it turns something complicated into something you can reason about "
    "and rely on.",
)
_FOLLOW_UPS = (
    "Start small, measure, and grow it from there.",
    "The details matter less than getting the basics right.",
    "Everything else follows from that.",
    "",
)
_HAIKU = (
    ("Quiet {a} hum", "requests drift through the night air", "answers find their way"),
    ("{A} at dawn", "small queues fill and empty out", "the logs keep their peace"),
    ("Soft light on {a}", "one packet, then a thousand", "nothing is wasted"),
)


class DemoSettings(ProviderSettings, frozen=True, kw_only=True):
    """``delay_ms`` between streamed words and the default embedding ``dimensions``; no credentials."""

    delay_ms: int = DEFAULT_DELAY_MS
    dimensions: int = DEFAULT_DIMENSIONS

    # A table the user wrote with `kind = "demo"` is meant to be used.
    enabled_by_default: ClassVar[bool] = True

    def resolve(self, env: Mapping[str, str]) -> Self:
        if self.delay_ms < 0:
            raise SettingError("delay_ms", f"expected 0 or more milliseconds, got {self.delay_ms}")
        if not 1 <= self.dimensions <= MAX_DIMENSIONS:
            raise SettingError("dimensions", f"expected 1 to {MAX_DIMENSIONS}, got {self.dimensions}")
        return super().resolve(env)


class Answer(msgspec.Struct):
    """What the demo provider says to one request, before it is written as a body or chunks."""

    pieces: list[str]  # one word (with its trailing whitespace) each; joined, the text
    tool_calls: list[dict[str, Any]]
    finish: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> dict[str, Any]:
        completion = len(self.pieces) + len(self.tool_calls)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


class DemoProvider(Provider):
    kind = "demo"
    settings_type = DemoSettings
    settings: DemoSettings

    def __init__(self, settings: DemoSettings, http: UpstreamHTTP | None = None, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(settings, http, secrets)  # type: ignore[arg-type]  # never used: no network

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = answer_for(body)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text if not answer.tool_calls else None}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        return {
            **_envelope(body, "chat.completion"),
            "choices": [{"index": 0, "message": message, "finish_reason": answer.finish, "logprobs": None}],
            "usage": answer.usage(),
        }

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        answer = answer_for(body)
        envelope = _envelope(body, "chat.completion.chunk")
        delay = self.settings.delay_ms / 1000

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        yield chunk({"role": "assistant", "content": ""})
        for piece in answer.pieces:
            if delay:
                await asyncio.sleep(delay)
            yield chunk({"content": piece})
        for index, call in enumerate(answer.tool_calls):
            yield chunk({"tool_calls": [{"index": index, **call}]})
        yield chunk({}, answer.finish)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield {**envelope, "choices": [], "usage": answer.usage()}

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = _embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions") or self.settings.dimensions
        if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise InvalidRequest(f"dimensions must be a whole number from 1 to {MAX_DIMENSIONS}.", param="dimensions")
        data = [{"object": "embedding", "index": i, "embedding": embedding_vector(item, dimensions)}
                for i, item in enumerate(inputs)]
        tokens = sum(len(item) if isinstance(item, list) else len(item.split()) for item in inputs)
        return {"object": "list", "data": data, "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# --- the generator --------------------------------------------------------------------------------


def answer_for(body: dict[str, Any]) -> Answer:
    """The demo's answer to a chat request body: deterministic in the body's messages and limits."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list.", param="messages")
    texts = [_message_text(m) for m in messages]
    prompt_tokens = sum(len(t.split()) for t in texts)
    last_user = next((_message_text(m) for m in reversed(messages)
                      if isinstance(m, dict) and m.get("role") == "user" and _message_text(m)), "")
    tool_results = _trailing_tool_results(messages)
    if tool_results:
        quoted = "; ".join(r[:TOOL_RESULT_QUOTE] for r in tool_results)
        return _limited(f"Here is what the tools returned: {quoted}", body, prompt_tokens)
    tool = _tool_to_call(body, last_user)
    if tool is not None:
        call = {"id": f"call_demo_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": tool, "arguments": "{}"}}
        return Answer([], [call], "tool_calls", prompt_tokens)
    return _limited(compose(last_user), body, prompt_tokens)


def compose(prompt: str) -> str:
    """A short answer about ``prompt``: a haiku when it asks for a poem, else a sentence or two."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    said = re.findall(r"[a-z]+", prompt.lower())
    if said and all(w in _GREETINGS for w in said):
        return _GREETING_ANSWER
    words = [w for w in re.findall(r"[A-Za-z][\w.+-]*[A-Za-z0-9]|[A-Za-z]", prompt)
             if w.lower() not in _STOPWORDS and not _POEM.fullmatch(w)]
    topic_words = words[:TOPIC_WORDS] or ["this"]
    if _POEM.search(prompt):
        subject = topic_words[-1].lower()
        lines = _HAIKU[seed % len(_HAIKU)]
        return "\n".join(line.format(a=subject, A=subject.capitalize()) for line in lines)
    topic = " ".join(topic_words)
    sentence = _SENTENCES[seed % len(_SENTENCES)].format(topic=topic, Topic=topic[:1].upper() + topic[1:])
    follow = _FOLLOW_UPS[(seed >> 8) % len(_FOLLOW_UPS)]
    return f"{sentence} {follow}".strip()


def _limited(text: str, body: dict[str, Any], prompt_tokens: int) -> Answer:
    """``text`` cut at the first stop sequence, then to ``max_tokens`` words."""
    finish = "stop"
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    pieces = re.findall(r"\S+\s*", text)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces = pieces[:limit]
        finish = "length"
    return Answer(pieces, [], finish, prompt_tokens)


def _tool_to_call(body: dict[str, Any], last_user: str) -> str | None:
    """The name of the tool to call, or None to answer in text (see the module docstring)."""
    names = [t["function"]["name"] for t in body.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
    choice = body.get("tool_choice")
    if not names or choice == "none":
        return None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if named in names:
            return named
    if choice == "required":
        return names[0]
    mentioned = [(last_user.find(name), name) for name in names if name in last_user]
    return min(mentioned)[1] if mentioned else None


def _trailing_tool_results(messages: list[Any]) -> list[str]:
    results: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.insert(0, _message_text(message))
    return results


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _envelope(body: dict[str, Any], object_: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-demo{uuid.uuid4().hex[:16]}", "object": object_, "created": int(time.time()),
            "model": body.get("model"), "system_fingerprint": "fp_demo"}


def _embedding_inputs(raw: Any) -> list[str] | list[list[int]]:
    """The four shapes OpenAI accepts for ``input``, as a list of inputs."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, str) for x in raw):
            return raw
        if all(isinstance(x, int) for x in raw):
            return [raw]
        if all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw):
            return raw
    raise InvalidRequest("input must be a string, a list of strings, a list of ints or a list of int lists.",
                         param="input")


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector that depends only on ``item`` and ``dimensions``."""
    rng = random.Random(hashlib.sha256(msgspec.json.encode([item, dimensions])).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


# --- `reactor serve --demo` -------------------------------------------------------------------------


def demo_overlay(registry: Any) -> str:
    """An overlay giving every model and alias of ``registry`` (a :class:`shared.registry.Registry`)
    one route, to the demo provider, with the model's other fields kept as they are; the page's
    example aliases (:data:`DEMO_ALIASES`) are added where the registry has none by their names."""
    lines = ["# Written by `reactor serve --demo`: every model routes to the local demo provider.", ""]
    for model in registry.models.values():
        lines.append(f"[models.{_toml_string(model.id)}]")
        lines.append(f"owned_by = {_toml_string(model.owned_by)}")
        lines.append(f"created = {model.created}")
        lines.append(f"context_window = {model.context_window}")
        for field in ("input_price_per_mtok", "output_price_per_mtok", "cached_input_price_per_mtok",
                      "cache_write_price_per_mtok", "latency_ms_hint"):
            value = getattr(model, field)
            if value is not None:
                lines.append(f"{field} = {float(value)!r}")
        lines.append(f"capabilities = [{', '.join(_toml_string(c) for c in sorted(model.capabilities))}]")
        lines.append(f"routes = [{{ provider = {_toml_string(DEMO_PROVIDER)}, model = {_toml_string(model.id)} }}]")
        lines.append("")
    aliases = [(a.name, a.strategy, a.targets) for a in registry.aliases.values()]
    aliases += [(name, strategy, targets) for name, strategy, targets in DEMO_ALIASES
                if name not in registry.aliases and name not in registry.models
                and all(t in registry.models for t in targets)]
    for name, strategy, targets in aliases:
        lines.append(f"[aliases.{_toml_string(name)}]")
        lines.append(f"strategy = {_toml_string(strategy)}")
        lines.append(f"targets = [{', '.join(_toml_string(t) for t in targets)}]")
        lines.append("")
    return "\n".join(lines)


async def write_demo_overlay(settings: Any) -> Path:
    """Write the demo overlay for the registry ``settings`` configure, every model included whatever
    providers the settings enable; returns its path (in the data directory).

    :raises shared.registry.RegistryError: the configured overlay is unreadable or invalid.
    """
    from shared.registry import RegistryError, fetch_overlay, load_registry, read_overlay_file

    text, source = None, "<defaults>"
    if settings.registry_overlay is not None:
        source = str(settings.registry_overlay)
        text = read_overlay_file(settings.registry_overlay)
    elif settings.registry_url:
        source = settings.registry_url
        try:
            text = await fetch_overlay(settings.registry_url, settings.registry_timeout)
        except RegistryError:
            if not settings.registry_optional:
                raise
    path = demo_overlay_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(demo_overlay(load_registry(text, source)))
    tmp.replace(path)
    return path


def demo_overlay_path(settings: Any) -> Path:
    return Path(settings.data_dir) / DEMO_OVERLAY


def demo_settings(settings: Any) -> Any:
    """``settings`` (a :class:`shared.config.Settings`) serving only the demo provider, through the
    overlay :func:`write_demo_overlay` wrote. A ``[gateway.providers.demo]`` table of kind demo in
    reactor.toml is kept (its ``delay_ms``, ``dimensions``); every other table is switched off."""
    providers = {name: msgspec.structs.replace(p, enabled=False) for name, p in settings.providers.items()}
    own = settings.providers.get(DEMO_PROVIDER)
    if own is not None and own.kind == DemoProvider.kind:
        providers[DEMO_PROVIDER] = msgspec.structs.replace(own, enabled=True)
    else:
        providers[DEMO_PROVIDER] = DemoSettings(kind=DemoProvider.kind, name=DEMO_PROVIDER).resolve({})
    return msgspec.structs.replace(settings, providers=providers, registry_overlay=demo_overlay_path(settings),
                                   registry_url=None)


def _toml_string(value: str) -> str:
    # JSON's escapes are all valid in a TOML basic string.
    return msgspec.json.encode(value).decode()
