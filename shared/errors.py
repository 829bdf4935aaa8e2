"""The gateway's error hierarchy.

Every failure a client can see is one of these values. Each knows its HTTP status and its
OpenAI error ``type``/``code``, so the front door renders them all the same way and the
official SDKs raise the matching exception class.
"""

from __future__ import annotations

import re

import msgspec


class ErrorBody(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class GatewayError(Exception):
    """Base of every error rendered as ``{"error": {...}}``.

    ``retryable`` says whether another attempt (the same target later, or the next candidate of
    a fallback) could succeed: true for throttling, timeouts and upstream outages, false for a
    request the upstream will refuse however often it is sent.
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.headers = headers or {}

    def body(self) -> ErrorEnvelope:
        return ErrorEnvelope(ErrorBody(self.message, self.type, self.param, self.code))

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.body())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "unauthorized"


class Forbidden(GatewayError):
    """The token is valid but may not see what it asked for (another user's data, the fleet)."""

    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class QuotaExceeded(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "quota_exceeded"


class UserShareExceeded(GatewayError):
    """One user's jobs hold their whole share of a provider pool (``queue_user_share``): this user
    waits, the pool stays open to the others. Another pool may take it, as for :class:`Overloaded`."""

    status = 429
    type = "rate_limit_error"
    code = "user_queue_share_exceeded"
    retryable = True


class ProviderError(GatewayError):
    """The upstream refused or failed the request; ``status`` mirrors what it means for the client.

    Retryable unless said otherwise: a refusal that would repeat (bad credentials, a request the
    model cannot take) is raised with ``retryable=False`` or as :class:`InvalidRequest`.
    """

    status = 502
    type = "provider_error"
    code = "provider_error"
    retryable = True


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    retryable = True


class NoWorker(GatewayError):
    status = 503
    type = "server_error"
    code = "no_worker_available"
    retryable = True


class Overloaded(GatewayError):
    """Every worker of the pool is busy and its backlog is full: try again in a moment."""

    status = 503
    type = "server_error"
    code = "overloaded"
    retryable = True


class Unavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
    retryable = True


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"


_KINDS: dict[str, type[GatewayError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        ModelNotFound,
        NotFound,
        MethodNotAllowed,
        QuotaExceeded,
        UserShareExceeded,
        ProviderError,
        UpstreamTimeout,
        NoWorker,
        Unavailable,
        InternalError,
    )
}


class WireError(msgspec.Struct, array_like=True):
    """A GatewayError as it travels from a worker to the front door."""

    kind: str
    message: str
    status: int
    code: str | None
    param: str | None = None
    retry_after: str | None = None
    retryable: bool = False

    @classmethod
    def of(cls, exc: GatewayError) -> "WireError":
        return cls(
            kind=type(exc).__name__,
            message=exc.message,
            status=exc.status,
            code=exc.code,
            param=exc.param,
            retry_after=exc.headers.get("Retry-After"),
            retryable=exc.retryable,
        )

    def to_exception(self) -> GatewayError:
        cls = _KINDS.get(self.kind, InternalError)
        headers = {"Retry-After": self.retry_after} if self.retry_after else None
        return cls(self.message, param=self.param, code=self.code, status=self.status, headers=headers,
                   retryable=self.retryable)


# Keys and bearer tokens that upstreams like to echo back ("Incorrect API key provided: sk-...").
_SECRET = re.compile(
    r"(sk-[A-Za-z0-9_\-]{4,}|Bearer\s+[A-Za-z0-9._\-]{8,}|AKIA[0-9A-Z]{12,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9._\-]+)",
    re.IGNORECASE,
)


# This many leading characters of a key are enough to say too much about it.
SECRET_PREFIX_CHARS = 8


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove provider keys from upstream text before it reaches a client or a log.

    :param text: what the upstream said.
    :param secrets: the exact keys this gateway holds; each is masked wherever it appears.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
        if secret and len(secret) > SECRET_PREFIX_CHARS:
            # Upstreams echo keys shortened too ("sk-proj-abcd****wxyz"): the start names the key.
            text = re.sub(re.escape(secret[:SECRET_PREFIX_CHARS]) + r"[^\s\"',;]*", "[redacted]", text)
    return _SECRET.sub("[redacted]", text)
