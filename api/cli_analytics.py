"""``reactor analytics …``: the Analytics feed (``shared/analytics.py``) from the command line.

``forward`` delivers the usage events to Analytics until Ctrl-C or SIGTERM (or, with ``--drain``,
until everything recorded so far is delivered); run one or more beside the gateway. ``status``
shows how far the feed has got. Both are server commands: Redis and the key prefix come from
reactor.toml and ``REDIS_URL`` (or the private Redis of a running ``reactor serve``).

The forwarder's own settings are flags, each with an environment variable for deployments (a flag
wins): ``REACTOR_AI_ANALYTICS_URL``, ``REACTOR_AI_ANALYTICS_TOKEN`` (sent as a bearer token),
``REACTOR_AI_ANALYTICS_BATCH_SIZE`` and ``REACTOR_AI_ANALYTICS_RECLAIM_IDLE``. They live here
rather than in reactor.toml because only the forwarder reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from shared.config import ConfigError, Settings

ENV_URL = "REACTOR_AI_ANALYTICS_URL"
ENV_TOKEN = "REACTOR_AI_ANALYTICS_TOKEN"
ENV_BATCH_SIZE = "REACTOR_AI_ANALYTICS_BATCH_SIZE"
ENV_RECLAIM_IDLE = "REACTOR_AI_ANALYTICS_RECLAIM_IDLE"
# Exit status of a forwarder started without an Analytics URL, or with a bad setting.
EXIT_USAGE = 2


def _redis_url(settings: Settings) -> str:
    """``REDIS_URL`` (or ``gateway.redis_url``), else the private Redis of a running ``reactor serve``."""
    if settings.redis_url:
        return settings.redis_url
    import redis

    from .embedded_redis import EmbeddedRedis

    if settings.data_dir is not None:
        embedded = EmbeddedRedis(settings.data_dir)
        try:
            redis.Redis(unix_socket_path=str(embedded.socket), socket_timeout=1).ping()
            return embedded.url
        except (redis.RedisError, OSError):
            pass
    raise ConfigError("reactor analytics needs REDIS_URL (or gateway.redis_url), or a running `reactor serve`")


def _env_number(name: str, kind: Callable[[str], Any]) -> Any:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    return parse


def cmd_forward(args: argparse.Namespace, settings: Settings) -> int:
    """Forward usage events to Analytics until stopped."""
    from shared import analytics
    from shared.keys import Keys
    from shared.redis_client import open_redis

    url = args.url or os.environ.get(ENV_URL)
    if not url:
        print(f"reactor: no Analytics URL: pass --url or set {ENV_URL}", file=sys.stderr)
        return EXIT_USAGE
    token = os.environ.get(ENV_TOKEN)
    batch_size = args.batch_size or _env_number(ENV_BATCH_SIZE, int) or analytics.DEFAULT_BATCH_SIZE
    reclaim_idle = args.reclaim_idle or _env_number(ENV_RECLAIM_IDLE, float) or analytics.DEFAULT_RECLAIM_IDLE_S
    try:
        config = analytics.ForwarderConfig(
            url=url, group=args.group, consumer=args.consumer or analytics.default_consumer(), batch_size=batch_size,
            reclaim_idle_s=reclaim_idle, timeout_s=args.timeout, trim_interval_s=args.trim_interval,
            retry_cap_s=args.max_backoff, headers={"Authorization": f"Bearer {token}"} if token else {},
            trim=not args.no_trim)
    except ValueError as exc:
        print(f"reactor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    keys = Keys(settings.key_prefix)
    redis_url = _redis_url(settings)

    async def main() -> analytics.ForwarderStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        # Its reads block on purpose for up to READ_BLOCK_MS: the socket timeout comes on top.
        redis = open_redis(redis_url, timeout=settings.redis_timeout + analytics.READ_BLOCK_MS / 1000)
        try:
            return await analytics.run_forwarder(redis, keys, config, stop=stop, drain=args.drain)
        finally:
            await redis.aclose()

    print(f"Forwarding {keys.usage_events} (group {config.group or keys.analytics_group}, consumer "
          f"{config.consumer}) to {url}", flush=True)
    stats = asyncio.run(main())
    print(f"Delivered {stats.delivered} events in {stats.batches} batches ({stats.reclaimed} taken over, "
          f"{stats.failures} failed tries, {stats.trimmed} trimmed from the stream)", flush=True)
    return 0


def _ago(ts: float | None) -> str:
    return "never" if ts is None else f"{max(0.0, time.time() - ts):.0f} s ago"


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """The stream and each consumer group: pending, not yet handed out, delivered, last error."""
    from shared.analytics import feed_status
    from shared.keys import Keys
    from shared.redis_client import open_redis

    from .client import as_json

    async def main() -> dict[str, Any]:
        redis = open_redis(_redis_url(settings), timeout=settings.redis_timeout)
        try:
            return await feed_status(redis, Keys(settings.key_prefix), args.group)
        finally:
            await redis.aclose()

    status = asyncio.run(main())
    if args.json:
        print(as_json(status))
        return 0
    print(f"{status['stream']}: {status['length']} events"
          + (f" ({status['first_id']} … {status['last_id']})" if status["length"] else ""))
    if not status["groups"]:
        print("No forwarder has run yet: start one with `reactor analytics forward --url URL`.")
    for g in status["groups"]:
        oldest = g["oldest_pending_age_s"]
        print(f"group {g['group']}: {g['pending']} pending"
              + (f" (oldest {oldest:.0f} s)" if oldest is not None else "")
              + f", {g['lag'] if g['lag'] is not None else '?'} not yet read, {g['delivered']} delivered, "
              f"last delivery {_ago(g['last_delivery_at'])}, {g['consumers']} consumers")
        if g["last_error"]:
            print(f"  last error {_ago(g['last_error_at'])}: {g['last_error']}")
    return 0


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from shared import analytics

    parser = sub.add_parser("analytics", help="the Analytics feed: forward usage events over HTTP, show its progress")
    analytics_sub = parser.add_subparsers(dest="analytics_command", required=True)

    forward = analytics_sub.add_parser(
        "forward", help="deliver every usage event to Analytics (at least once; dedupe on request_id)",
        description="POST the usage events, in batches (a JSON array of events), to the Analytics URL; an event "
                    "is acknowledged only after a 2xx, retried until then, and taken over from a forwarder that "
                    "died. Stops on Ctrl-C or SIGTERM.")
    common(forward)
    forward.add_argument("--url", help=f"where to POST (default: ${ENV_URL})")
    forward.add_argument("--batch-size", type=_positive(int),
                         help=f"events per POST (default: ${ENV_BATCH_SIZE} or {analytics.DEFAULT_BATCH_SIZE})")
    forward.add_argument("--reclaim-idle", type=_positive(float), metavar="SECONDS",
                         help="take over events another forwarder left unacknowledged this long "
                              f"(default: ${ENV_RECLAIM_IDLE} or {analytics.DEFAULT_RECLAIM_IDLE_S:g})")
    forward.add_argument("--timeout", type=_positive(float), default=analytics.DEFAULT_HTTP_TIMEOUT_S,
                         metavar="SECONDS", help=f"for one POST (default {analytics.DEFAULT_HTTP_TIMEOUT_S:g})")
    forward.add_argument("--max-backoff", type=_positive(float), default=analytics.DEFAULT_RETRY_CAP_S,
                         metavar="SECONDS",
                         help=f"the longest wait between retries of a batch (default {analytics.DEFAULT_RETRY_CAP_S:g})")
    forward.add_argument("--trim-interval", type=_positive(float), default=analytics.DEFAULT_TRIM_INTERVAL_S,
                         metavar="SECONDS", help="how often to trim delivered events from the stream "
                                                 f"(default {analytics.DEFAULT_TRIM_INTERVAL_S:g})")
    forward.add_argument("--no-trim", action="store_true", help="leave the stream untrimmed")
    forward.add_argument("--group", help="the consumer group (default: analytics); another destination needs its own")
    forward.add_argument("--consumer", help="this forwarder's name in the group (default: HOST-PID)")
    forward.add_argument("--drain", action="store_true",
                         help="stop once every event recorded so far is delivered, instead of waiting for more")
    forward.set_defaults(handler=cmd_forward)

    status = analytics_sub.add_parser("status", help="events in the stream; per group pending, unread, delivered")
    common(status)
    status.add_argument("--group", help="only this consumer group")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(handler=cmd_status)
