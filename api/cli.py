"""The ``reactor`` command.

``reactor serve`` runs everything on one box (a private Redis when ``REDIS_URL`` is unset,
the front door and one worker process); ``reactor api`` and ``reactor worker`` run the two
halves separately, for fleets. ``reactor auth …`` (``cli_auth.py``) signs in and manages users;
``reactor ai …`` (``cli_ai.py``) talks to a running gateway.

The server commands log as text or, with ``--log-format json``, one JSON object per line
(``shared/logs.py``). The front door serves Prometheus metrics at ``/metrics``, a worker on its
``--metrics-port`` (``shared/metrics.py``); ``REACTOR_METRICS=0`` switches both off.
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
from shared.logs import FORMATS, configure
from shared.registry import RegistryError

from . import cli_ai, cli_auth
from . import cli_analytics
from .embedded_redis import EmbeddedRedisError


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if getattr(args, "bind", None):
        split_bind(args.bind, "--bind")
        settings = msgspec.structs.replace(settings, bind=args.bind)
    return settings


# Set to 0 (or false, no, off) to run without metrics: no /metrics route, no worker metrics port.
METRICS_ENV = "REACTOR_METRICS"
# prometheus_client's multiprocess directory, for several processes serving one port.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_enabled() -> bool:
    return os.environ.get(METRICS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _setup_logging(level: str, fmt: str = "text", per_request: bool = False) -> None:
    configure(level, fmt)
    # arq logs every job start and finish at INFO: far too chatty for a gateway's request rate.
    logging.getLogger("arq").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # botocore's DEBUG lines print each signed request whole, the AWS session token included.
    logging.getLogger("botocore").setLevel(max(logging.INFO, logging.getLogger().level))
    # The line per request costs about a fifth of the front door's CPU per request: written when
    # asked for (JSON logs for a collector, or --access-log), not by default.
    if not (per_request or fmt == "json"):
        logging.getLogger("reactor.requests").setLevel(logging.WARNING)


def _run_uvloop(coro) -> None:
    if _has_uvloop():
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from shared.metrics import GatewayMetrics
    from shared.runtime import tune_process
    from shared.tracing import Tracing, provider_names

    from .app import create_app

    if not settings.redis_url:
        raise ConfigError("reactor api needs REDIS_URL (or gateway.redis_url); `reactor serve` starts its own")
    host, port = settings.host_port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"Reactor Gateway {__version__} listening on http://{shown}:{port}/ai/v1", flush=True)
    if not settings.auth_url:
        print("Single-box auth: add a user with `reactor auth users add EMAIL` and sign in with "
              "`reactor auth login EMAIL`, or mint a token for scripts with `reactor auth token <user-id>`",
              flush=True)
    metrics = GatewayMetrics(multiprocess_dir=os.environ.get(MULTIPROC_ENV)) if _metrics_enabled() else None
    # In JSON, uvicorn's own records go through the root handler like every other; in text, uvicorn
    # keeps its familiar format.
    log_config = {"log_config": None} if args.log_format == "json" else {}
    # OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (shared/tracing.py).
    tracing = Tracing.from_environment("reactor-api", provider_names(settings.providers))
    app = create_app(settings, on_ready=tune_process, metrics=metrics, tracing=tracing)
    config = uvicorn.Config(app, host=host, port=port, log_level=args.log_level, access_log=args.access_log,
                            **log_config, loop="uvloop" if _has_uvloop() else "asyncio", http="httptools",
                            timeout_graceful_shutdown=round(settings.shutdown_grace))
    try:
        DrainingServer(config, app, settings.drain_seconds).run()
    finally:
        if tracing is not None:
            tracing.close()  # the spans still buffered go out before the process ends
    return 0


class DrainingServer:
    """uvicorn's server with a drain before the stop, as load balancers need.

    The first SIGTERM (or SIGINT) marks the front door as draining (health answers 503
    ``draining``, requests are still served) for ``drain_seconds``, so a load balancer that polls
    health stops sending; then uvicorn stops accepting connections and gives open streams
    ``shutdown_grace`` to finish. A second signal stops at once.
    """

    def __init__(self, config, app, drain_seconds: float) -> None:
        import uvicorn

        drain = drain_seconds

        class Server(uvicorn.Server):
            draining = False

            def handle_exit(self, sig: int, frame) -> None:
                gateway = getattr(app.state, "gateway", None)
                if self.draining or drain <= 0 or gateway is None or self.loop is None:
                    return super().handle_exit(sig, frame)
                self.draining = True
                gateway.draining = True
                stop = super().handle_exit
                self.loop.call_soon_threadsafe(self.loop.call_later, drain, stop, sig, frame)

            async def serve(self, sockets=None) -> None:
                import asyncio

                self.loop = asyncio.get_running_loop()
                await super().serve(sockets)

        self._server = Server(config)
        self._server.loop = None

    def run(self) -> None:
        self._server.run()


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
    if args.demo:
        from workers.providers.demo import demo_settings

        settings = demo_settings(settings)

    metrics = None
    if args.metrics_port and _metrics_enabled():
        from shared.metrics import WorkerMetrics

        metrics = WorkerMetrics()
        try:
            metrics.serve(args.metrics_port)
        except OSError as exc:
            raise ConfigError(f"cannot serve worker metrics on port {args.metrics_port}: {exc}") from None

    from shared.tracing import Tracing, provider_names

    tracing = Tracing.from_environment("reactor-worker", provider_names(settings.providers))

    async def main() -> None:
        registry = RegistrySource(settings)
        await registry.load()
        await run_worker_process(settings, registry, args.provider or None, metrics, tracing)

    try:
        _run_uvloop(main())
    finally:
        if tracing is not None:
            tracing.close()  # the spans still buffered go out before the process ends
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .embedded_redis import EmbeddedRedis, die_with_parent

    # uvicorn re-raises the SIGTERM it caught once it has shut down; without a handler of ours
    # that would kill the process before the `finally` below stops the worker and Redis.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    if args.demo:
        # Every model and alias routes to the local demo provider, every other provider is off:
        # the API here and the worker (through its --demo) read the same overlay and tables.
        from workers.providers.demo import demo_settings, write_demo_overlay

        overlay = asyncio.run(write_demo_overlay(settings))
        settings = demo_settings(settings)
        print(f"Demo mode: every model is answered locally by the demo provider, no keys and no network "
              f"(routes in {overlay})", flush=True)

    embedded = None
    env = dict(os.environ)
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.start()
        print(f"Started a private Redis at {url} (set REDIS_URL to use your own)", flush=True)
        settings = msgspec.structs.replace(settings, redis_url=url)
        env["REDIS_URL"] = url
    worker_cmd = [sys.executable, "-m", "api.cli", "worker", "--log-level", args.log_level,
                  "--log-format", args.log_format]
    if args.config:
        worker_cmd += ["--config", args.config]
    if args.demo:
        worker_cmd.append("--demo")
    workers = [subprocess.Popen(worker_cmd + (["--metrics-port", str(args.worker_metrics_port + i)]
                                              if args.worker_metrics_port else []),
                                env=env, preexec_fn=die_with_parent)
               for i in range(args.workers)]
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

    def server_logs(p: argparse.ArgumentParser, access_log: bool = True) -> None:
        p.add_argument("--log-format", default="text", choices=FORMATS,
                       help="text, or json: one JSON object per line (default text)")
        if access_log:
            p.add_argument("--access-log", action="store_true",
                           help="also write uvicorn's access log (off by default: the gateway logs every request)")

    serve = sub.add_parser("serve", help="run the gateway on one box: Redis (unless REDIS_URL), API and a worker")
    common(serve)
    serve.add_argument("--bind", help="HOST:PORT (default: $REACTOR_AI_BIND or 0.0.0.0:8004)")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="worker processes to run beside the API (default 1; one per spare core pays off)")
    serve.add_argument("--demo", action="store_true",
                       help="answer every model with the local demo provider: no provider keys, no network")
    server_logs(serve)
    serve.add_argument("--worker-metrics-port", type=_positive, metavar="PORT",
                       help="serve each worker's metrics: the first on PORT, the next on PORT+1, …")
    serve.set_defaults(handler=cmd_serve)

    api = sub.add_parser("api", help="run the front door only (needs REDIS_URL)")
    common(api)
    api.add_argument("--bind", help="HOST:PORT (default: $REACTOR_AI_BIND or 0.0.0.0:8004)")
    server_logs(api)
    api.set_defaults(handler=cmd_api)

    worker = sub.add_parser("worker", help="run a worker process (needs REDIS_URL)")
    common(worker)
    worker.add_argument("--provider", action="append", help="serve this provider's queue (repeatable; default: all enabled)")
    # Set by `reactor serve --demo` for its workers: serve the demo provider through the overlay it wrote.
    worker.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    server_logs(worker, access_log=False)
    worker.add_argument("--metrics-port", type=_positive, metavar="PORT",
                        help="serve this worker's Prometheus metrics at http://0.0.0.0:PORT/metrics")
    worker.set_defaults(handler=cmd_worker)

    cli_auth.register(sub, common)
    cli_ai.register(sub, common)
    cli_analytics.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"),
                   per_request=getattr(args, "access_log", False))
    try:
        # Server commands read reactor.toml; client commands (`reactor ai …`, `auth login`) talk to
        # a gateway over HTTP and never need it.
        if getattr(args, "client", False):
            return args.handler(args)
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
