"""OpenRouter: the OpenAI API with vendor-prefixed model names and a few extras.

Its extras (``provider``, ``native_finish_reason``, its own ``cost``) are dropped so the
client sees OpenAI's shape; usage is always sent, so metering needs nothing special.
"""

from __future__ import annotations

from typing import Any

from .openai_compat import OpenAICompatProvider

# Attribution headers OpenRouter shows on its dashboards; the user can override them in config.
_ATTRIBUTION = {"HTTP-Referer": "https://github.com/reactor-gateway", "X-Title": "Reactor Gateway"}


class OpenRouterProvider(OpenAICompatProvider):
    kind = "openrouter"

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
