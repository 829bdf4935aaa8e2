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
(see `source`).

Anything wrong with a source raises `RegistryError`, whose message names the source (file path or
URL), the key (`aliases."reasoning/cheapest".strategy`) and what was expected.

The package is split by concept, and every public name is importable from here:

- `model`: the immutable types the rest of the gateway reads (`Registry`, `Model`, `Alias`, `Route`).
- `source`: an overlay's text from a file or URL, and its TOML (`read_overlay_file`, `fetch_overlay`,
  `parse_toml`).
- `load`: the merge and its validation (`load_registry`).

Reloading a running gateway's registry is `shared.overlay`'s business.
"""

from __future__ import annotations

from .load import load_registry
from .model import (
    CAPABILITIES,
    DEFAULT_CREATED,
    DEFAULTS_SOURCE,
    STRATEGIES,
    Alias,
    Model,
    Registry,
    RegistryError,
    Route,
)
from .source import fetch_overlay, parse_toml, read_overlay_file

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
