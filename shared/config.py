"""Configuration: ``reactor.toml`` plus the environment, read once into a typed object.

Precedence, lowest first: built-in defaults, the ``[gateway]`` (or ``[ai]``) section of the
config file, then the environment variables of the product page. Command-line flags are
applied by the CLI on top of the result. Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

DEFAULT_BIND = "0.0.0.0:8004"
# The largest non-streamed body a worker reads from an upstream (a completion, an embeddings list,
# an error). The biggest honest answer is an embeddings list of 2,048 inputs of 3,072 floats, about
# 130 MB as JSON; past the limit an upstream is not trusted with the worker's memory.
DEFAULT_MAX_UPSTREAM_RESPONSE_BYTES = 256 * 1024 * 1024
# The longest line of a streamed upstream body (an SSE `data:` line holding, say, a large tool
# call's arguments in one event).
DEFAULT_MAX_STREAM_LINE_BYTES = 16 * 1024 * 1024
CONFIG_FILE_NAME = "reactor.toml"


class ConfigError(ValueError):
    """A bad config file or value; the message names the file, the key and what was expected."""


Seconds = Annotated[float, Meta(gt=0, description="a positive number of seconds")]
Count = Annotated[int, Meta(gt=0, description="a positive integer")]


class RoutingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[gateway.routing]``: how far a request falls back, and when a route is rested.

    :param max_attempts: targets a request may try in all, the first included.
    :param cooldown_failures: retryable failures within ``cooldown_window`` that cool a route down
        (a 401 or 403 cools it at once).
    :param cooldown_window: seconds over which failures are counted.
    :param cooldown_seconds: how long a cooled route is skipped; after it, one probe decides.
    """

    max_attempts: Annotated[int, Meta(ge=1, description="a positive integer")] = 3
    cooldown_failures: Annotated[int, Meta(ge=1, description="a positive integer")] = 3
    cooldown_window: Seconds = 60.0
    cooldown_seconds: Seconds = 30.0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the gateway reads at start-up. Passed down; never re-read.

    Each field is a key of the ``[gateway]`` section, declared once here with its default and its
    constraint; ``ENV`` names the ones an environment variable overrides. Provider tables are
    typed by their own modules (``workers/providers``).
    """

    bind: str = DEFAULT_BIND
    redis_url: str | None = None
    # How long any one Redis call, or connecting, may take before it fails (shared/redis_client.py).
    redis_timeout: Seconds = 3.0
    key_prefix: Annotated[str, Meta(pattern=r"^\S+$", description="a non-empty prefix without spaces")] = "reactor:"
    data_dir: Path | None = None
    auth_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    registry_overlay: Path | None = None
    registry_url: str | None = None
    registry_optional: bool = False
    registry_timeout: Seconds = 5.0
    # How often a `registry_url` overlay is fetched again (an overlay file is watched for changes).
    registry_refresh: Seconds = 300.0
    max_body_bytes: Count = 8 * 1024 * 1024
    # The longest non-streamed body a worker reads from an upstream; a longer one is a 502
    # `upstream_response_too_large` (workers/providers/http.py).
    max_upstream_response_bytes: Count = DEFAULT_MAX_UPSTREAM_RESPONSE_BYTES
    # The longest line of a streamed upstream body (one SSE event); a longer one ends the stream with
    # `upstream_response_too_large` (workers/providers/sse.py).
    max_stream_line_bytes: Count = DEFAULT_MAX_STREAM_LINE_BYTES
    queue_timeout: Seconds = 10.0
    connect_timeout: Seconds = 10.0
    read_timeout: Seconds = 300.0
    request_timeout: Seconds = 600.0
    heartbeat_interval: Seconds = 2.0
    # s between SSE comments (`: keep-alive`) while a stream waits for its first token, so proxies
    # that cut idle connections (nginx's proxy_read_timeout is 60 s) keep it open.
    sse_keepalive: Seconds = 15.0
    worker_concurrency: Count = 2000
    queue_backlog: Annotated[int, Meta(ge=0, description="a number of jobs, 0 or more")] = 256
    # The part of a provider pool's capacity (its live workers' slots plus queue_backlog) that the
    # jobs of one user, queued or running, may hold once its workers are all busy; past it that user
    # gets 429 while others still get in. 1 lets one user fill a pool.
    queue_user_share: Annotated[float, Meta(gt=0, le=1, description="a fraction above 0, at most 1")] = 0.5
    poll_delay: Seconds = 0.5
    usage_retention_days: Count = 400
    # SIGTERM: how long the front door keeps serving with health "draining" so load balancers stop
    # sending, before it stops accepting connections.
    drain_seconds: Annotated[float, Meta(ge=0, description="a number of seconds, 0 or more")] = 5.0
    # SIGTERM: how long open streams (front door) and running jobs (worker) may take to finish.
    shutdown_grace: Seconds = 30.0
    # Extensions by dotted path, "package.module:factory" (see shared/extensions.py).
    extensions: list[str] = []
    # `[gateway.routing]`: fallback and route health.
    routing: RoutingSettings = msgspec.field(default_factory=lambda: RoutingSettings())
    # `[gateway.quota]`: per-user limits (shared/quota.py); absent, no quota is enforced.
    quota: dict[str, Any] | None = None
    # `[gateway.regions]`: keep callers' requests within their data region (shared/regions.py).
    regions: dict[str, Any] | None = None
    providers: dict[str, Any] = {}
    # Where the values came from, for messages; not a key of the section.
    source: str = "<defaults>"

    @property
    def enabled_providers(self) -> dict[str, Any]:
        return {name: p for name, p in self.providers.items() if p.enabled}

    @property
    def host_port(self) -> tuple[str, int]:
        return split_bind(self.bind, "bind")

    @property
    def usage_spool(self) -> Path:
        """Where usage records wait while Redis is unreachable."""
        assert self.data_dir is not None
        return self.data_dir / "usage-spool.jsonl"

    def secrets(self) -> tuple[str, ...]:
        """Every provider key this gateway holds, for redaction."""
        return tuple(secret for p in self.providers.values() for secret in p.secrets())


# Settings an environment variable overrides (the product page's names), over the file.
ENV = {"bind": "REACTOR_AI_BIND", "redis_url": "REDIS_URL", "auth_url": "REACTOR_AI_AUTH_URL",
       "data_dir": "REACTOR_DATA_DIR"}
# Provider tables every gateway has, even when reactor.toml does not mention them: OpenRouter
# serves every built-in model out of the box.
DEFAULT_PROVIDERS = ("openrouter",)


def split_bind(value: str, key: str = "REACTOR_AI_BIND") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ConfigError(f"{key}: expected HOST:PORT such as {DEFAULT_BIND}, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _check_registry_url(url: str, where: str) -> None:
    """The registry decides where requests go and what they cost: it is fetched over https only,
    except from this machine itself (a file server beside the gateway, a test)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ConfigError(f"{where}: expected an https:// URL, got {url!r}") from None
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host and _is_loopback(host):
        return
    if parts.scheme == "http":
        raise ConfigError(f"{where}: must be https:// (plain http is allowed only for localhost, 127.0.0.0/8 "
                          f"or ::1), got {url!r}")
    raise ConfigError(f"{where}: expected an https:// URL, got {url!r}")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def find_config_file(explicit: str | None, env: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """``--config``, else ``REACTOR_CONFIG``, else ``./reactor.toml`` when it exists."""
    if explicit:
        return Path(explicit)
    if env.get("REACTOR_CONFIG"):
        return Path(env["REACTOR_CONFIG"])
    candidate = (cwd or Path.cwd()) / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (if any) and the environment into :class:`Settings`.

    :param path: the file named by ``--config``; when None, ``REACTOR_CONFIG`` or ``./reactor.toml``.
    :param env: the environment to read; ``os.environ`` when None.
    """
    env = os.environ if env is None else env
    file = find_config_file(str(path) if path else None, env)
    source = str(file) if file else "<defaults>"
    base_dir = file.parent if file else Path.cwd()
    section: dict = _read_section(file) if file is not None else {}
    if "source" in section:
        raise ConfigError(f"{source}: gateway.source: unknown setting")
    # Provider tables are converted one by one, each by its own type: msgspec's error path does
    # not name a dict key.
    raw_providers = section.pop("providers", {})
    if not isinstance(raw_providers, dict):
        raise ConfigError(f"{source}: gateway.providers: expected a table of provider tables")
    for key, var in ENV.items():
        if env.get(var):
            section[key] = env[var]
    try:
        settings = msgspec.convert(section, Settings, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, 'gateway', section)}") from None
    if env.get(ENV["bind"]):
        split_bind(settings.bind, ENV["bind"])
    else:
        split_bind(settings.bind, f"{source}: gateway.bind")
    if settings.registry_overlay and settings.registry_url:
        raise ConfigError(f"{source}: gateway.registry_url: set registry_overlay or registry_url, not both")
    if settings.registry_url:
        _check_registry_url(settings.registry_url, f"{source}: gateway.registry_url")

    providers = {name: _provider(name, raw, source, env) for name, raw in raw_providers.items()}
    for name in DEFAULT_PROVIDERS:
        if name not in providers:
            providers[name] = _provider(name, {}, source, env)

    if settings.data_dir is not None:
        data_dir = base_dir / settings.data_dir.expanduser()
    else:
        xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        data_dir = Path(xdg) / "reactor"
    overlay = base_dir / settings.registry_overlay.expanduser() if settings.registry_overlay else None
    return msgspec.structs.replace(settings, source=source, data_dir=data_dir, registry_overlay=overlay,
                                   auth_url=settings.auth_url or None, providers=providers)


def _decode_path(type_: type, value: Any) -> Any:
    if type_ is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _provider(name: str, raw: Any, source: str, env: Mapping[str, str]) -> Any:
    """One ``[gateway.providers.NAME]`` table, typed and resolved by its provider's module."""
    # Imported here: the provider modules import this one for ConfigError-free helpers, and a
    # process reading the config loads only the kinds it names.
    from workers.providers import KINDS, SettingError, settings_type

    key = f"gateway.providers.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ConfigError(f"{source}: {key}: provider names may use letters, digits, '-' and '_'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {key}: expected a table")
    kind = raw.get("kind") or (name if name in KINDS and name != "openai" else None)
    if not isinstance(kind, str) or kind not in KINDS:
        got = f", got {kind!r}" if kind is not None else ""
        raise ConfigError(f"{source}: {key}.kind: expected one of {', '.join(KINDS)}{got}")
    try:
        table = msgspec.convert({**raw, "kind": kind}, settings_type(kind))
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, key, raw)}") from None
    try:
        return msgspec.structs.replace(table, name=name).resolve(env)
    except SettingError as exc:
        raise ConfigError(f"{source}: {key}.{exc.key}: {exc}") from None


def _read_section(file: Path) -> dict:
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    gateway, ai = doc.get("gateway", {}), doc.get("ai", {})
    for name, value in (("gateway", gateway), ("ai", ai)):
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {name}: expected a table [{name}]")
    # The page names both sections; [ai] is an alias. A key set differently in both is ambiguous.
    for key in gateway.keys() & ai.keys():
        if gateway[key] != ai[key]:
            raise ConfigError(f"{file}: {key} is set differently in [gateway] and [ai]; keep one")
    return {**ai, **gateway}


_PATH = re.compile(r"`\$((?:\.[^`\[]+|\[\d+\])*)`")


def _describe(exc: msgspec.ValidationError, root: str, given: Mapping[str, Any]) -> str:
    """Turn msgspec's ``... - at `$.providers.x.enabled``` into ``key gateway.providers.x.enabled: ...``."""
    text = str(exc)
    match = _PATH.search(text)
    where = root + (match.group(1) if match else "")
    what = text.split(" - at ")[0]
    if what.startswith("Object contains unknown field"):
        field = what.split("`")[1]
        return f"{where}.{field}: unknown setting"
    if what.startswith("Expected `") and ", got `" not in what:
        # A bound or pattern: say what the setting takes rather than msgspec's bound or regex.
        description = _constraint_description(where.rsplit(".", 1)[-1])
        if description:
            return f"{where}: expected {description}"
    return f"{where}: {what}"


def _constraint_description(field: str) -> str | None:
    """The ``description`` a constrained field of :class:`Settings` carries, e.g. "a positive integer"."""
    for info in msgspec.inspect.type_info(Settings).fields:
        if info.name == field and isinstance(info.type, msgspec.inspect.Metadata):
            return (info.type.extra_json_schema or {}).get("description")
    return None
