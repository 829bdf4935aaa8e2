"""The extension seam: quota checks, routing and usage hooks that plug in without forking.

An extension is any object with some of the three hooks below; :class:`Extension` is the
no-op base to subclass. They are handed to the front door (``create_app(extensions=[...])``)
and to the worker process as objects, or named in config by dotted path::

    [gateway]
    extensions = ["mycompany.gateway:make_extension"]   # a factory called with the Settings

Hooks run in the order the extensions are listed:

- ``check_quota(request)``, front door, before the job is enqueued: raise a
  :class:`shared.errors.GatewayError` (usually ``QuotaExceeded``) to refuse; return a
  :class:`Reservation` (or None) to hold capacity until the request is settled. Reservations
  travel with the job, so whichever worker serves it settles them.
- ``route(request, candidates)``, front door, after the strategy ordered the candidates: return
  them reordered or filtered (regional routing). Returning none refuses the request.
- ``after_usage(usage, reservations)``, worker (or the front door when a worker was lost), once
  per request after its usage record is written, whether it succeeded or failed: settle
  reservations against the real usage, or release them when nothing was used.

A hook that raises anything but a ``GatewayError`` is a bug in the extension: the request fails
with a 500 (front door) or the error is logged (after usage); the gateway itself carries on.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .config import Settings
    from .usage import UsageProperties
    from .wire import Target


class RequestInfo(msgspec.Struct, frozen=True):
    """What the hooks may know about a request.

    :param request_id: the gateway's id for it (also ``X-Request-Id``).
    :param user_id: the token's ``sub``.
    :param claims: every claim of the caller's token.
    :param headers: the request's headers, lower-cased names (``authorization`` removed).
    :param kind: ``chat`` or ``embeddings``.
    :param model: the name the client asked for (a model id or an alias).
    :param prompt_tokens: an estimate of the prompt's size in tokens.
    :param max_tokens: the completion limit the client set, if any.
    """

    request_id: str
    user_id: str
    claims: Mapping[str, Any]
    headers: Mapping[str, str]
    kind: str
    model: str
    prompt_tokens: int
    max_tokens: int | None = None


class Reservation(msgspec.Struct, frozen=True, array_like=True):
    """Capacity an extension holds for a request until ``after_usage`` settles it.

    :param extension: the name of the extension that made it (its ``name`` attribute).
    :param data: whatever that extension needs to settle it; it travels through the queue, so
        keep it small and msgpack-able.
    """

    extension: str
    data: Any = None


class Extension:
    """The no-op extension: subclass it and override the hooks you need."""

    name: str = "extension"

    async def check_quota(self, request: RequestInfo) -> Reservation | None:
        return None

    async def route(self, request: RequestInfo, candidates: list[Target]) -> list[Target]:
        return candidates

    async def after_usage(self, usage: UsageProperties, reservations: Sequence[Reservation]) -> None:
        return None

    def response_headers(self, reservations: Sequence[Reservation]) -> dict[str, str]:
        """Headers for the client's response (e.g. ``x-ratelimit-remaining-*``) from this extension's reservations."""
        return {}

    async def close(self) -> None:
        """Release what the extension holds (connections); called once at shutdown."""


def build_extensions(settings: Settings, redis: Redis) -> list[Extension]:
    """The extensions a gateway process runs with: the built-in region router when
    ``[gateway.regions]`` is set, the built-in quota when ``[gateway.quota]`` is, then those named
    in ``extensions``."""
    extensions: list[Extension] = []
    if settings.regions is not None:
        from .regions import region_router

        extensions.append(region_router(settings))
    if settings.quota is not None:
        from .keys import Keys
        from .quota import QuotaExtension, QuotaSettings

        extensions.append(QuotaExtension(redis, Keys(settings.key_prefix),
                                         QuotaSettings.from_table(settings.quota, settings.source)))
    return extensions + load_extensions(settings.extensions, settings)


def load_extensions(paths: Sequence[str], settings: Settings) -> list[Extension]:
    """The extensions named by dotted paths ``package.module:factory``, each factory called with ``settings``.

    :raises ConfigError: a path that does not name an importable callable.
    """
    from .config import ConfigError

    extensions = []
    for path in paths:
        module_name, _, attribute = path.partition(":")
        if not module_name or not attribute:
            raise ConfigError(f"{settings.source}: gateway.extensions: expected 'package.module:factory', got {path!r}")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{settings.source}: gateway.extensions: {path!r} cannot be loaded: {exc}") from None
        extensions.append(factory(settings))
    return extensions
