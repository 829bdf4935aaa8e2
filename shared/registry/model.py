"""What a registry is: the immutable models, aliases and routes the rest of the gateway reads.

Nothing here reads files or TOML, so routing, billing and the API depend only on these types; how a
registry is built from the defaults and an overlay lives in `load.py`. A `Registry` checks its own
aliases, so one built by hand (as tests and `restricted_to` do) holds the same promises as a loaded one.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Collection, Iterable, Mapping

import msgspec

from ..strategies import STRATEGIES as _STRATEGY_FUNCTIONS

CAPABILITIES = ("chat", "embeddings", "tools", "vision", "streaming")
# The names shared/strategies.py registers: a new strategy there is accepted here with no edit.
STRATEGIES = tuple(_STRATEGY_FUNCTIONS)

# `created` for a model that gives none: a fixed instant (2024-01-01 UTC) rather than the start-up
# time, so /ai/v1/models reads the same on every replica and after every restart.
DEFAULT_CREATED = 1_704_067_200

# How errors in the built-in file name their source.
DEFAULTS_SOURCE = "shared/default_models.toml"


class RegistryError(ValueError):
    """A registry source that cannot be read, parsed or validated.

    The message starts with the source and the offending key, so it can be shown to an operator as is.
    """


class Route(msgspec.Struct, frozen=True):
    """One way to serve a model.

    Parameters:
        provider: a provider table name from reactor.toml, e.g. "openrouter".
        model: the model id that provider expects, e.g. "openai/gpt-4o-mini".
    """

    provider: str
    model: str


class Model(msgspec.Struct, frozen=True):
    """A model the gateway serves, with its list prices and the routes that can serve it.

    Parameters:
        id: the name clients send as `model`.
        owned_by: the organisation reported by /ai/v1/models.
        routes: where to send requests, in order of preference; never empty in a loaded registry.
        capabilities: a subset of `CAPABILITIES`.
        context_window: tokens of context; 0 when unknown.
        input_price_per_mtok: USD per million prompt tokens.
        output_price_per_mtok: USD per million completion tokens.
        cached_input_price_per_mtok: USD per million prompt tokens read from the provider's cache.
        cache_write_price_per_mtok: USD per million prompt tokens written to the provider's cache;
            None bills them as ordinary input.
        latency_ms_hint: a rough time to first token, for the `fastest` strategy.
        created: unix seconds, for /ai/v1/models.
    """

    id: str
    owned_by: str
    routes: tuple[Route, ...]
    capabilities: frozenset[str]
    context_window: int = 0
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0
    cached_input_price_per_mtok: float | None = None
    cache_write_price_per_mtok: float | None = None
    latency_ms_hint: float | None = None
    created: int = DEFAULT_CREATED

    def supports(self, capability: str) -> bool:
        """Whether the model can serve `capability`, one of `CAPABILITIES`."""
        return capability in self.capabilities


class Alias(msgspec.Struct, frozen=True):
    """A name that resolves to one of several models.

    Parameters:
        name: the name clients send as `model`, e.g. "reasoning/cheapest".
        strategy: one of `STRATEGIES`; how dispatch picks among `targets`.
        targets: model ids, in the order the alias declares them.
    """

    name: str
    strategy: str
    targets: tuple[str, ...]


class Registry:
    """The models and aliases the gateway serves, by name; immutable once built.

    Parameters:
        models: the models; ids must be unique.
        aliases: the aliases; each needs a known `strategy` and at least one target, every target a
            model id from `models`, and a name no model has.
    """

    __slots__ = ("_models", "_aliases")

    _models: Mapping[str, Model]
    _aliases: Mapping[str, Alias]

    def __init__(self, models: Iterable[Model] = (), aliases: Iterable[Alias] = ()) -> None:
        by_id: dict[str, Model] = {}
        for model in models:
            if model.id in by_id:
                raise RegistryError(f"{_table_key('models', model.id)}: duplicate model id")
            by_id[model.id] = model
        by_name: dict[str, Alias] = {}
        for alias in aliases:
            if alias.name in by_name:
                raise RegistryError(f"{_table_key('aliases', alias.name)}: duplicate alias name")
            by_name[alias.name] = alias
        for alias in by_name.values():
            problem = _alias_problem(alias, by_id, by_name)
            if problem is not None:
                raise RegistryError(f"{problem[0]}: {problem[1]}")
        object.__setattr__(self, "_models", types.MappingProxyType(by_id))
        object.__setattr__(self, "_aliases", types.MappingProxyType(by_name))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def models(self) -> Mapping[str, Model]:
        """Every model by id, in declaration order (defaults first, then overlay additions)."""
        return self._models

    @property
    def aliases(self) -> Mapping[str, Alias]:
        """Every alias by name."""
        return self._aliases

    def lookup(self, name: str) -> tuple[Alias | None, list[Model]]:
        """Resolve what a client sent as `model`.

        A model id gives (None, [model]); an alias gives (alias, its target models in declared
        order); an unknown name gives (None, []).

        Parameters:
            name: a model id or alias name.
        """
        model = self._models.get(name)
        if model is not None:
            return None, [model]
        alias = self._aliases.get(name)
        if alias is not None:
            return alias, [self._models[target] for target in alias.targets]
        return None, []

    def restricted_to(self, providers: Collection[str], lacking_credentials: Collection[str] = ()) -> Registry:
        """A copy serving only through `providers`, e.g. the ones enabled in reactor.toml.

        Routes to other providers are dropped, then models left with no route, then alias targets
        naming dropped models, then aliases left with no target. Routes to a provider in
        `lacking_credentials` move behind the others, so a model is served by the first of its
        routes whose provider can sign in (enabling Bedrock with AWS credentials makes
        `claude-3-haiku` go through Bedrock even though OpenRouter is listed too, and vice versa).

        Parameters:
            providers: provider table names to keep.
            lacking_credentials: kept providers that have no credentials yet.
        """
        if isinstance(providers, str) or isinstance(lacking_credentials, str):
            # A lone name would otherwise be read as a collection of one-letter providers.
            raise TypeError("providers must be a collection of names, not a str")
        keep = frozenset(providers)
        last = frozenset(lacking_credentials)
        models: list[Model] = []
        for model in self._models.values():
            routes = tuple(route for route in model.routes if route.provider in keep)
            # sorted() is stable: the declared order holds within each group.
            routes = tuple(sorted(routes, key=lambda route: route.provider in last))
            if routes == model.routes:
                models.append(model)
            elif routes:
                models.append(msgspec.structs.replace(model, routes=routes))
        ids = {model.id for model in models}
        aliases: list[Alias] = []
        for alias in self._aliases.values():
            targets = tuple(target for target in alias.targets if target in ids)
            if targets:
                aliases.append(msgspec.structs.replace(alias, targets=targets))
        return Registry(models, aliases)

    def __repr__(self) -> str:
        return f"<Registry models={len(self._models)} aliases={len(self._aliases)}>"


def _alias_problem(
    alias: Alias, models: Mapping[str, Model], aliases: Mapping[str, Alias]
) -> tuple[str, str] | None:
    """The key and complaint for the first thing wrong with `alias`, or None if nothing is."""
    key = _table_key("aliases", alias.name)
    if alias.name in models:
        return key, f"{alias.name!r} is already a model id; expected an alias name of its own"
    if alias.strategy not in STRATEGIES:
        return f"{key}.strategy", f"unknown strategy {alias.strategy!r}; expected one of {', '.join(STRATEGIES)}"
    if not alias.targets:
        return f"{key}.targets", "expected at least one model id"
    for i, target in enumerate(alias.targets):
        if target in models:
            continue
        if target in aliases:
            return f"{key}.targets[{i}]", f"{target!r} is an alias; expected a model id (aliases cannot target aliases)"
        hint = difflib.get_close_matches(target, models, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{key}.targets[{i}]", f"unknown model {target!r}; expected a model id from the registry{suggestion}"
    return None


# --- how messages spell keys ----------------------------------------------------------------------

# What TOML allows in a bare (unquoted) key.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _table_key(section: str, name: str) -> str:
    # Ids are always quoted, as in the defaults file, since most model ids hold dots.
    return f"{section}.{_quoted(name)}"


def _bare_or_quoted(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _quoted(key)


def _quoted(key: str) -> str:
    # JSON's escapes are all valid in a TOML basic string, so this is a TOML key too.
    return json.dumps(key, ensure_ascii=False)
