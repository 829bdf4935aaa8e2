"""The ``reactor`` command: run the gateway and mint tokens.

``reactor serve`` runs everything on one box (a private Redis when ``REDIS_URL`` is unset,
the front door and one worker process); ``reactor api`` and ``reactor worker`` run the two
halves separately, for fleets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys

import msgspec
from redis.exceptions import RedisError

from shared import __version__
from shared.config import ConfigError, Settings, load_settings, split_bind
from shared.errors import GatewayError
from shared.registry import RegistryError

from .embedded_redis import EmbeddedRedisError


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if getattr(args, "bind", None):
        split_bind(args.bind, "--bind")
        settings = msgspec.structs.replace(settings, bind=args.bind)
    return settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # arq logs every job start and finish at INFO: far too chatty for a gateway's request rate.
    logging.getLogger("arq").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _run_uvloop(coro) -> None:
    if _has_uvloop():
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from shared.runtime import tune_process

    from .app import create_app

    if not settings.redis_url:
        raise ConfigError("reactor api needs REDIS_URL (or gateway.redis_url); `reactor serve` starts its own")
    host, port = settings.host_port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"Reactor Gateway {__version__} listening on http://{shown}:{port}/ai/v1", flush=True)
    if not settings.auth_url:
        print("Single-box auth: get a token with `reactor auth token <user-id>`", flush=True)
    uvicorn.run(create_app(settings, on_ready=tune_process), host=host, port=port, log_level=args.log_level, access_log=False,
                loop="uvloop" if _has_uvloop() else "asyncio", http="httptools", timeout_graceful_shutdown=15)
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from shared.overlay import RegistrySource
    from workers.worker import run_worker_process

    if not settings.redis_url:
        raise ConfigError("reactor worker needs REDIS_URL (or gateway.redis_url)")

    async def main() -> None:
        registry = RegistrySource(settings)
        await registry.load()
        await run_worker_process(settings, registry, args.provider or None)

    _run_uvloop(main())
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .embedded_redis import EmbeddedRedis, die_with_parent

    # uvicorn re-raises the SIGTERM it caught once it has shut down; without a handler of ours
    # that would kill the process before the `finally` below stops the worker and Redis.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    embedded = None
    env = dict(os.environ)
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.start()
        print(f"Started a private Redis at {url} (set REDIS_URL to use your own)", flush=True)
        settings = msgspec.structs.replace(settings, redis_url=url)
        env["REDIS_URL"] = url
    worker_cmd = [sys.executable, "-m", "api.cli", "worker", "--log-level", args.log_level]
    if args.config:
        worker_cmd += ["--config", args.config]
    workers = [subprocess.Popen(worker_cmd, env=env, preexec_fn=die_with_parent) for _ in range(args.workers)]
    try:
        return cmd_api(args, settings)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if embedded:
            embedded.stop()


def cmd_auth_token(args: argparse.Namespace, settings: Settings) -> int:
    from .auth import LocalKey

    if settings.auth_url:
        print("This gateway verifies tokens from the Identity service at REACTOR_AI_AUTH_URL; "
              "get a token there.", file=sys.stderr)
        return 2
    key = LocalKey.load_or_create(settings.data_dir)
    print(key.mint(args.user_id, args.ttl, settings.auth_issuer, settings.auth_audience))
    return 0


def cmd_models_import(args: argparse.Namespace, settings: Settings) -> int:
    """Write an overlay with OpenRouter's current prices and context windows."""
    from pathlib import Path

    import httpx

    from shared.model_import import ImportProblem, overlay_from_openrouter
    from shared.overlay import registry_for

    output = Path(args.output)
    if output.exists() and not args.force:
        print(f"reactor: {output} exists; pass --force to replace it", file=sys.stderr)
        return 2
    openrouter = settings.providers.get("openrouter")
    base_url = args.url or (openrouter.base_url if openrouter else None) or "https://openrouter.ai/api/v1"
    headers = {"Authorization": f"Bearer {openrouter.api_key}"} if openrouter and openrouter.api_key else {}
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=settings.registry_timeout)
        response.raise_for_status()
        listing = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"reactor: cannot read OpenRouter's model list from {base_url}/models: {exc}", file=sys.stderr)
        return 2
    registry = asyncio.run(registry_for(settings))
    try:
        text = overlay_from_openrouter(listing, registry, include_new=args.all, source=f"{base_url}/models")
    except ImportProblem as exc:
        print(f"reactor: {exc}", file=sys.stderr)
        return 2
    output.write_text(text)
    print(f"wrote {output}: {text.splitlines()[1].lstrip('# ')}")
    print(f"use it with registry_overlay = \"{output}\" in reactor.toml (or copy the tables you want into yours)")
    return 0


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reactor", description="Reactor Gateway: an OpenAI-compatible LLM gateway.")
    parser.add_argument("--version", action="version", version=f"reactor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="path of reactor.toml (default: $REACTOR_CONFIG or ./reactor.toml)")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    serve = sub.add_parser("serve", help="run the gateway on one box: Redis (unless REDIS_URL), API and a worker")
    common(serve)
    serve.add_argument("--bind", help="HOST:PORT (default: $REACTOR_AI_BIND or 0.0.0.0:8004)")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="worker processes to run beside the API (default 1; one per spare core pays off)")
    serve.set_defaults(handler=cmd_serve)

    api = sub.add_parser("api", help="run the front door only (needs REDIS_URL)")
    common(api)
    api.add_argument("--bind", help="HOST:PORT (default: $REACTOR_AI_BIND or 0.0.0.0:8004)")
    api.set_defaults(handler=cmd_api)

    worker = sub.add_parser("worker", help="run a worker process (needs REDIS_URL)")
    common(worker)
    worker.add_argument("--provider", action="append", help="serve this provider's queue (repeatable; default: all enabled)")
    worker.set_defaults(handler=cmd_worker)

    auth = sub.add_parser("auth", help="tokens")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    token = auth_sub.add_parser("token", help="mint a token for USER_ID with the single-box key")
    common(token)
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (default: one day)")
    token.set_defaults(handler=cmd_auth_token)

    ai = sub.add_parser("ai", help="the model registry")
    ai_sub = ai.add_subparsers(dest="ai_command", required=True)
    models = ai_sub.add_parser("models", help="models and prices")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    importer = models_sub.add_parser("import", help="write an overlay with a provider's current prices")
    common(importer)
    importer.add_argument("source", choices=["openrouter"], help="where to read the model list")
    importer.add_argument("--output", default="ai-models.openrouter.toml",
                          help="the overlay file to write (default: ai-models.openrouter.toml)")
    importer.add_argument("--all", action="store_true",
                          help="also add every model the registry does not have, under its OpenRouter id")
    importer.add_argument("--url", help="the model list's base URL (default: the openrouter provider's base_url)")
    importer.add_argument("--force", action="store_true", help="replace the output file if it exists")
    importer.set_defaults(handler=cmd_models_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"))
    try:
        settings = _settings(args)
        return args.handler(args, settings)
    except (ConfigError, RegistryError, GatewayError, EmbeddedRedisError) as exc:
        print(f"reactor: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"reactor: cannot use Redis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
