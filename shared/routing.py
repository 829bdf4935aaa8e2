"""From the model name a client sent to the ordered targets that may serve it.

A model id gives its routes in registry order. An alias orders its target models by its strategy
(``shared/strategies.py``) and each model contributes its routes in order. The first target
decides the provider queue the job goes to; the rest travel with the job, so a worker can fall
back to them before the first token.
"""

from __future__ import annotations

import random

from .errors import InvalidRequest, ModelNotFound
from .registry import Alias, Model, Registry
from .strategies import STRATEGIES, Counter, Speed, StrategyContext
from .wire import Target


def order_models(alias: Alias, models: list[Model], turn: int | None = None,
                 rng: random.Random | None = None) -> list[Model]:
    """Apply the alias's strategy synchronously with a known counter value (tests, tools)."""
    import asyncio

    async def counter(_: str) -> int:
        return turn or 1

    ctx = StrategyContext(turn=counter, rng=rng or random.Random())
    return asyncio.run(STRATEGIES[alias.strategy](alias, models, ctx))


async def plan(registry: Registry, name: str, capability: str, counter: Counter,
               speed: Speed | None = None, rng: random.Random | None = None) -> tuple[str | None, list[Target]]:
    """The alias (if any) and the ordered targets for ``name``.

    :param capability: ``chat`` or ``embeddings``; a model without it is not a target.
    :param speed: measured route speed, for ``fastest``.
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
        ctx = StrategyContext(turn=counter, speed=speed, rng=rng or random.Random())
        able = await STRATEGIES[alias.strategy](alias, able, ctx)
    return (alias.name if alias else None), [
        Target(model.id, route.provider, route.model) for model in able for route in model.routes
    ]
