"""The model registry: which model ids and aliases the gateway serves, and where each one runs.

The registry is the built-in defaults (`shared/default_models.toml`) with an optional project
overlay (`ai-models.toml`, or one fetched from a URL) merged over them. Both are TOML of one shape:

    [models."gpt-4o-mini"]
    owned_by = "openai"
    context_window = 128000
    input_price_per_mtok = 0.15          # USD per million tokens
    output_price_per_mtok = 0.60
    cached_input_price_per_mtok = 0.075  # optional
    cache_write_price_per_mtok = 0.1875  # optional; Anthropic's prompt-cache writes cost more than input
    latency_ms_hint = 450.0              # optional; read by the `fastest` strategy
    created = 1721260800                 # optional; unix seconds, shown by /ai/v1/models
    capabilities = ["chat", "tools", "vision", "streaming"]
    routes = [{ provider = "openrouter", model = "openai/gpt-4o-mini" }]

    [aliases."reasoning/cheapest"]
    strategy = "cheapest"
    targets = ["gpt-4o-mini", "claude-3-haiku"]

How an overlay merges:

- A model table naming an existing id and giving every field a complete entry has (`owned_by`,
  `context_window`, both prices, `capabilities`, `routes`) replaces that model outright; optional
  fields it leaves out take the defaults below, not the built-in entry's values.
- A model table naming an existing id with only some fields overrides just those fields, so one
  price can change without copying the model. Lists are replaced, never appended to: `routes = [...]`
  gives the model exactly those routes.
- A new id must give at least `routes` and `capabilities`. The rest default to: `owned_by` = the
  first route's provider; `context_window` = 0, meaning unknown; prices = 0.0, as for a self-hosted
  model; `cached_input_price_per_mtok`, `cache_write_price_per_mtok` and `latency_ms_hint` = None; `created` = `DEFAULT_CREATED`.
- Aliases replace by name. Every alias target must be a model id after the merge (never another
  alias), there must be at least one, and an alias name may not also be a model id.

The product page spells alias headers `[aliases.reasoning/cheapest]`, which TOML rejects because `/`
is not allowed in a bare key. People copy that spelling, so `parse_toml` quotes such header segments
before parsing.

Anything wrong with a source raises `RegistryError`, whose message names the source (file path or
URL), the key (`aliases."reasoning/cheapest".strategy`) and what was expected.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Collection, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = [
    "CAPABILITIES",
    "DEFAULT_CREATED",
    "DEFAULTS_SOURCE",
    "STRATEGIES",
    "Alias",
    "Model",
    "Registry",
    "RegistryError",
    "Route",
    "fetch_overlay",
    "load_registry",
    "parse_toml",
    "read_overlay_file",
]

CAPABILITIES = ("chat", "embeddings", "tools", "vision", "streaming")
STRATEGIES = ("first", "random", "round_robin", "cheapest", "fastest")

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


# --- reading sources ------------------------------------------------------------------------------


def read_overlay_file(path: str | os.PathLike[str]) -> str:
    """The text of an overlay file.

    Parameters:
        path: the file, e.g. the `registry_overlay` setting from reactor.toml.

    Raises RegistryError naming `path` if it cannot be read or is not UTF-8, as TOML requires.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{os.fspath(path)}: cannot read registry overlay: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{os.fspath(path)}: not UTF-8 text (bad byte at offset {exc.start})") from exc


async def fetch_overlay(url: str, timeout: float) -> str:
    """The text of an overlay served over HTTP(S), following redirects.

    Parameters:
        url: where to GET it, e.g. the `registry_url` setting from reactor.toml.
        timeout: seconds for the whole fetch, not per network operation, so a server that trickles
            bytes cannot hold start-up hostage.

    Raises RegistryError naming `url` on a network error, a timeout or any status but 200.
    """
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
                response = await client.get(url)
    except (TimeoutError, httpx.TimeoutException):
        raise RegistryError(f"{url}: no registry overlay within {timeout:g}s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise RegistryError(f"{url}: cannot fetch registry overlay: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise RegistryError(
            f"{url}: expected HTTP 200 for the registry overlay, got {response.status_code} {response.reason_phrase}"
        )
    try:
        return response.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{url}: not UTF-8 text (bad byte at offset {exc.start})") from exc


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse registry TOML, accepting the page's unquoted `[aliases.reasoning/cheapest]` headers.

    Parameters:
        text: the TOML.
        source: the file path or URL it came from, for error messages.

    Raises RegistryError naming `source` if the text is not TOML even after quoting headers.
    """
    try:
        return tomllib.loads(_quote_headers(text))
    except tomllib.TOMLDecodeError as exc:
        # Quoting never adds or removes lines, so tomllib's line numbers hold for the original text.
        raise RegistryError(f"{source}: invalid TOML: {exc}") from exc


def load_registry(overlay_text: str | None = None, source: str = "<overlay>") -> Registry:
    """The built-in defaults with `overlay_text` merged over them (see the module docstring).

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


# --- keys and the header rewrite ------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# What an unquoted header segment may hold for us to quote it. Whitespace, quotes, brackets, `#` and
# `=` mean the line is broken in some other way, which tomllib should report rather than we hide.
_QUOTABLE_SEGMENT = re.compile(r"[^\s\x00-\x1f\x7f\"'\[\]#=.]+")
_HEADER_TAIL = re.compile(r"\s*(#.*)?")


def _table_key(section: str, name: str) -> str:
    # Ids are always quoted, as in the defaults file, since most model ids hold dots.
    return f"{section}.{_quoted(name)}"


def _bare_or_quoted(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _quoted(key)


def _quoted(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _toml_type(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string"}.get(type(value), type(value).__name__)


def _quote_headers(text: str) -> str:
    """`text` with header segments that TOML forbids in bare keys quoted: `[aliases."reasoning/cheapest"]`.

    Only lines that start a table header are touched: a line beginning with `[` inside a multi-line
    string or a multi-line array is a value, so the values are scanned to know where those end.
    """
    lines = text.split("\n")
    open_string: str | None = None
    depth = 0
    for i, line in enumerate(lines):
        if open_string is None and depth == 0 and line.lstrip().startswith("["):
            lines[i] = _quote_header(line)
        else:
            open_string, depth = _scan_values(line, open_string, depth)
    return "\n".join(lines)


def _quote_header(line: str) -> str:
    indent = len(line) - len(line.lstrip())
    opener = "[[" if line.startswith("[[", indent) else "["
    i = indent + len(opener)
    segments: list[str] = []
    start = i
    while True:
        if i >= len(line):
            return line  # no closing bracket: leave the error to tomllib
        char = line[i]
        if char in "\"'":
            i = _string_end(line, i + 1, char)
            if i < 0:
                return line
        elif char == ".":
            segments.append(line[start:i])
            start = i = i + 1
        elif char == "]":
            segments.append(line[start:i])
            break
        else:
            i += 1
    closer = "]" * len(opener)
    if not line.startswith(closer, i) or not _HEADER_TAIL.fullmatch(line, i + len(closer)):
        return line
    quoted = [_quote_segment(segment) for segment in segments]
    if quoted == segments:
        return line
    return line[: indent + len(opener)] + ".".join(quoted) + line[i:]


def _quote_segment(segment: str) -> str:
    key = segment.strip()
    if _BARE_KEY.fullmatch(key) or not _QUOTABLE_SEGMENT.fullmatch(key):
        return segment
    lead = segment[: len(segment) - len(segment.lstrip())]
    trail = segment[len(segment.rstrip()) :]
    return lead + '"' + key.replace("\\", "\\\\") + '"' + trail


def _scan_values(line: str, open_string: str | None, depth: int) -> tuple[str | None, int]:
    """Carry (the multi-line string delimiter still open, array/inline-table depth) past `line`."""
    i = 0
    while i < len(line):
        if open_string is not None:
            i = _string_end(line, i, open_string)
            if i < 0:
                return open_string, depth
            open_string = None
            continue
        char = line[i]
        if char == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            open_string = line[i : i + 3]
            i += 3
        elif char in "\"'":
            i = _string_end(line, i + 1, char)
            if i < 0:
                break  # unterminated one-line string: tomllib will say so
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth = max(depth - 1, 0)
            i += 1
    return open_string, depth


def _string_end(line: str, i: int, delimiter: str) -> int:
    """The index just past the `delimiter` closing a string whose body starts at `i`, or -1 if the line ends first."""
    escapes = delimiter[0] == '"'
    while i < len(line):
        if escapes and line[i] == "\\":
            i += 2
        elif line.startswith(delimiter, i):
            if len(delimiter) == 1:
                return i + 1
            # Up to two quotes may end the body itself: `"""a""""` is the string `a"`.
            while i < len(line) and line[i] == delimiter[0]:
                i += 1
            return i
        else:
            i += 1
    return -1
