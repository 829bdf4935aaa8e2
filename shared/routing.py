"""From the model name a client sent to the ordered targets that may serve it.

A model id gives its routes in registry order. An alias orders its targets by its strategy;
the first target decides the provider queue the job goes to, and the rest travel with the
job so a worker can fall back before the first token.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from .errors import InvalidRequest, ModelNotFound
from .registry import Alias, Model, Registry
from .wire import Target

# Returns the next value of the alias's shared counter (an INCR in Redis).
Counter = Callable[[str], Awaitable[int]]


def order_models(alias: Alias, models: list[Model], turn: int | None = None,
                 rng: random.Random | None = None) -> list[Model]:
    """Apply the alias's strategy to its target models.

    :param turn: the round-robin counter value, for ``round_robin``.
    :param rng: the random source, for ``random``.
    """
    if alias.strategy == "random":
        shuffled = list(models)
        (rng or random).shuffle(shuffled)
        return shuffled
    if alias.strategy == "round_robin" and models:
        start = ((turn or 1) - 1) % len(models)  # INCR counts from 1; the first request gets the first target
        return models[start:] + models[:start]
    if alias.strategy == "cheapest":
        # sorted() is stable: equal prices keep the declared order.
        return sorted(models, key=lambda m: m.input_price_per_mtok + m.output_price_per_mtok)
    if alias.strategy == "fastest":
        return sorted(models, key=lambda m: m.latency_ms_hint if m.latency_ms_hint is not None else float("inf"))
    return list(models)


async def plan(registry: Registry, name: str, capability: str, counter: Counter) -> tuple[str | None, list[Target]]:
    """The alias (if any) and the ordered targets for ``name``.

    :param capability: ``chat`` or ``embeddings``; a model without it is not a target.
    :raises ModelNotFound: the name is neither a model nor an alias of the registry.
    :raises InvalidRequest: it exists but cannot do what was asked.
    """
    alias, models = registry.lookup(name)
    if not models:
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
    able = [m for m in models if m.supports(capability)]
    if not able:
        what = "a chat" if capability == "chat" else "an embeddings"
        raise InvalidRequest(f"The model '{name}' is not {what} model.", param="model", code="model_not_supported")
    if alias is not None:
        turn = await counter(alias.name) if alias.strategy == "round_robin" else None
        able = order_models(alias, able, turn)
    return (alias.name if alias else None), [
        Target(model.id, route.provider, route.model) for model in able for route in model.routes
    ]
