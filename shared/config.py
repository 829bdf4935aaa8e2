"""Configuration: ``reactor.toml`` plus the environment, read once into a typed object.

Precedence, lowest first: built-in defaults, the ``[gateway]`` (or ``[ai]``) section of the
config file, then the environment variables of the product page. Command-line flags are
applied by the CLI on top of the result. Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import msgspec

DEFAULT_BIND = "0.0.0.0:8004"
CONFIG_FILE_NAME = "reactor.toml"

# A provider's kind decides the wire format its worker speaks.
PROVIDER_KINDS = ("openrouter", "openai", "bedrock", "foundry")
# Kinds whose translation modules this release ships; the others parse but cannot be enabled yet.
AVAILABLE_KINDS = ("openrouter", "openai")

_DEFAULT_BASE_URL = {"openrouter": "https://openrouter.ai/api/v1"}
_DEFAULT_KEY_ENV = {"openrouter": "OPENROUTER_API_KEY", "foundry": "AZURE_FOUNDRY_API_KEY"}


class ConfigError(ValueError):
    """A bad config file or value; the message names the file, the key and what was expected."""


class _ProviderTable(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    kind: str | None = None
    enabled: bool | None = None
    base_url: str | None = None
    endpoint: str | None = None
    api_key_env: str | None = None
    api_version: str | None = None
    region: str | None = None
    headers: dict[str, str] = {}


class _GatewayTable(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    registry_overlay: str | None = None
    registry_url: str | None = None
    registry_optional: bool = False
    registry_timeout: float = msgspec.field(default=5.0)
    bind: str | None = None
    auth_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    data_dir: str | None = None
    redis_url: str | None = None
    key_prefix: str = "reactor:"
    max_body_bytes: int = 8 * 1024 * 1024
    queue_timeout: float = 10.0
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    request_timeout: float = 600.0
    heartbeat_interval: float = 2.0
    worker_concurrency: int = 2000
    queue_backlog: int = 256
    poll_delay: float = 0.5
    usage_retention_days: int = 400
    providers: dict[str, _ProviderTable] = {}


class ProviderSettings(msgspec.Struct, frozen=True):
    """One ``[gateway.providers.NAME]`` table, resolved against the environment."""

    name: str
    kind: str
    enabled: bool
    base_url: str | None
    api_key: str | None
    api_key_env: str | None
    api_version: str | None = None
    region: str | None = None
    headers: dict[str, str] = {}


class Settings(msgspec.Struct, frozen=True):
    """Everything the gateway reads at start-up. Passed down; never re-read."""

    source: str
    bind: str
    redis_url: str | None
    key_prefix: str
    data_dir: Path
    auth_url: str | None
    auth_issuer: str | None
    auth_audience: str | None
    registry_overlay: Path | None
    registry_url: str | None
    registry_optional: bool
    registry_timeout: float
    max_body_bytes: int
    queue_timeout: float
    connect_timeout: float
    read_timeout: float
    request_timeout: float
    heartbeat_interval: float
    worker_concurrency: int
    queue_backlog: int
    poll_delay: float
    usage_retention_days: int
    providers: dict[str, ProviderSettings]

    @property
    def enabled_providers(self) -> dict[str, ProviderSettings]:
        return {name: p for name, p in self.providers.items() if p.enabled}

    @property
    def host_port(self) -> tuple[str, int]:
        return split_bind(self.bind, "bind")

    @property
    def usage_spool(self) -> Path:
        """Where usage records wait while Redis is unreachable."""
        return self.data_dir / "usage-spool.jsonl"

    def secrets(self) -> tuple[str, ...]:
        """Every provider key this gateway holds, for redaction."""
        return tuple(p.api_key for p in self.providers.values() if p.api_key)


def split_bind(value: str, key: str = "REACTOR_AI_BIND") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ConfigError(f"{key}: expected HOST:PORT such as {DEFAULT_BIND}, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
    section: dict = {}
    if file is not None:
        section = _read_section(file)
    # Provider tables are converted one by one: msgspec's error path does not name a dict key.
    raw_providers = section.pop("providers", {})
    if not isinstance(raw_providers, dict):
        raise ConfigError(f"{source}: gateway.providers: expected a table of provider tables")
    try:
        table = msgspec.convert(section, _GatewayTable)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, 'gateway')}") from None
    providers = {}
    for name, raw in raw_providers.items():
        try:
            providers[name] = msgspec.convert(raw, _ProviderTable)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{source}: {_describe(exc, f'gateway.providers.{name}')}") from None
    table = msgspec.structs.replace(table, providers=providers)
    return _resolve(table, source, file.parent if file else Path.cwd(), env)


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


def _describe(exc: msgspec.ValidationError, root: str) -> str:
    """Turn msgspec's ``... - at `$.providers.x.enabled``` into ``key gateway.providers.x.enabled: ...``."""
    text = str(exc)
    match = _PATH.search(text)
    where = root + (match.group(1) if match else "")
    what = text.split(" - at ")[0]
    if what.startswith("Object contains unknown field"):
        field = what.split("`")[1]
        return f"{where}.{field}: unknown setting"
    return f"{where}: {what}"


def _resolve(table: _GatewayTable, source: str, base_dir: Path, env: Mapping[str, str]) -> Settings:
    def fail(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{source}: gateway.{key}: {expected}")

    bind = env.get("REACTOR_AI_BIND") or table.bind or DEFAULT_BIND
    split_bind(bind, "REACTOR_AI_BIND" if env.get("REACTOR_AI_BIND") else f"{source}: gateway.bind")

    for key in ("queue_timeout", "connect_timeout", "read_timeout", "request_timeout", "heartbeat_interval",
                "poll_delay", "registry_timeout"):
        if getattr(table, key) <= 0:
            raise fail(key, "expected a positive number of seconds")
    for key in ("max_body_bytes", "worker_concurrency", "usage_retention_days"):
        if getattr(table, key) <= 0:
            raise fail(key, "expected a positive integer")
    if table.queue_backlog < 0:
        raise fail("queue_backlog", "expected a number of jobs, 0 or more")
    if not table.key_prefix or any(c.isspace() for c in table.key_prefix):
        raise fail("key_prefix", "expected a non-empty prefix without spaces")
    if table.registry_overlay and table.registry_url:
        raise fail("registry_url", "set registry_overlay or registry_url, not both")

    providers = {name: _resolve_provider(name, t, source, env) for name, t in table.providers.items()}
    if "openrouter" not in providers:
        # OpenRouter is the default provider: it serves every built-in model out of the box.
        providers["openrouter"] = _resolve_provider("openrouter", _ProviderTable(), source, env)

    data_dir = env.get("REACTOR_DATA_DIR") or table.data_dir
    if data_dir:
        data_path = (base_dir / Path(data_dir).expanduser())
    else:
        xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        data_path = Path(xdg) / "reactor"

    overlay = (base_dir / Path(table.registry_overlay).expanduser()) if table.registry_overlay else None
    return Settings(
        source=source,
        bind=bind,
        redis_url=env.get("REDIS_URL") or table.redis_url,
        key_prefix=table.key_prefix,
        data_dir=data_path,
        auth_url=(env.get("REACTOR_AI_AUTH_URL") or table.auth_url or None),
        auth_issuer=table.auth_issuer,
        auth_audience=table.auth_audience,
        registry_overlay=overlay,
        registry_url=table.registry_url,
        registry_optional=table.registry_optional,
        registry_timeout=table.registry_timeout,
        max_body_bytes=table.max_body_bytes,
        queue_timeout=table.queue_timeout,
        connect_timeout=table.connect_timeout,
        read_timeout=table.read_timeout,
        request_timeout=table.request_timeout,
        heartbeat_interval=table.heartbeat_interval,
        worker_concurrency=table.worker_concurrency,
        queue_backlog=table.queue_backlog,
        poll_delay=table.poll_delay,
        usage_retention_days=table.usage_retention_days,
        providers=providers,
    )


def _resolve_provider(name: str, t: _ProviderTable, source: str, env: Mapping[str, str]) -> ProviderSettings:
    key = f"gateway.providers.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ConfigError(f"{source}: {key}: provider names may use letters, digits, '-' and '_'")
    kind = t.kind or (name if name in PROVIDER_KINDS and name != "openai" else None)
    if kind is None:
        raise ConfigError(f"{source}: {key}.kind: expected one of {', '.join(PROVIDER_KINDS)}")
    if kind not in PROVIDER_KINDS:
        raise ConfigError(f"{source}: {key}.kind: expected one of {', '.join(PROVIDER_KINDS)}, got {kind!r}")
    # A table the user wrote for a generic upstream means "use it"; the cloud ones stay off until asked.
    enabled = t.enabled if t.enabled is not None else kind in ("openrouter", "openai")
    if t.base_url and t.endpoint and t.base_url != t.endpoint:
        raise ConfigError(f"{source}: {key}.endpoint: set base_url or endpoint, not both")
    base_url = t.base_url or t.endpoint
    if kind == "foundry":
        base_url = env.get("AZURE_FOUNDRY_ENDPOINT") or base_url
    base_url = base_url or _DEFAULT_BASE_URL.get(kind)
    region = (env.get("AWS_REGION") or t.region or "us-east-1") if kind == "bedrock" else t.region
    key_env = t.api_key_env or _DEFAULT_KEY_ENV.get(kind)
    api_key = env.get(key_env) if key_env else None
    if enabled:
        if kind not in AVAILABLE_KINDS:
            raise ConfigError(
                f"{source}: {key}.enabled: the {kind} provider is not available in this release; "
                f"set enabled = false"
            )
        if not base_url:
            raise ConfigError(f"{source}: {key}.base_url: expected the upstream's base URL")
        if not re.match(r"https?://", base_url):
            raise ConfigError(f"{source}: {key}.base_url: expected an http(s) URL, got {base_url!r}")
    return ProviderSettings(
        name=name,
        kind=kind,
        enabled=enabled,
        base_url=base_url.rstrip("/") if base_url else None,
        api_key=api_key,
        api_key_env=key_env,
        api_version=t.api_version,
        region=region,
        headers=dict(t.headers),
    )
