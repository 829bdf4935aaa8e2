"""The demo provider in process: answers, streams, limits, tools and embeddings without any network,
and the registry `reactor serve --demo` builds from it."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import msgspec
import pytest

from shared.config import load_settings
from shared.registry import load_registry
from workers.providers import KINDS, SettingError, provider_class
from workers.providers.demo import (
    DEFAULT_DIMENSIONS,
    DEMO_PROVIDER,
    DemoProvider,
    DemoSettings,
    answer_for,
    demo_overlay,
    demo_settings,
    write_demo_overlay,
)

PROMPT = "Explain Reactor.cloud in one sentence"


def provider(**table) -> DemoProvider:
    return DemoProvider(DemoSettings(kind="demo", name="demo", **table).resolve({}))


def chat(prompt: str = PROMPT, **body) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **body}


def collect(p: DemoProvider, body: dict) -> list[dict]:
    async def run() -> list[dict]:
        return [chunk async for chunk in p.stream(body)]
    return asyncio.run(run())


def test_it_is_a_kind_the_config_knows() -> None:
    assert KINDS["demo"] == "workers.providers.demo:DemoProvider"
    assert provider_class("demo") is DemoProvider


def test_answer_is_about_the_prompt_and_the_same_every_time() -> None:
    p = provider()
    first = asyncio.run(p.complete(chat()))
    again = asyncio.run(p.complete(chat()))
    text = first["choices"][0]["message"]["content"]
    assert "Reactor.cloud" in text and text.endswith(".")
    assert text == again["choices"][0]["message"]["content"]
    assert first["object"] == "chat.completion" and first["choices"][0]["finish_reason"] == "stop"
    # Usage counts words: 5 in the prompt, one per word answered.
    assert first["usage"] == {"prompt_tokens": 5, "completion_tokens": len(text.split()),
                              "total_tokens": 5 + len(text.split())}


def test_a_haiku_has_three_lines_about_the_subject() -> None:
    text = asyncio.run(provider().complete(chat("Write a haiku about backends")))["choices"][0]["message"]["content"]
    lines = text.split("\n")
    assert len(lines) == 3 and "backends" in text.lower()


def test_stream_sends_one_word_a_chunk_that_join_to_the_answer_then_usage() -> None:
    p = provider(delay_ms=0)
    whole = asyncio.run(p.complete(chat()))["choices"][0]["message"]["content"]
    chunks = collect(p, chat(stream_options={"include_usage": True}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(words) == whole and len(words) == len(whole.split())
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(words)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_stream_without_include_usage_sends_no_usage_chunk() -> None:
    chunks = collect(provider(delay_ms=0), chat())
    assert all(c["choices"] for c in chunks)


def test_delay_paces_the_stream() -> None:
    started = time.monotonic()
    collect(provider(delay_ms=10), chat(max_tokens=5))
    assert time.monotonic() - started >= 0.05


def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    p = provider(delay_ms=0)
    answer = asyncio.run(p.complete(chat(max_tokens=3)))
    assert len(answer["choices"][0]["message"]["content"].split()) == 3
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 3
    chunks = collect(p, chat(max_completion_tokens=2))
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) == 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_cuts_before_the_first_match() -> None:
    p = provider()
    whole = asyncio.run(p.complete(chat()))["choices"][0]["message"]["content"]
    answer = asyncio.run(p.complete(chat(stop=["zzz", " of "])))
    assert answer["choices"][0]["message"]["content"] == whole[: whole.index(" of ")]
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert asyncio.run(p.complete(chat(stop="Reactor")))["choices"][0]["message"]["content"] == ""


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def test_a_tool_the_prompt_names_is_called_with_empty_arguments() -> None:
    p = provider(delay_ms=0)
    answer = asyncio.run(p.complete(chat("Use get_time, please", tools=TOOLS)))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [c["function"] for c in choice["message"]["tool_calls"]] == [{"name": "get_time", "arguments": "{}"}]
    streamed = collect(p, chat("call get_weather", tools=TOOLS))
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in streamed if c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["index"] == 0
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tools_are_not_called_unless_asked() -> None:
    p = provider()
    assert asyncio.run(p.complete(chat(tools=TOOLS)))["choices"][0]["finish_reason"] == "stop"
    assert asyncio.run(p.complete(chat("use get_time", tools=TOOLS, tool_choice="none")))["choices"][0][
        "finish_reason"] == "stop"
    forced = asyncio.run(p.complete(chat(tools=TOOLS, tool_choice="required")))
    assert forced["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_tool_results_are_quoted_in_the_next_answer() -> None:
    body = {"model": "m", "messages": [
        {"role": "user", "content": "use get_weather"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
    ], "tools": TOOLS}
    assert "sunny, 21 C" in answer_for(body).text


def test_embeddings_are_deterministic_unit_vectors_of_the_asked_size() -> None:
    p = provider()
    answer = asyncio.run(p.embed({"model": "text-embedding-3-small", "input": ["Hello world", "Bye"]}))
    vectors = [item["embedding"] for item in answer["data"]]
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert all(len(v) == DEFAULT_DIMENSIONS for v in vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-9) for v in vectors)
    assert vectors[0] != vectors[1]
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = asyncio.run(p.embed({"model": "x", "input": "Hello world"}))
    assert again["data"][0]["embedding"] == vectors[0]
    short = asyncio.run(p.embed({"model": "x", "input": [[1, 2, 3]], "dimensions": 256}))
    assert len(short["data"][0]["embedding"]) == 256
    assert len(asyncio.run(provider(dimensions=64).embed({"model": "x", "input": "a"}))["data"][0]["embedding"]) == 64


def test_bad_table_values_name_the_key() -> None:
    with pytest.raises(SettingError) as info:
        DemoSettings(kind="demo", name="demo", delay_ms=-1).resolve({})
    assert info.value.key == "delay_ms"
    with pytest.raises(SettingError):
        DemoSettings(kind="demo", name="demo", dimensions=0).resolve({})


def test_demo_overlay_routes_every_model_to_the_demo_and_keeps_prices_and_aliases() -> None:
    overlay = '[aliases."mine"]\nstrategy = "first"\ntargets = ["gpt-4o"]\n'
    configured = load_registry(overlay, "ai-models.toml")
    demo = load_registry(demo_overlay(configured), "demo.toml")
    assert demo.models.keys() == configured.models.keys()
    for model in demo.models.values():
        assert [(r.provider, r.model) for r in model.routes] == [(DEMO_PROVIDER, model.id)]
        before = configured.models[model.id]
        assert msgspec.structs.replace(model, routes=before.routes) == before
    assert demo.aliases["mine"].targets == ("gpt-4o",)
    # The page's example aliases come along, so its alias commands work in the demo.
    assert demo.aliases["reasoning/cheapest"].targets == ("gpt-4o-mini", "claude-3-haiku")


def test_demo_settings_serve_only_the_demo_through_the_written_overlay(tmp_path: Path) -> None:
    (tmp_path / "reactor.toml").write_text(
        '[gateway]\ndata_dir = "./data"\n[gateway.providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n')
    settings = load_settings(tmp_path / "reactor.toml", env={})
    path = asyncio.run(write_demo_overlay(settings))
    demo = demo_settings(settings)
    assert list(demo.enabled_providers) == [DEMO_PROVIDER]
    assert demo.registry_overlay == path and path.is_relative_to(tmp_path / "data")
    assert demo.enabled_providers[DEMO_PROVIDER].missing_credentials() is None
    registry = load_registry(path.read_text(), str(path)).restricted_to(list(demo.enabled_providers))
    assert "claude-3-5-sonnet" in registry.models and "titan-embed-text-v2" in registry.models
