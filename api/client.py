"""What the command line needs to talk to a running gateway: where it is, who you are, and errors
as one readable line.

- ``REACTOR_URL`` (default ``http://127.0.0.1:8004``) picks the gateway; the Identity service is
  at ``REACTOR_AUTH_URL``, by default the gateway's embedded one at ``{REACTOR_URL}/auth/v1``.
- ``reactor auth login`` stores the tokens in ``$XDG_CONFIG_HOME/reactor/credentials.json``
  (``~/.config/reactor/…``), readable by the user only. :func:`access_token` refreshes the access
  token when it has expired (refresh tokens rotate: the new one is stored at once).
  ``REACTOR_TOKEN`` overrides the stored token and is never refreshed.

The Identity HTTP API (embedded or external):

- ``POST {auth}/token?grant_type=password`` ``{"email", "password"}`` and
  ``POST {auth}/token?grant_type=refresh_token`` ``{"refresh_token"}`` → ``{"access_token",
  "token_type": "bearer", "expires_in", "expires_at", "refresh_token", "user": {"id", "email"}}``
- ``POST {auth}/logout`` (bearer access token, body ``{"refresh_token"}``) → 204
- ``GET {auth}/user`` (bearer access token) → ``{"id", "email"}``
- ``GET {auth}/.well-known/jwks.json`` → the keys the gateway verifies access tokens with
- errors in the gateway's shape ``{"error": {"message", "type", "param", "code"}}``
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec

DEFAULT_URL = "http://127.0.0.1:8004"
AUTH_PATH = "/auth/v1"
# Refresh this long before the access token expires, so a call never starts with one about to lapse.
REFRESH_MARGIN_S = 30
TIMEOUT = httpx.Timeout(30.0, connect=5.0)

# Friendlier words for the codes a user meets most, with what to do next.
HINTS = {
    "model_not_found": "`reactor ai models list` shows what is served",
    "unauthorized": "sign in with `reactor auth login EMAIL`, or set REACTOR_TOKEN",
    "invalid_credentials": "check the email and password",
    "no_worker_available": "start a worker (`reactor worker`) or check `reactor ai doctor`",
    "provider_error": "the upstream provider failed; `reactor ai doctor` checks each provider",
    "quota_exceeded": "wait for the Retry-After time, or ask for a higher quota",
    "too_many_attempts": "too many failed sign-ins; wait for the Retry-After time",
    "invalid_grant": "the session has ended; sign in again with `reactor auth login EMAIL`",
}


class ClientError(Exception):
    """A failure to show as one line: ``code`` is the gateway's error code when it sent one."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def line(self) -> str:
        hint = HINTS.get(self.code or "")
        prefix = f"{self.code}: " if self.code else ""
        return f"{prefix}{self.message}" + (f" ({hint})" if hint else "")


class Credentials(msgspec.Struct):
    url: str
    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None
    email: str | None = None
    user_id: str | None = None


def gateway_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("REACTOR_URL") or DEFAULT_URL).rstrip("/")


def auth_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("REACTOR_AUTH_URL") or gateway_url(env) + AUTH_PATH).rstrip("/")


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "reactor" / "credentials.json"


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials | None:
    path = credentials_path(env)
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save_credentials(credentials: Credentials, env: Mapping[str, str] | None = None) -> Path:
    """Write the credentials readable by the user only (created 0600, replaced atomically)."""
    path = credentials_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.encode(credentials))
    os.replace(tmp, path)
    return path


def clear_credentials(env: Mapping[str, str] | None = None) -> bool:
    try:
        credentials_path(env).unlink()
    except FileNotFoundError:
        return False
    return True


def error_from(response: httpx.Response) -> ClientError:
    """The gateway's (or Identity's) error body as a :class:`ClientError`."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return ClientError(message or f"HTTP {response.status_code} from {response.request.url}", code,
                       response.status_code)


def credentials_from(answer: Mapping[str, Any], url: str) -> Credentials:
    """Credentials from a token answer of the Identity API."""
    user = answer.get("user") or {}
    expires_at = answer.get("expires_at") or (time.time() + float(answer.get("expires_in") or 0))
    return Credentials(url=url, access_token=answer["access_token"], refresh_token=answer.get("refresh_token"),
                       expires_at=float(expires_at), email=user.get("email"), user_id=user.get("id"))


def refresh(credentials: Credentials, env: Mapping[str, str] | None = None) -> Credentials:
    """A new access token (and a new refresh token: the old one is spent) from the Identity service."""
    if not credentials.refresh_token:
        raise ClientError("the stored session cannot be refreshed; sign in again", "unauthorized")
    try:
        response = httpx.post(f"{auth_url(env)}/token", params={"grant_type": "refresh_token"},
                              json={"refresh_token": credentials.refresh_token}, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the Identity service at {auth_url(env)}: {exc}") from None
    if response.status_code != 200:
        raise ClientError("the session has ended; sign in again", "unauthorized", response.status_code)
    fresh = credentials_from(response.json(), credentials.url)
    save_credentials(fresh, env)
    return fresh


def access_token(env: Mapping[str, str] | None = None) -> str:
    """``REACTOR_TOKEN``, else the stored token, refreshed first when it has (nearly) expired.

    :raises ClientError: not signed in, or the session cannot be refreshed.
    """
    env = os.environ if env is None else env
    if env.get("REACTOR_TOKEN"):
        return env["REACTOR_TOKEN"]
    credentials = load_credentials(env)
    if credentials is None:
        raise ClientError("not signed in", "unauthorized")
    if credentials.expires_at is not None and credentials.expires_at - REFRESH_MARGIN_S < time.time():
        credentials = refresh(credentials, env)
    return credentials.access_token


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
