"""``reactor ai …``: the registry and a running gateway from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from shared.config import Settings


def cmd_models_import(args: argparse.Namespace, settings: Settings) -> int:
    """Write an overlay with OpenRouter's current prices and context windows."""
    from pathlib import Path

    import httpx

    from shared.model_import import ImportProblem, overlay_from_openrouter
    from shared.overlay import registry_for

    output = Path(args.output)
    if output.exists() and not args.force:
        print(f"reactor: {output} exists; pass --force to replace it", file=sys.stderr)
        return 2
    openrouter = settings.providers.get("openrouter")
    base_url = args.url or (openrouter.base_url if openrouter else None) or "https://openrouter.ai/api/v1"
    headers = {"Authorization": f"Bearer {openrouter.api_key}"} if openrouter and openrouter.api_key else {}
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=settings.registry_timeout)
        response.raise_for_status()
        listing = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"reactor: cannot read OpenRouter's model list from {base_url}/models: {exc}", file=sys.stderr)
        return 2
    registry = asyncio.run(registry_for(settings))
    try:
        text = overlay_from_openrouter(listing, registry, include_new=args.all, source=f"{base_url}/models")
    except ImportProblem as exc:
        print(f"reactor: {exc}", file=sys.stderr)
        return 2
    output.write_text(text)
    print(f"wrote {output}: {text.splitlines()[1].lstrip('# ')}")
    print(f"use it with registry_overlay = \"{output}\" in reactor.toml (or copy the tables you want into yours)")
    return 0


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    ai = sub.add_parser("ai", help="models, aliases, chat and embeddings through a running gateway")
    ai_sub = ai.add_subparsers(dest="ai_command", required=True)
    models = ai_sub.add_parser("models", help="models and prices")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    importer = models_sub.add_parser("import", help="write an overlay with a provider's current prices")
    common(importer)
    importer.add_argument("source", choices=["openrouter"], help="where to read the model list")
    importer.add_argument("--output", default="ai-models.openrouter.toml",
                          help="the overlay file to write (default: ai-models.openrouter.toml)")
    importer.add_argument("--all", action="store_true",
                          help="also add every model the registry does not have, under its OpenRouter id")
    importer.add_argument("--url", help="the model list's base URL (default: the openrouter provider's base_url)")
    importer.add_argument("--force", action="store_true", help="replace the output file if it exists")
    importer.set_defaults(handler=cmd_models_import)
