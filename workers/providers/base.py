"""The interface every provider module implements, and the settings every provider table shares.

A provider translates between the OpenAI shapes the gateway speaks and one upstream's wire
format. Nothing outside its module knows that format: jobs hand it OpenAI request bodies and
get OpenAI response objects (or chunk objects) back, and upstream failures come out as
:class:`shared.errors.GatewayError` values mapped in one place per provider.

A provider module owns its settings too: a :class:`ProviderSettings` subclass whose fields are
the keys of its ``[gateway.providers.NAME]`` table (with their defaults), and whose
:meth:`~ProviderSettings.resolve` reads the environment variables of that provider. Adding a
provider means writing its module and naming it in ``workers/providers/__init__.py``; the config
loader, the worker and the front door need no change.
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Self

import httpx
import msgspec

from .http import UpstreamHTTP, map_upstream_errors


# Extra headers whose values are credentials (`Authorization`, `x-api-key`, `X-Auth-Token`, ...).
_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)


class SettingError(ValueError):
    """A provider table's value is wrong; ``key`` is the table key, the message what was expected."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class ProviderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The keys every ``[gateway.providers.NAME]`` table takes.

    :param kind: which provider module serves the table; defaults to the table's name when that
        is a kind (``[gateway.providers.bedrock]``).
    :param enabled: whether workers serve it and the registry routes to it; each kind says what
        a table that leaves it out means (:attr:`enabled_by_default`).
    :param headers: extra headers sent with every upstream request.
    """

    kind: str | None = None
    enabled: bool | None = None
    headers: dict[str, str] = {}
    # The table's name; filled in by the loader, not a key of the table.
    name: str = ""

    # Whether a table that does not say `enabled` is on: a generic upstream the user wrote a
    # table for is meant to be used; a cloud account stays off until asked.
    enabled_by_default: ClassVar[bool] = False

    def resolve(self, env: Mapping[str, str]) -> Self:
        """This table with the environment applied and every value checked.

        :raises SettingError: naming the key that is wrong.
        """
        enabled = self.enabled if self.enabled is not None else self.enabled_by_default
        return msgspec.structs.replace(self, enabled=enabled)

    def missing_credentials(self) -> str | None:
        """What to set for this provider to have credentials, or None when it has them.

        A model is served by the first of its routes whose provider has credentials, and a worker
        refuses to start for a provider that has none.
        """
        return None

    def secrets(self) -> tuple[str, ...]:
        """Every key this table holds, redacted from upstream messages and logs: a subclass adds its
        own keys to these, the values of ``headers`` that carry credentials."""
        return tuple(value for name, value in self.headers.items() if _CREDENTIAL_HEADER.search(name) and value)


def http_url(key: str, value: str | None) -> str:
    """``value`` checked as an http(s) base URL, without a trailing slash."""
    if not value:
        raise SettingError(key, "expected the upstream's base URL")
    if not re.match(r"https?://", value):
        raise SettingError(key, f"expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


class Provider(abc.ABC):
    """One configured upstream.

    :param settings: its ``[gateway.providers.NAME]`` table, resolved.
    :param http: the worker process's pooled client, shared by every provider.
    :param secrets: every key the gateway holds, redacted from upstream messages.
    """

    kind: ClassVar[str]
    settings_type: ClassVar[type[ProviderSettings]]

    def __init__(self, settings: ProviderSettings, http: UpstreamHTTP, secrets: tuple[str, ...]) -> None:
        self.settings = settings
        self.name = settings.name
        self.http = http
        self.secrets = secrets
        self.auth: httpx.Auth | None = None

    def upstream_errors(self) -> contextlib.AbstractContextManager[None]:
        """The one place a provider's transport failures become gateway errors: wrap every call in it."""
        return map_upstream_errors(self.name)

    @abc.abstractmethod
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed chat completion: an OpenAI request body in, a ``chat.completion`` out."""

    @abc.abstractmethod
    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streamed chat completion, as ``chat.completion.chunk`` objects.

        The body asks for usage; the last chunks may carry it with empty ``choices``.
        Closing the iterator early must close the upstream connection.
        """

    @abc.abstractmethod
    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Embeddings with float vectors: an OpenAI embeddings body in, the OpenAI list object out."""
