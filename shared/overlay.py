"""Loading the registry a gateway runs with: built-in defaults plus the configured overlay."""

from __future__ import annotations

import logging

from .config import Settings
from .registry import Registry, RegistryError, fetch_overlay, load_registry, read_overlay_file

logger = logging.getLogger("reactor.registry")


async def registry_for(settings: Settings) -> Registry:
    """The merged registry, restricted to the providers this gateway has enabled.

    :raises RegistryError: the overlay is unreadable or invalid (a failed ``registry_url`` fetch
        only when the config does not mark it optional).
    """
    text, source = None, "<defaults>"
    if settings.registry_overlay is not None:
        source = str(settings.registry_overlay)
        text = read_overlay_file(settings.registry_overlay)
    elif settings.registry_url:
        source = settings.registry_url
        try:
            text = await fetch_overlay(settings.registry_url, settings.registry_timeout)
        except RegistryError as exc:
            if not settings.registry_optional:
                raise
            logger.warning("%s; continuing with the built-in registry (registry_optional = true)", exc)
            text = None
    registry = load_registry(text, source)
    enabled = settings.enabled_providers
    return registry.restricted_to(enabled, [name for name, p in enabled.items() if p.missing_credentials()])
