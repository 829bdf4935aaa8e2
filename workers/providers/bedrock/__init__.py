"""Amazon Bedrock: chat through Converse and ConverseStream, embeddings through InvokeModel.

Its table::

    [gateway.providers.bedrock]
    enabled = true
    region = "us-east-1"          # AWS_REGION (or AWS_DEFAULT_REGION) overrides it
    # endpoint_url = "https://bedrock-runtime.us-east-1.amazonaws.com"  # AWS_ENDPOINT_URL_BEDROCK_RUNTIME
    # profile = "prod"            # AWS_PROFILE overrides it

Credentials come from botocore's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
/ ``AWS_SESSION_TOKEN``, a profile, SSO, a container or instance role), refreshed by botocore when
they expire; or a Bedrock API key in ``AWS_BEARER_TOKEN_BEDROCK``. Every request is signed by
botocore's SigV4 signer through :class:`SigV4Auth`, an ``httpx.Auth`` that signs the exact bytes
and headers that go on the wire, service name ``bedrock``. The stream's binary event-stream frames
are decoded by botocore's decoder, CRCs checked. The OpenAI ↔ Converse mapping lives in
:mod:`.converse`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Self
from urllib.parse import quote

import botocore.auth
import botocore.awsrequest
import botocore.eventstream
import botocore.session
import httpx
import msgspec

from shared.errors import GatewayError, InvalidRequest, ProviderError

from ..base import Provider, ProviderSettings, http_url
from ..http import BearerAuth, UpstreamHTTP, UpstreamResponse
from . import converse

DEFAULT_REGION = "us-east-1"
SIGNING_NAME = "bedrock"
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ENDPOINT_URL")
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
BEARER_ENV = "AWS_BEARER_TOKEN_BEDROCK"
EVENT_STREAM = "application/vnd.amazon.eventstream"
# Titan embeds one text per call: this many calls run at once for a list of inputs.
EMBED_CONCURRENCY = 8
TOKEN_COUNT_HEADER = "X-Amzn-Bedrock-Input-Token-Count"

_json = msgspec.json.Decoder()
_encode = msgspec.json.encode


class BedrockSettings(ProviderSettings, frozen=True, kw_only=True):
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    bearer_token: str | None = None

    def resolve(self, env: Mapping[str, str]) -> Self:
        resolved = super().resolve(env)
        region = next((env[v] for v in REGION_ENV if env.get(v)), None) or self.region or DEFAULT_REGION
        endpoint = next((env[v] for v in ENDPOINT_ENV if env.get(v)), None) or self.endpoint_url
        endpoint = http_url("endpoint_url", endpoint) if endpoint else f"https://bedrock-runtime.{region}.amazonaws.com"
        return msgspec.structs.replace(resolved, region=region, endpoint_url=endpoint,
                                       profile=env.get("AWS_PROFILE") or self.profile,
                                       bearer_token=env.get(BEARER_ENV) or self.bearer_token)

    def secrets(self) -> tuple[str, ...]:
        return super().secrets() + ((self.bearer_token,) if self.bearer_token else ())


class SigV4Auth(httpx.Auth):
    """AWS Signature Version 4 by botocore's signer, as an ``httpx.Auth``.

    The request is signed as it will be sent: its method, its URL with the model id already
    percent-encoded, its body bytes, and the headers it carries. Credentials are frozen per
    request, so botocore refreshes temporary ones before they expire.
    """

    requires_request_body = True

    def __init__(self, credentials: Any, region: str, service: str = SIGNING_NAME) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        # Only what httpx and aiohttp send unchanged is signed (host, content-type, accept);
        # user-agent and content-length are left out, as botocore itself does.
        signed = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        aws = botocore.awsrequest.AWSRequest(method=request.method, url=str(request.url), data=request.content,
                                             headers=signed)
        botocore.auth.SigV4Auth(self.credentials.get_frozen_credentials(), self.service, self.region).add_auth(aws)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in aws.headers:
                request.headers[name] = aws.headers[name]
        yield request


def aws_credentials(settings: BedrockSettings) -> Any:
    """The credentials botocore's chain finds for this table's profile, or None."""
    session = botocore.session.Session(profile=settings.profile)
    return session.get_credentials()


class BedrockProvider(Provider):
    kind = "bedrock"
    settings_type = BedrockSettings
    settings: BedrockSettings

    def __init__(self, settings: BedrockSettings, http: UpstreamHTTP, secrets: tuple[str, ...]) -> None:
        super().__init__(settings, http, secrets)
        if settings.bearer_token:
            self.auth = BearerAuth(settings.bearer_token)
        else:
            credentials = aws_credentials(settings)
            if credentials is None:
                raise GatewayError(
                    f"provider {self.name!r} has no AWS credentials: set AWS_ACCESS_KEY_ID and "
                    f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or {BEARER_ENV}")
            self.auth = SigV4Auth(credentials, settings.region or DEFAULT_REGION)
        self._headers = {**settings.headers, "Content-Type": "application/json"}

    @property
    def secrets(self) -> tuple[str, ...]:
        """The configured keys, and the AWS credentials signing now: the chain finds those (and
        refreshes temporary ones), so no table names them."""
        if not isinstance(self.auth, SigV4Auth):
            return self._secrets
        frozen = self.auth.credentials.get_frozen_credentials()
        return (*self._secrets, *(v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v))

    @secrets.setter
    def secrets(self, value: tuple[str, ...]) -> None:
        self._secrets = value

    def url(self, model_id: str, operation: str) -> str:
        # The whole id is one path segment: `:` and the `/` of ARNs are percent-encoded.
        return f"{self.settings.endpoint_url}/model/{quote(model_id, safe='')}/{operation}"

    @contextlib.contextmanager
    def upstream_errors(self) -> Iterator[None]:
        """Transport failures, and event-stream frames that fail their checksums, as gateway errors."""
        try:
            with super().upstream_errors():
                yield
        except botocore.eventstream.ParserError as exc:
            raise ProviderError(f"Upstream {self.name} sent a malformed event stream: {type(exc).__name__}") from None

    # -- chat -------------------------------------------------------------------------------

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        model_id = body.pop("model")
        data = await self._invoke(model_id, "converse", converse.to_converse(body))
        return converse.from_converse(data, provider=self.name)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        model_id = body.pop("model")
        request = _encode(converse.to_converse(body))
        translator = converse.StreamTranslator(self.name)
        with self.upstream_errors():
            async with self.http.stream("POST", self.url(model_id, "converse-stream"), content=request,
                                        headers={**self._headers, "Accept": EVENT_STREAM},
                                        auth=self.auth) as response:
                if response.status_code >= 400:
                    raise self._error(response, await response.aread())
                frames = botocore.eventstream.EventStreamBuffer()
                while data := await response.read_some():
                    frames.add_data(data)
                    for message in frames:
                        for chunk in self._translate(translator, message):
                            yield chunk

    def _translate(self, translator: converse.StreamTranslator,
                   message: botocore.eventstream.EventStreamMessage) -> list[dict[str, Any]]:
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "event":
            try:
                payload = _json.decode(message.payload) if message.payload else {}
            except msgspec.DecodeError:
                raise ProviderError(f"Upstream {self.name} sent an event that is not JSON.") from None
            return translator.events(str(headers.get(":event-type")), payload)
        if kind == "exception":
            try:
                payload = _json.decode(message.payload) if message.payload else {}
            except msgspec.DecodeError:
                payload = {"message": message.payload[:500].decode("utf-8", "replace")}
            raise translator.exception(str(headers.get(":exception-type")), payload, self.secrets)
        # `:message-type: error`: a generic failure with its code and message in headers.
        raise translator.exception(str(headers.get(":error-code") or "error"),
                                   {"message": str(headers.get(":error-message") or "")}, self.secrets)

    # -- embeddings -----------------------------------------------------------------------------

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        model_id = body["model"]
        family = converse.embedding_family(model_id)
        if family is None:
            raise InvalidRequest(f"The Bedrock model {model_id!r} is not an embeddings model this gateway can call.",
                                 param="model")
        texts = converse.embedding_texts(body.get("input"))
        if family == "titan":
            vectors, tokens = await self._titan(model_id, texts, body.get("dimensions"))
        else:
            vectors, tokens = await self._cohere(model_id, texts)
        return {
            "object": "list",
            "model": model_id,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _titan(self, model_id: str, texts: list[str], dimensions: Any) -> tuple[list[list[float]], int]:
        gate = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def one(text: str) -> tuple[list[float], int]:
            async with gate:
                data = await self._invoke(model_id, "invoke", converse.titan_request(text, dimensions))
            vector, tokens = converse.titan_vector(data, provider=self.name)
            # Without a count, a words-based estimate keeps metering from reading zero.
            return vector, tokens if tokens is not None else len(text.split())

        results = await asyncio.gather(*(one(t) for t in texts))
        return [v for v, _ in results], sum(t for _, t in results)

    async def _cohere(self, model_id: str, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), converse.COHERE_MAX_TEXTS):
            batch = texts[start:start + converse.COHERE_MAX_TEXTS]
            data, headers = await self._invoke_with_headers(model_id, "invoke", converse.cohere_request(batch))
            vectors += converse.cohere_vectors(data, provider=self.name)
            counted = headers.get(TOKEN_COUNT_HEADER, "")
            # Without the header, a words-based estimate keeps metering from reading zero.
            tokens += int(counted) if counted.isdigit() else sum(len(t.split()) for t in batch)
        return vectors, tokens

    # -- the exchange ------------------------------------------------------------------------------

    async def _invoke(self, model_id: str, operation: str, request: dict[str, Any]) -> Any:
        data, _ = await self._invoke_with_headers(model_id, operation, request)
        return data

    async def _invoke_with_headers(self, model_id: str, operation: str,
                                   request: dict[str, Any]) -> tuple[Any, Mapping[str, str]]:
        with self.upstream_errors():
            response, content = await self.http.request(
                "POST", self.url(model_id, operation), content=_encode(request),
                headers={**self._headers, "Accept": "application/json"}, auth=self.auth)
        if response.status_code >= 400:
            raise self._error(response, content)
        try:
            return _json.decode(content), response.headers
        except msgspec.DecodeError:
            raise ProviderError(f"Upstream {self.name} answered {response.status_code} with a body that is not JSON.") from None

    def _error(self, response: UpstreamResponse, content: bytes) -> GatewayError:
        return converse.error_from_response(response.status_code, response.headers.get("x-amzn-ErrorType"),
                                            content, self.secrets, provider=self.name)
