"""Building a registry: the built-in defaults with an overlay merged over them, checked as they merge.

The merge rules are in the package docstring (`shared.registry`). Each source is validated on its
own, before merging, so an error names the file or URL that holds the mistake and the exact key; alias
targets are checked after the merge, since an overlay may point an alias at a model the defaults add.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from importlib import resources
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from .model import (
    CAPABILITIES,
    DEFAULTS_SOURCE,
    Alias,
    Model,
    Registry,
    RegistryError,
    Route,
    _alias_problem,
    _bare_or_quoted,
    _table_key,
)
from .source import parse_toml


def load_registry(overlay_text: str | None = None, source: str = "<overlay>") -> Registry:
    """The built-in defaults with `overlay_text` merged over them (see the `shared.registry` docstring).

    Parameters:
        overlay_text: overlay TOML, or None for the defaults alone.
        source: where the overlay came from (file path or URL), for error messages.
    """
    defaults_text = resources.files("shared").joinpath("default_models.toml").read_text("utf-8")
    sources = [(defaults_text, DEFAULTS_SOURCE)]
    if overlay_text is not None:
        sources.append((overlay_text, source))
    return _merge_sources(sources)


def _merge_sources(sources: Iterable[tuple[str, str]]) -> Registry:
    """Merge (text, source) pairs, each over the ones before it, into a registry."""
    models: dict[str, Model] = {}
    alias_tables: dict[str, tuple[str, _AliasTable]] = {}
    for text, name in sources:
        model_tables, source_aliases = _read_source(text, name)
        for model_id, table in model_tables.items():
            models[model_id] = _merge_model(model_id, table, models.get(model_id), name)
        alias_tables.update((alias_name, (name, table)) for alias_name, table in source_aliases.items())

    aliases = {
        alias_name: Alias(name=alias_name, strategy=table.strategy, targets=tuple(table.targets))
        for alias_name, (_, table) in alias_tables.items()
    }
    for alias in aliases.values():
        problem = _alias_problem(alias, models, aliases)
        if problem is not None:
            raise RegistryError(f"{alias_tables[alias.name][0]}: {problem[0]}: {problem[1]}")
    return Registry(models.values(), aliases.values())


# --- validation -----------------------------------------------------------------------------------

_T = TypeVar("_T")
_Price = Annotated[float, Meta(ge=0)]
_Name = Annotated[str, Meta(min_length=1)]


class _RouteTable(msgspec.Struct, forbid_unknown_fields=True):
    provider: _Name
    model: _Name


class _ModelTable(msgspec.Struct, forbid_unknown_fields=True):
    # Every field is optional here: whether a table is complete enough depends on whether its id
    # already exists, which only the merge knows.
    owned_by: _Name | UnsetType = UNSET
    context_window: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    input_price_per_mtok: _Price | UnsetType = UNSET
    output_price_per_mtok: _Price | UnsetType = UNSET
    cached_input_price_per_mtok: _Price | UnsetType = UNSET
    cache_write_price_per_mtok: _Price | UnsetType = UNSET
    latency_ms_hint: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    created: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    capabilities: Annotated[list[str], Meta(min_length=1)] | UnsetType = UNSET
    routes: Annotated[list[_RouteTable], Meta(min_length=1)] | UnsetType = UNSET


class _AliasTable(msgspec.Struct, forbid_unknown_fields=True):
    strategy: str
    targets: Annotated[list[str], Meta(min_length=1)]


# The fields a table must give to replace an existing model rather than patch it.
_COMPLETE_FIELDS = frozenset(
    {"owned_by", "context_window", "input_price_per_mtok", "output_price_per_mtok", "capabilities", "routes"}
)
# TOML allows inf and nan; ge=0 already turns nan away, but an infinite price would win no
# `cheapest` race and poison every cost sum.
_FINITE_FIELDS = ("input_price_per_mtok", "output_price_per_mtok", "cached_input_price_per_mtok",
                  "cache_write_price_per_mtok", "latency_ms_hint")


def _read_source(text: str, source: str) -> tuple[dict[str, _ModelTable], dict[str, _AliasTable]]:
    doc = parse_toml(text, source)
    for key in doc:
        if key not in ("models", "aliases"):
            raise RegistryError(f"{source}: {_bare_or_quoted(key)}: unknown section; expected `models` or `aliases`")
    models = {
        model_id: _check_model_table(_convert(table, _ModelTable, source, _table_key("models", model_id)), source, model_id)
        for model_id, table in _section(doc, "models", source).items()
    }
    aliases = {
        name: _convert(table, _AliasTable, source, _table_key("aliases", name))
        for name, table in _section(doc, "aliases", source).items()
    }
    return models, aliases


def _section(doc: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    section = doc.get(name, {})
    if not isinstance(section, dict):
        raise RegistryError(f"{source}: {name}: expected a table, got {_toml_type(section)}")
    for key in section:
        if not key:
            raise RegistryError(f'{source}: {name}."": expected a non-empty name')
    return section


def _convert(value: Any, into: type[_T], source: str, key: str) -> _T:
    try:
        return msgspec.convert(value, into)
    except msgspec.ValidationError as exc:
        path, message = _explain(exc)
        raise RegistryError(f"{source}: {key}{path}: {message}") from None


# msgspec speaks JSON; the people reading these messages wrote TOML.
# An integer is a fine `float`, hence "a number" there.
_TOML_WORDS = (
    ("Expected `float`", "Expected a number"),
    ("`float`", "a float"),
    ("`int`", "an integer"),
    ("`str`", "a string"),
    ("`bool`", "a boolean"),
    ("`object`", "a table"),
    ("`array`", "an array"),
    ("Object ", "Table "),
)


def _explain(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.routes[0].model`" as (".routes[0].model", "expected ...")."""
    message, _, path = str(exc).partition(" - at `")
    path = path.removesuffix("`").removeprefix("$")
    for json_word, toml_word in _TOML_WORDS:
        message = message.replace(json_word, toml_word)
    return path, message[:1].lower() + message[1:]


def _check_model_table(table: _ModelTable, source: str, model_id: str) -> _ModelTable:
    key = _table_key("models", model_id)
    for field in _FINITE_FIELDS:
        value = getattr(table, field)
        if value is not UNSET and not math.isfinite(value):
            raise RegistryError(f"{source}: {key}.{field}: expected a finite number, got {value}")
    if table.capabilities is not UNSET:
        for i, capability in enumerate(table.capabilities):
            if capability not in CAPABILITIES:
                raise RegistryError(
                    f"{source}: {key}.capabilities[{i}]: unknown capability {capability!r}; "
                    f"expected some of {', '.join(CAPABILITIES)}"
                )
    return table


def _merge_model(model_id: str, table: _ModelTable, base: Model | None, source: str) -> Model:
    given: dict[str, Any] = {
        field: value for field in table.__struct_fields__ if (value := getattr(table, field)) is not UNSET
    }
    if "routes" in given:
        given["routes"] = tuple(Route(provider=r.provider, model=r.model) for r in given["routes"])
    if "capabilities" in given:
        given["capabilities"] = frozenset(given["capabilities"])
    if base is not None and not _COMPLETE_FIELDS <= given.keys():
        return msgspec.structs.replace(base, **given)
    missing = [f"`{field}`" for field in ("routes", "capabilities") if field not in given]
    if missing:
        raise RegistryError(
            f"{source}: {_table_key('models', model_id)}: a new model needs {' and '.join(missing)}"
        )
    given.setdefault("owned_by", given["routes"][0].provider)
    return Model(id=model_id, **given)



def _toml_type(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string"}.get(type(value), type(value).__name__)
