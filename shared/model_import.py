"""Keeping prices current: OpenRouter's public model list turned into a registry overlay.

``reactor ai models import openrouter`` fetches ``GET {base_url}/models`` and writes an overlay
(see :mod:`shared.registry` for the format). A model the registry already serves through OpenRouter
gets a partial table with only the fields OpenRouter knows (context window and prices, including
prompt-cache reads and writes), so everything else of the built-in entry stays. With ``--all``,
every other OpenRouter model is added under its OpenRouter id, with capabilities read from its
modalities and supported parameters.

OpenRouter quotes prices as decimal strings in USD per token; the registry's are USD per million.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from .registry import Registry

# OpenRouter's pricing keys -> the registry's fields.
_PRICES = {
    "prompt": "input_price_per_mtok",
    "completion": "output_price_per_mtok",
    "input_cache_read": "cached_input_price_per_mtok",
    "input_cache_write": "cache_write_price_per_mtok",
}


class ImportProblem(ValueError):
    """The model list is not what OpenRouter serves."""


def overlay_from_openrouter(listing: Any, registry: Registry, *, include_new: bool = False,
                            source: str = "OpenRouter") -> str:
    """The overlay text for OpenRouter's ``/models`` answer.

    :param listing: the decoded answer, ``{"data": [{"id", "context_length", "pricing", ...}]}``.
    :param registry: the registry in use; its OpenRouter routes say which models are known.
    :param include_new: also add the models the registry does not serve.
    """
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise ImportProblem(f"{source}'s model list has no 'data' array")
    known: dict[str, list[str]] = {}
    for model in registry.models.values():
        for route in model.routes:
            if route.provider == "openrouter":
                known.setdefault(route.model, []).append(model.id)
    updated, added = [], []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        fields = _fields(entry)
        if entry["id"] in known:
            updated += [(model_id, fields) for model_id in known[entry["id"]]]
        elif include_new and fields.get("input_price_per_mtok") is not None:
            added.append((entry["id"], {**_new_model_fields(entry), **fields}))
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    lines = [f"# Imported from {source}'s model list on {stamp} by `reactor ai models import openrouter`.",
             f"# {len(updated)} built-in models updated, {len(added)} added. Prices: USD per million tokens.", ""]
    for model_id, fields in updated + added:
        lines.append(f"[models.{_string(model_id)}]")
        lines += [f"{key} = {_value(value)}" for key, value in fields.items()]
        lines.append("")
    return "\n".join(lines)


def _fields(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    context = entry.get("context_length")
    if isinstance(context, int) and context > 0:
        out["context_window"] = context
    pricing = entry.get("pricing") if isinstance(entry.get("pricing"), dict) else {}
    for key, field in _PRICES.items():
        price = _per_million(pricing.get(key))
        if price is not None:
            out[field] = price
    return out


def _new_model_fields(entry: dict[str, Any]) -> dict[str, Any]:
    architecture = entry.get("architecture") if isinstance(entry.get("architecture"), dict) else {}
    inputs = architecture.get("input_modalities") or []
    outputs = architecture.get("output_modalities") or ["text"]
    parameters = entry.get("supported_parameters") or []
    if "embeddings" in outputs:
        capabilities = ["embeddings"]
    else:
        capabilities = ["chat", "streaming"]
        if "tools" in parameters:
            capabilities.insert(1, "tools")
        if "image" in inputs:
            capabilities.insert(-1, "vision")
    out: dict[str, Any] = {"owned_by": entry["id"].split("/", 1)[0], "capabilities": capabilities,
                           "routes": [{"provider": "openrouter", "model": entry["id"]}]}
    if isinstance(entry.get("created"), int) and entry["created"] > 0:
        out["created"] = entry["created"]
    return out


def _per_million(value: Any) -> float | None:
    """``"0.0000025"`` (USD per token) as 2.5 (USD per million); None for missing or negative
    (OpenRouter writes ``"-1"`` for a price that varies, as ``openrouter/auto`` has)."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(price) or price < 0:
        return None
    return round(price * 1_000_000, 6)


def _string(text: str) -> str:
    # JSON's string escapes are a subset of TOML's basic strings.
    return json.dumps(text)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
