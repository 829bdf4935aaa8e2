"""Provider modules, one per upstream wire format, chosen by a provider table's ``kind``."""

from __future__ import annotations

from shared.config import ProviderSettings

from .base import Provider
from .http import UpstreamHTTP
from .openai_compat import OpenAICompatProvider
from .openrouter import OpenRouterProvider

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    OpenAICompatProvider.kind: OpenAICompatProvider,
    OpenRouterProvider.kind: OpenRouterProvider,
}


def build_provider(settings: ProviderSettings, http: UpstreamHTTP, secrets: tuple[str, ...]) -> Provider:
    return PROVIDER_CLASSES[settings.kind](settings, http, secrets)


__all__ = ["Provider", "UpstreamHTTP", "build_provider", "PROVIDER_CLASSES"]
