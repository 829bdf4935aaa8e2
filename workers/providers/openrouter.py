"""OpenRouter: the OpenAI API with vendor-prefixed model names and a few extras.

Its extras (``provider``, ``native_finish_reason``, its own ``cost``) are dropped so the
client sees OpenAI's shape; usage is always sent, so metering needs nothing special.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .openai_compat import OpenAICompatProvider, OpenAISettings

# Attribution headers OpenRouter shows on its dashboards; the user can override them in config.
_ATTRIBUTION = {"HTTP-Referer": "https://github.com/reactor-gateway", "X-Title": "Reactor Gateway"}


class OpenRouterSettings(OpenAISettings, frozen=True, kw_only=True):
    """OpenRouter's table: on by default, its key in ``OPENROUTER_API_KEY``."""

    default_base_url: ClassVar[str | None] = "https://openrouter.ai/api/v1"
    default_api_key_env: ClassVar[str | None] = "OPENROUTER_API_KEY"


class OpenRouterProvider(OpenAICompatProvider):
    kind = "openrouter"
    settings_type = OpenRouterSettings

    def headers(self) -> dict[str, str]:
        return {**_ATTRIBUTION, **super().headers()}

    def normalize_completion(self, data: dict[str, Any]) -> dict[str, Any]:
        return self.normalize_chunk(data)

    def normalize_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        chunk.pop("provider", None)
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                choice.pop("native_finish_reason", None)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            usage.pop("cost", None)
            usage.pop("cost_details", None)
            usage.pop("is_byok", None)
        return chunk
