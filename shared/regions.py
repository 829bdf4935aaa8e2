"""Regional routing: keep a caller's requests on providers in the regions their data may go to.

An extension (``shared/extensions.py``) switched on by ``[gateway.regions]``::

    [gateway.regions]
    claim = "data_region"                 # the token claim naming the caller's residency
    header = "x-data-region"              # optional: a request header that may narrow it further
    [gateway.regions.providers]           # where each provider table sends data
    bedrock = "eu-central-1"
    foundry = "swedencentral"
    openrouter = "us"
    [gateway.regions.allowed]             # residency -> regions its data may go to
    eu = ["eu-central-1", "swedencentral"]
    us = ["us", "us-east-1"]

A caller whose token says ``data_region = "eu"`` is served only by providers in an allowed
region, in the strategy's order; a caller with no such claim is not restricted. A provider with
no region listed counts as outside every residency, so forgetting one never leaks data. When no
candidate is left, the request is refused (400 ``no_route``) rather than sent elsewhere.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .config import ConfigError, Settings
from .extensions import Extension, RequestInfo
from .wire import Target


class RegionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    claim: str = "data_region"
    header: str | None = None
    providers: dict[str, str] = {}
    allowed: dict[str, list[str]] = {}


class RegionRouter(Extension):
    """Filters candidates to the providers in the caller's allowed regions."""

    name = "regions"

    def __init__(self, settings: RegionSettings) -> None:
        self.settings = settings
        self._allowed = {residency: frozenset(regions) for residency, regions in settings.allowed.items()}

    def residency(self, request: RequestInfo) -> str | None:
        value = request.claims.get(self.settings.claim)
        if self.settings.header and request.headers.get(self.settings.header.lower()):
            header = request.headers[self.settings.header.lower()]
            # A header may only narrow the token's residency, never widen or replace it.
            if value is None or header == value:
                value = header
        return str(value) if value is not None else None

    async def route(self, request: RequestInfo, candidates: list[Target]) -> list[Target]:
        residency = self.residency(request)
        if residency is None:
            return candidates
        allowed = self._allowed.get(residency, frozenset())
        return [t for t in candidates if self.settings.providers.get(t.provider) in allowed]


def region_router(settings: Settings) -> RegionRouter:
    """The factory ``build_extensions`` calls when ``[gateway.regions]`` is set."""
    table: Any = settings.regions or {}
    try:
        return RegionRouter(msgspec.convert(table, RegionSettings))
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{settings.source}: gateway.regions: {exc}") from None
