"""`reactor ai models import openrouter`: OpenRouter's model list as a registry overlay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.model_import import overlay_from_openrouter
from shared.registry import load_registry

from .gateway_proc import REPO, UPSTREAM_KEY

LISTING = {"data": [
    {"id": "openai/gpt-4o-mini", "context_length": 128000,
     "pricing": {"prompt": "0.00000015", "completion": "0.0000006", "input_cache_read": "0.000000075"}},
    {"id": "anthropic/claude-3-haiku", "context_length": 200000,
     "pricing": {"prompt": "0.0000003", "completion": "0.0000015", "input_cache_read": "0.00000003",
                 "input_cache_write": "0.0000003750"}},
    {"id": "acme/new-model", "created": 1760000000, "context_length": 64000,
     "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"]},
     "supported_parameters": ["tools", "temperature"],
     "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
    {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
    "not a model",
]}


def test_known_models_get_partial_tables_that_keep_everything_else() -> None:
    builtin = load_registry()

    text = overlay_from_openrouter(LISTING, builtin)
    merged = load_registry(text, "imported.toml")

    haiku = merged.models["claude-3-haiku"]
    assert (haiku.input_price_per_mtok, haiku.output_price_per_mtok) == (0.3, 1.5)
    assert (haiku.cached_input_price_per_mtok, haiku.cache_write_price_per_mtok) == (0.03, 0.375)
    assert haiku.routes == builtin.models["claude-3-haiku"].routes
    assert merged.models["gpt-4o-mini"].input_price_per_mtok == 0.15
    assert "acme/new-model" not in merged.models and "openrouter/auto" not in merged.models


def test_all_adds_new_models_with_capabilities_from_their_modalities() -> None:
    merged = load_registry(overlay_from_openrouter(LISTING, load_registry(), include_new=True), "imported.toml")

    new = merged.models["acme/new-model"]
    assert new.capabilities == {"chat", "tools", "vision", "streaming"}
    assert (new.owned_by, new.context_window, new.created) == ("acme", 64000, 1760000000)
    assert [(r.provider, r.model) for r in new.routes] == [("openrouter", "acme/new-model")]
    # A model whose price varies per request is not one we can meter.
    assert "openrouter/auto" not in merged.models


def test_cli_writes_the_overlay_from_the_live_list(tmp_path: Path, openrouter_mock) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "OPENROUTER_"))}
    env.update(OPENROUTER_API_KEY=UPSTREAM_KEY, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "api.cli", "ai", "models", "import", "openrouter", "--url", openrouter_mock.url]

    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)

    assert first.returncode == 0, first.stderr
    merged = load_registry((tmp_path / "ai-models.openrouter.toml").read_text(), "imported.toml")
    # The mock prices every model at 0.000001 USD per token.
    assert merged.models["gpt-4o-mini"].input_price_per_mtok == 1.0
    assert merged.models["claude-3-5-sonnet"].output_price_per_mtok == 1.0
    assert again.returncode == 2 and "--force" in again.stderr
