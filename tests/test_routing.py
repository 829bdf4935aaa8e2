import asyncio
import itertools
import random

import pytest

from shared.errors import InvalidRequest, ModelNotFound
from shared.registry import Registry, load_registry
from shared.routing import order_models, plan
from shared.wire import Target

OVERLAY = """\
[models."gpt-4o-mini"]
routes = [
  { provider = "openrouter", model = "openai/gpt-4o-mini" },
  { provider = "local", model = "mini-on-vllm" },
]

[models."local-llm"]
routes = [{ provider = "local", model = "Qwen/Qwen2.5-7B-Instruct" }]
capabilities = ["chat", "streaming"]

[models."local-twin"]
routes = [{ provider = "local", model = "twin" }]
capabilities = ["chat"]

[aliases."team/first"]
strategy = "first"
targets = ["gpt-4", "claude-3-haiku", "gpt-4o-mini"]

[aliases."team/cheapest"]
strategy = "cheapest"
targets = ["gpt-4", "claude-3-haiku", "gpt-4o-mini"]

[aliases."team/free"]
strategy = "cheapest"
targets = ["local-twin", "gpt-4", "local-llm"]

[aliases."team/rr"]
strategy = "round_robin"
targets = ["gpt-4", "claude-3-haiku", "claude-3-5-sonnet"]

[aliases."team/random"]
strategy = "random"
targets = ["gpt-4", "claude-3-haiku", "claude-3-5-sonnet", "gpt-4o"]

[aliases."team/fastest"]
strategy = "fastest"
targets = ["local-llm", "gpt-4", "claude-3-5-sonnet", "claude-3-haiku", "gpt-4o-mini"]

[aliases."team/mixed"]
strategy = "round_robin"
targets = ["text-embedding-3-small", "gpt-4", "text-embedding-3-large", "claude-3-haiku"]
"""


class FakeCounter:
    """Stands in for Redis INCR: one counter per alias, starting at 1."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.calls: list[str] = []

    async def __call__(self, name: str) -> int:
        self.calls.append(name)
        self.values[name] = self.values.get(name, 0) + 1
        return self.values[name]


@pytest.fixture(scope="module")
def registry() -> Registry:
    # As a gateway with only these two providers enabled sees it.
    return load_registry(OVERLAY, "test-overlay.toml").restricted_to(["openrouter", "local"])


@pytest.fixture
def counter() -> FakeCounter:
    return FakeCounter()


def run_plan(registry: Registry, name: str, counter: FakeCounter, capability: str = "chat") -> tuple[str | None, list[Target]]:
    return asyncio.run(plan(registry, name, capability, counter))


def model_ids(targets: list[Target]) -> list[str]:
    # One entry per model, in order, even when a model has several routes.
    return list(dict.fromkeys(t.model_id for t in targets))


def test_model_id_gives_its_routes(registry: Registry, counter: FakeCounter) -> None:
    alias, targets = run_plan(registry, "gpt-4o-mini", counter)

    assert alias is None
    assert targets == [
        Target("gpt-4o-mini", "openrouter", "openai/gpt-4o-mini"),
        Target("gpt-4o-mini", "local", "mini-on-vllm"),
    ]
    assert counter.calls == []


def test_embedding_model_id(registry: Registry, counter: FakeCounter) -> None:
    assert run_plan(registry, "text-embedding-3-small", counter, "embeddings") == (
        None, [Target("text-embedding-3-small", "openrouter", "openai/text-embedding-3-small")]
    )


def test_first_keeps_declared_order(registry: Registry, counter: FakeCounter) -> None:
    alias, targets = run_plan(registry, "team/first", counter)

    assert alias == "team/first"
    assert targets == [
        Target("gpt-4", "openrouter", "openai/gpt-4"),
        Target("claude-3-haiku", "openrouter", "anthropic/claude-3-haiku"),
        Target("gpt-4o-mini", "openrouter", "openai/gpt-4o-mini"),
        Target("gpt-4o-mini", "local", "mini-on-vllm"),
    ]
    assert counter.calls == []


def test_cheapest_sorts_by_input_plus_output_price(registry: Registry, counter: FakeCounter) -> None:
    # gpt-4 30+60, claude-3-haiku 0.25+1.25, gpt-4o-mini 0.15+0.60
    alias, targets = run_plan(registry, "team/cheapest", counter)

    assert alias == "team/cheapest"
    assert model_ids(targets) == ["gpt-4o-mini", "claude-3-haiku", "gpt-4"]
    assert counter.calls == []


def test_cheapest_ties_keep_declared_order(registry: Registry, counter: FakeCounter) -> None:
    # Both local models cost 0.0.
    assert model_ids(run_plan(registry, "team/free", counter)[1]) == ["local-twin", "local-llm", "gpt-4"]


def test_round_robin_rotates_with_the_counter(registry: Registry, counter: FakeCounter) -> None:
    orders = [model_ids(run_plan(registry, "team/rr", counter)[1]) for _ in range(4)]

    assert orders == [
        ["gpt-4", "claude-3-haiku", "claude-3-5-sonnet"],  # INCR's first value, 1, is the first target
        ["claude-3-haiku", "claude-3-5-sonnet", "gpt-4"],
        ["claude-3-5-sonnet", "gpt-4", "claude-3-haiku"],
        ["gpt-4", "claude-3-haiku", "claude-3-5-sonnet"],
    ]
    assert counter.calls == ["team/rr"] * 4


def test_round_robin_rotates_only_capable_targets(registry: Registry, counter: FakeCounter) -> None:
    chats = [model_ids(run_plan(registry, "team/mixed", counter)[1]) for _ in range(2)]
    embeds = [model_ids(run_plan(registry, "team/mixed", counter, "embeddings")[1]) for _ in range(2)]

    assert chats == [["gpt-4", "claude-3-haiku"], ["claude-3-haiku", "gpt-4"]]
    # The counter is shared by capability: turns 3 and 4.
    assert embeds == [["text-embedding-3-small", "text-embedding-3-large"],
                      ["text-embedding-3-large", "text-embedding-3-small"]]


def test_order_models_round_robin_without_turn(registry: Registry) -> None:
    alias, models = registry.lookup("team/rr")
    assert alias is not None

    assert [m.id for m in order_models(alias, models)] == ["gpt-4", "claude-3-haiku", "claude-3-5-sonnet"]
    assert [m.id for m in order_models(alias, models, turn=5)] == ["claude-3-haiku", "claude-3-5-sonnet", "gpt-4"]
    assert order_models(alias, [], turn=3) == []


def test_random_uses_the_given_rng(registry: Registry) -> None:
    alias, models = registry.lookup("team/random")
    assert alias is not None
    declared = [m.id for m in models]

    expected = list(declared)
    random.Random(1234).shuffle(expected)
    got = [m.id for m in order_models(alias, models, rng=random.Random(1234))]

    assert got == expected
    assert [m.id for m in models] == declared  # the input list is not shuffled in place
    seen = {tuple(m.id for m in order_models(alias, models, rng=random.Random(seed))) for seed in range(200)}
    assert seen == set(itertools.permutations(declared))


def test_random_plan_is_a_permutation(registry: Registry, counter: FakeCounter) -> None:
    _, targets = run_plan(registry, "team/random", counter)

    assert sorted(model_ids(targets)) == sorted(["gpt-4", "claude-3-haiku", "claude-3-5-sonnet", "gpt-4o"])
    assert counter.calls == []


def test_fastest_by_latency_hint_unknown_last(registry: Registry, counter: FakeCounter) -> None:
    # claude-3-haiku 450 and gpt-4o-mini 450 tie and keep declared order; local-llm has no hint.
    assert registry.models["local-llm"].latency_ms_hint is None

    _, targets = run_plan(registry, "team/fastest", counter)

    assert model_ids(targets) == ["claude-3-haiku", "gpt-4o-mini", "gpt-4", "claude-3-5-sonnet", "local-llm"]
    assert targets[1:3] == [
        Target("gpt-4o-mini", "openrouter", "openai/gpt-4o-mini"),
        Target("gpt-4o-mini", "local", "mini-on-vllm"),
    ]


@pytest.mark.parametrize("name", ["gpt-5-ultra", "", "team", "GPT-4"])
def test_unknown_name(registry: Registry, counter: FakeCounter, name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        run_plan(registry, name, counter)

    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")
    assert f"'{name}' does not exist" in info.value.message


def test_chat_on_an_embedding_model(registry: Registry, counter: FakeCounter) -> None:
    with pytest.raises(InvalidRequest) as info:
        run_plan(registry, "text-embedding-3-small", counter, "chat")

    assert (info.value.status, info.value.code, info.value.param) == (400, "model_not_supported", "model")
    assert "is not a chat model" in info.value.message


@pytest.mark.parametrize("name", ["gpt-4o-mini", "team/cheapest"])
def test_embeddings_on_a_chat_model(registry: Registry, counter: FakeCounter, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        run_plan(registry, name, counter, "embeddings")

    assert (info.value.status, info.value.code, info.value.param) == (400, "model_not_supported", "model")
    assert "is not an embeddings model" in info.value.message
    assert counter.calls == []
