"""The interface every provider module implements.

A provider translates between the OpenAI shapes the gateway speaks and one upstream's wire
format. Nothing outside its module knows that format: jobs hand it OpenAI request bodies and
get OpenAI response objects (or chunk objects) back, and upstream failures come out as
:class:`shared.errors.GatewayError` values mapped in one place per provider.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from shared.config import ProviderSettings

from .http import UpstreamHTTP, map_upstream_errors


class Provider(abc.ABC):
    """One configured upstream.

    :param settings: its ``[gateway.providers.NAME]`` table, resolved.
    :param http: the worker process's pooled client, shared by every provider.
    :param secrets: every key the gateway holds, redacted from upstream messages.
    """

    kind: ClassVar[str]

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
