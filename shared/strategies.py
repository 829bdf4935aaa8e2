"""Alias strategies: how an alias orders its target models. One named unit each.

A strategy is an async function ``(alias, models, context) -> models in order``, registered under
its name with :func:`strategy`; a new one is one function here. The registry accepts exactly the
names registered here.

Availability is not a strategy's business: after ordering, the front door moves targets it cannot
use now (no live worker, cooling down) behind the others, so ``first`` means the first available
target and ``random`` is uniform over the available ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .health import RouteStats
    from .registry import Alias, Model

# Returns the next value of the alias's shared counter (an INCR in Redis).
Counter = Callable[[str], Awaitable[int]]
# The measured speed of each model's first route, by model id.
Speed = Callable[[list["Model"]], Awaitable[dict[str, "RouteStats"]]]
Strategy = Callable[["Alias", list["Model"], "StrategyContext"], Awaitable[list["Model"]]]

# `fastest`: how much a route's error rate weighs against its speed (a route failing half the
# time scores as if it were three times slower).
ERROR_PENALTY = 4.0


async def _no_counter(alias: str) -> int:
    return 1


@dataclass
class StrategyContext:
    """What strategies may consult.

    :param turn: the alias's shared round-robin counter.
    :param speed: measured speed per model (``fastest``); None to use the registry's hints only.
    :param rng: the random source.
    """

    turn: Counter = _no_counter
    speed: Speed | None = None
    rng: random.Random = field(default_factory=lambda: random.Random())


STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return register


@strategy("first")
async def first(alias: Alias, models: list[Model], ctx: StrategyContext) -> list[Model]:
    """The declared order."""
    return list(models)


@strategy("random")
async def uniform(alias: Alias, models: list[Model], ctx: StrategyContext) -> list[Model]:
    """A uniform shuffle."""
    shuffled = list(models)
    ctx.rng.shuffle(shuffled)
    return shuffled


@strategy("round_robin")
async def round_robin(alias: Alias, models: list[Model], ctx: StrategyContext) -> list[Model]:
    """Each request starts one further along, by a counter in Redis every replica shares."""
    if not models:
        return []
    start = (await ctx.turn(alias.name) - 1) % len(models)  # INCR counts from 1: the first request gets the first
    return models[start:] + models[:start]


@strategy("cheapest")
async def cheapest(alias: Alias, models: list[Model], ctx: StrategyContext) -> list[Model]:
    """By input plus output price per million tokens; equal prices keep the declared order."""
    return sorted(models, key=lambda m: m.input_price_per_mtok + m.output_price_per_mtok)


@strategy("fastest")
async def fastest(alias: Alias, models: list[Model], ctx: StrategyContext) -> list[Model]:
    """By measured time to first token, weighed by errors; the registry's hints until anything is measured.

    Score: the route's decaying average time to first token × (1 + ``ERROR_PENALTY`` × its
    decaying error rate). A route never measured scores as well as the best measured one, so it
    gets traffic until it is measured. The first target is the better of two picked at random
    (the "power of two choices"), not simply the best: a fleet of front doors reading the same
    numbers would otherwise all send every request to one route until its average moves.
    """
    stats = await ctx.speed(models) if ctx.speed is not None else {}
    measured = {m.id: s.ttft_ms * (1 + ERROR_PENALTY * s.error_rate)
                for m in models if (s := stats.get(m.id)) is not None and s.ttft_ms is not None}
    if not measured:
        return sorted(models, key=lambda m: m.latency_ms_hint if m.latency_ms_hint is not None else math.inf)
    best = min(measured.values())

    def score(model: Model) -> float:
        return measured.get(model.id, best)

    if len(models) < 2:
        return list(models)
    a, b = ctx.rng.sample(models, 2)
    chosen = min((a, b), key=score)
    return [chosen] + sorted((m for m in models if m is not chosen), key=score)
