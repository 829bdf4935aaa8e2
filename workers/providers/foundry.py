"""Azure AI Foundry and Azure OpenAI: the OpenAI API behind Azure's URLs, key header and content filter.

Its table::

    [gateway.providers.foundry]
    enabled = true
    endpoint = "https://my-resource.openai.azure.com"   # or AZURE_FOUNDRY_ENDPOINT
    # the key is read from AZURE_FOUNDRY_API_KEY (api_key_env names another variable)
    api_version = "2024-10-21"                            # for deployment-style routes

The endpoint may be any of Azure's spellings (``*.openai.azure.com``, ``*.services.ai.azure.com``,
``*.cognitiveservices.azure.com``), with or without a trailing slash or an ``/openai``,
``/openai/v1`` or ``/models`` suffix: the confusion between those is the classic source of "404
Resource not found", so the endpoint is normalised to the resource root once, here.

A registry route picks the request style by its ``model``:

- ``"gpt-4o"``: the v1 API, ``{endpoint}/openai/v1/chat/completions`` with the deployment name
  in the body's ``model``.
- ``"deployments/my-gpt4o"``: the deployment API,
  ``{endpoint}/openai/deployments/my-gpt4o/chat/completions?api-version=…``.
- ``"models/Mistral-Large-2411"``: the model-inference API of Foundry models,
  ``{endpoint}/models/chat/completions?api-version=…`` with the name in the body.

Azure's additions are dropped before the client sees them: ``prompt_filter_results``, each
choice's ``content_filter_results`` (kept when ``content_filter_annotations = true``), the
stream's first chunk that has no choices and empty ids, and annotation-only chunks. A prompt the
content filter refuses is a 400 ``provider_error`` with code ``content_filter`` naming the
categories that tripped; 429 passes Azure's ``retry-after`` (or ``retry-after-ms``) on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import quote

import msgspec

from shared.errors import GatewayError, ProviderError, redact

from .base import Provider, ProviderSettings, SettingError, http_url
from .http import HeaderAuth, UpstreamHTTP
from .openai_compat import OpenAICompatProvider

DEFAULT_API_VERSION = "2024-10-21"
# The model-inference API (Foundry's non-OpenAI models) versions separately.
DEFAULT_MODELS_API_VERSION = "2024-05-01-preview"
ENDPOINT_ENV = "AZURE_FOUNDRY_ENDPOINT"
API_KEY_ENV = "AZURE_FOUNDRY_API_KEY"
DEPLOYMENT_PREFIX = "deployments/"
MODELS_PREFIX = "models/"
# Suffixes people paste with the endpoint; the resource root is what is left.
_ENDPOINT_SUFFIX = re.compile(r"(/openai(/v1)?|/models)?/*$")
# What Azure adds to OpenAI's shapes.
_AZURE_TOP_LEVEL = ("prompt_filter_results", "prompt_annotations")
_AZURE_CHOICE = ("content_filter_results", "content_filter_offsets")


class ApiKeyAuth(HeaderAuth):
    """Azure's ``api-key: KEY`` header."""

    def __init__(self, key: str) -> None:
        super().__init__({"api-key": key})


class FoundrySettings(ProviderSettings, frozen=True, kw_only=True):
    endpoint: str | None = None
    api_key_env: str | None = None
    api_key: str | None = None
    api_version: str = DEFAULT_API_VERSION
    models_api_version: str = DEFAULT_MODELS_API_VERSION
    content_filter_annotations: bool = False

    def resolve(self, env: Mapping[str, str]) -> Self:
        resolved = super().resolve(env)
        endpoint = env.get(ENDPOINT_ENV) or self.endpoint
        if endpoint:
            endpoint = _ENDPOINT_SUFFIX.sub("", endpoint.strip())
        if resolved.enabled:
            endpoint = http_url("endpoint", endpoint)
        key_env = self.api_key_env or API_KEY_ENV
        if not self.api_version.strip():
            raise SettingError("api_version", "expected an Azure API version such as " + DEFAULT_API_VERSION)
        return msgspec.structs.replace(resolved, endpoint=endpoint, api_key_env=key_env,
                                       api_key=env.get(key_env) or self.api_key)

    def missing_credentials(self) -> str | None:
        return None if self.api_key else f"set {self.api_key_env}"

    def secrets(self) -> tuple[str, ...]:
        return super().secrets() + ((self.api_key,) if self.api_key else ())


class FoundryProvider(OpenAICompatProvider):
    kind = "foundry"
    settings_type = FoundrySettings
    settings: FoundrySettings  # type: ignore[assignment]

    def __init__(self, settings: FoundrySettings, http: UpstreamHTTP, secrets: tuple[str, ...]) -> None:
        Provider.__init__(self, settings, http, secrets)
        self.auth = ApiKeyAuth(settings.api_key) if settings.api_key else None
        self._headers = self.headers()

    def url(self, operation: str, body: dict[str, Any]) -> str:
        model = str(body.get("model") or "")
        root = self.settings.endpoint
        if model.startswith(DEPLOYMENT_PREFIX):
            deployment = quote(model[len(DEPLOYMENT_PREFIX):], safe="")
            body.pop("model", None)  # the path names the deployment; Azure ignores the body's
            return f"{root}/openai/deployments/{deployment}/{operation}?api-version={self.settings.api_version}"
        if model.startswith(MODELS_PREFIX):
            body["model"] = model[len(MODELS_PREFIX):]
            return f"{root}/models/{operation}?api-version={self.settings.models_api_version}"
        return f"{root}/openai/v1/{operation}"

    # -- Azure's additions ---------------------------------------------------------------------

    def normalize_completion(self, data: dict[str, Any]) -> dict[str, Any]:
        self._strip(data)
        return data

    def normalize_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        self._strip(chunk)
        choices = chunk.get("choices")
        if not choices:
            # The prompt-filter preamble (no choices, empty ids); a usage chunk keeps its usage.
            return chunk if chunk.get("usage") else None
        if all(isinstance(c, dict) and not c.get("delta") and c.get("finish_reason") is None for c in choices):
            return None  # a late annotation of the asynchronous filter: nothing for the client
        return chunk

    def _strip(self, data: dict[str, Any]) -> None:
        for key in _AZURE_TOP_LEVEL:
            data.pop(key, None)
        if self.settings.content_filter_annotations:
            return
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                for key in _AZURE_CHOICE:
                    choice.pop(key, None)

    def error_from_payload(self, status: int, error: Any) -> GatewayError:
        if isinstance(error, dict) and error.get("code") == "content_filter":
            return self._content_filter_error(status, error)
        exc = super().error_from_payload(status, error)
        if isinstance(error, dict) and error.get("code") == "DeploymentNotFound":
            exc.code = "model_not_found"
        return exc

    def _content_filter_error(self, status: int, error: dict[str, Any]) -> GatewayError:
        inner = error.get("innererror") if isinstance(error.get("innererror"), dict) else {}
        result = inner.get("content_filter_result") or inner.get("content_filter_results") or {}
        tripped = [
            f"{name} ({verdict.get('severity') or 'detected'})"
            for name, verdict in (result.items() if isinstance(result, dict) else ())
            if isinstance(verdict, dict) and verdict.get("filtered")
        ]
        which = ", ".join(tripped) or "unspecified category"
        message = redact(f"Upstream {self.name} refused the request: Azure content filter ({which}).", self.secrets)
        return ProviderError(message, status=400 if status < 500 else status, code="content_filter",
                             param=error.get("param") if isinstance(error.get("param"), str) else None,
                             retryable=False)
