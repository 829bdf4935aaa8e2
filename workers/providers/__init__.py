"""Provider modules, one per upstream wire format, chosen by a provider table's ``kind``.

``KINDS`` is the one list of them: each module defines its :class:`~.base.Provider` subclass
and that class's settings type. Modules are imported when first asked for, so a process that
only reads the config does not load every provider's client libraries.
"""

from __future__ import annotations

import importlib

from .base import Provider, ProviderSettings, SettingError

# kind -> "module:ProviderClass"
KINDS: dict[str, str] = {
    "openrouter": "workers.providers.openrouter:OpenRouterProvider",
    "openai": "workers.providers.openai_compat:OpenAICompatProvider",
    "bedrock": "workers.providers.bedrock:BedrockProvider",
    "foundry": "workers.providers.foundry:FoundryProvider",
    "demo": "workers.providers.demo:DemoProvider",
}


def provider_class(kind: str) -> type[Provider]:
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def settings_type(kind: str) -> type[ProviderSettings]:
    return provider_class(kind).settings_type


def build_provider(settings: ProviderSettings, http, secrets: tuple[str, ...]) -> Provider:
    """The provider serving ``settings``' table, on the worker process's shared client."""
    assert settings.kind is not None
    return provider_class(settings.kind)(settings, http, secrets)


__all__ = ["KINDS", "Provider", "ProviderSettings", "SettingError", "build_provider", "provider_class",
           "settings_type"]
