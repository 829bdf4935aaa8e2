"""Any upstream that speaks the OpenAI API itself (``kind = "openai"``).

The bodies pass through almost as they are; what this module owns is the HTTP exchange,
reading Server-Sent Events leniently, and mapping upstream errors into ours.

Its table::

    [gateway.providers.local]
    kind = "openai"
    base_url = "http://localhost:8000/v1"   # or `endpoint`
    api_key_env = "LOCAL_API_KEY"           # the variable holding the key, if the upstream wants one
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Self

import msgspec

from shared.errors import GatewayError, InvalidRequest, ProviderError, UpstreamTimeout, redact

from .base import Provider, ProviderSettings, SettingError, http_url
from .http import BearerAuth, UpstreamHTTP, UpstreamResponse
from .sse import SSEDecoder

_json = msgspec.json.Decoder()
_encode = msgspec.json.encode
# The code of a 200 the protocol does not allow: an HTML page, a body or stream event that is not
# JSON, a stream that stops before its end. Never passed on as a success.
BAD_RESPONSE = "bad_upstream_response"
EVENT_STREAM = "text/event-stream"


class OpenAISettings(ProviderSettings, frozen=True, kw_only=True):
    """``base_url`` (``endpoint`` is another name for it), and the key: read from the variable named
    by ``api_key_env`` (or given as ``api_key``, which the variable overrides)."""

    base_url: str | None = None
    endpoint: str | None = None
    api_key_env: str | None = None
    api_key: str | None = None

    enabled_by_default: ClassVar[bool] = True
    default_base_url: ClassVar[str | None] = None
    default_api_key_env: ClassVar[str | None] = None

    def resolve(self, env: Mapping[str, str]) -> Self:
        resolved = super().resolve(env)
        if self.base_url and self.endpoint and self.base_url != self.endpoint:
            raise SettingError("endpoint", "set base_url or endpoint, not both")
        base_url = self.base_url or self.endpoint or self.default_base_url
        if resolved.enabled:
            base_url = http_url("base_url", base_url)
        key_env = self.api_key_env or self.default_api_key_env
        api_key = (env.get(key_env) if key_env else None) or self.api_key
        return msgspec.structs.replace(resolved, base_url=base_url.rstrip("/") if base_url else None,
                                       endpoint=None, api_key_env=key_env, api_key=api_key)

    def missing_credentials(self) -> str | None:
        if self.api_key_env and not self.api_key:
            return f"set {self.api_key_env}"
        return None

    def secrets(self) -> tuple[str, ...]:
        return super().secrets() + ((self.api_key,) if self.api_key else ())


class OpenAICompatProvider(Provider):
    kind = "openai"
    settings_type = OpenAISettings
    settings: OpenAISettings

    def __init__(self, settings: OpenAISettings, http: UpstreamHTTP, secrets: tuple[str, ...]) -> None:
        super().__init__(settings, http, secrets)
        self.auth = BearerAuth(settings.api_key) if settings.api_key else None
        self._headers = self.headers()

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.settings.headers}

    def url(self, operation: str, body: dict[str, Any]) -> str:
        """Where ``operation`` (``chat/completions`` or ``embeddings``) of this body is sent.

        An upstream that names its model in the URL takes it from ``body["model"]`` here.
        """
        return f"{self.settings.base_url}/{operation}"

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._post_json(self.url("chat/completions", body), body)
        self.check_body(data)
        return self.normalize_completion(data)

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._post_json(self.url("embeddings", body), body)
        self.check_body(data)
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        url = self.url("chat/completions", body)
        with self.upstream_errors():
            async with self.http.stream("POST", url, content=_encode(body),
                                        headers=self._headers, auth=self.auth) as response:
                if response.status_code >= 400:
                    raise self.error_from_response(response, await response.aread())
                self._check_event_stream(response)
                decoder = SSEDecoder(self.http.max_line_bytes)
                # Whether a choice finished: a stream cut after that (no [DONE]) still said everything.
                finished = False
                while True:
                    data = await response.read_some()
                    for event in decoder.feed(data) if data else decoder.close():
                        payload = event.data.strip()
                        if payload == b"[DONE]":
                            # Read the body to its end so the connection goes back to the pool.
                            await response.drain()
                            return
                        if not payload:
                            continue
                        try:
                            chunk = _json.decode(payload)
                        except msgspec.DecodeError:
                            raise ProviderError(f"Upstream {self.name} sent a stream event that is not JSON.",
                                                code=BAD_RESPONSE) from None
                        if not isinstance(chunk, dict):
                            raise ProviderError(f"Upstream {self.name} sent a stream event that is not a JSON object.",
                                                code=BAD_RESPONSE)
                        self.check_chunk(chunk)
                        finished = finished or any(isinstance(c, dict) and c.get("finish_reason")
                                                   for c in chunk.get("choices") or ())
                        normalized = self.normalize_chunk(chunk)
                        if normalized is not None:
                            yield normalized
                    if not data:
                        if not finished:
                            raise ProviderError(f"Upstream {self.name} ended the stream before its end "
                                                "(no finish_reason, no [DONE]).", code=BAD_RESPONSE)
                        return

    def _check_event_stream(self, response: UpstreamResponse) -> None:
        """A 2xx that is not an event stream (a proxy's HTML page, say) is refused before it is read;
        a missing ``Content-Type`` is let through, the events are checked anyway."""
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type and media_type != EVENT_STREAM:
            raise ProviderError(f"Upstream {self.name} answered {response.status_code} with {media_type}, "
                                "not an event stream.", code=BAD_RESPONSE)

    # -- the upstream's quirks, overridden per provider ------------------------------------

    def normalize_completion(self, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def normalize_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk as the client should see it; None drops it (an upstream's own annotations)."""
        return chunk

    def check_body(self, data: Any) -> None:
        """Errors can arrive inside a 200 body once the upstream has started."""
        if not isinstance(data, dict):
            raise ProviderError(f"Upstream {self.name} answered with something other than a JSON object.",
                                code=BAD_RESPONSE)
        if data.get("error"):
            raise self.error_from_payload(502, data["error"])

    def check_chunk(self, chunk: dict[str, Any]) -> None:
        """A stream that already sent its 200 reports failure inside a data event."""
        if chunk.get("error"):
            raise self.error_from_payload(502, chunk["error"])
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason") == "error":
                raise ProviderError(f"Upstream {self.name} ended the stream with an error.")

    # -- errors ------------------------------------------------------------------------------

    async def _post_json(self, url: str, body: dict[str, Any]) -> Any:
        with self.upstream_errors():
            response, content = await self.http.request("POST", url, content=_encode(body),
                                                        headers=self._headers, auth=self.auth)
        if response.status_code >= 400:
            raise self.error_from_response(response, content)
        try:
            return _json.decode(content)
        except msgspec.DecodeError:
            media_type = response.headers.get("content-type", "").partition(";")[0].strip() or "no Content-Type"
            raise ProviderError(f"Upstream {self.name} answered {response.status_code} with a body that is not "
                                f"JSON ({media_type}, {len(content)} bytes).", code=BAD_RESPONSE) from None

    def error_from_response(self, response: UpstreamResponse, content: bytes) -> GatewayError:
        try:
            payload = _json.decode(content)
        except msgspec.DecodeError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if error is None:
            error = payload if isinstance(payload, dict) else {"message": content[:500].decode("utf-8", "replace")}
        exc = self.error_from_payload(response.status_code, error)
        retry_after = response.headers.get("retry-after")
        if not retry_after and response.headers.get("retry-after-ms", "").isdigit():
            retry_after = str(max(1, round(int(response.headers["retry-after-ms"]) / 1000)))
        if retry_after and exc.status in (429, 503):
            exc.headers["Retry-After"] = retry_after
        return exc

    def error_from_payload(self, status: int, error: Any) -> GatewayError:
        """Map an upstream error object to ours. ``code`` may be a number (OpenRouter) or a string."""
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("Message") or "no detail")
            raw_code = error.get("code")
        else:
            message, raw_code = str(error), None
        if isinstance(raw_code, int) and 400 <= raw_code <= 599 and status < 400:
            status = raw_code
        code = raw_code if isinstance(raw_code, str) and not raw_code.isdigit() else None
        text = redact(f"Upstream {self.name} returned {status}: {message}", self.secrets)
        if status in (400, 413, 422):
            return InvalidRequest(text, code=code or "provider_error")
        if status == 429:
            return ProviderError(text, status=429, code=code or "rate_limit_exceeded")
        if status in (408, 504):
            return UpstreamTimeout(text)
        if 400 <= status < 500:
            # Credentials, permissions, a model the upstream does not have: asking again will not help.
            return ProviderError(text, code="provider_error", retryable=False)
        return ProviderError(text, code="provider_error")
