"""Every process of the gateway opens Redis here: one URL syntax and a timeout on every connection.

URL forms (``REDIS_URL`` / ``gateway.redis_url``):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) and ``unix:///path/to.sock``:
  redis-py's own forms (``ConnectionPool.from_url``), query parameters included.
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]``: the primary
  that the listed Sentinels name ``service_name``. The credentials are the primary's (and its
  replicas'); Sentinels are asked without credentials. A Sentinel address without a port uses
  26379. The same form as the ``Redis-Sentinel-Url`` package and LangChain's Redis URLs.

Why every connection has a timeout: without one, a Redis that stops answering (a network
partition, a frozen host, a primary that went away without closing its connections) holds every
request that touches it for as long as the kernel keeps the socket open, which is minutes. With
one, the call fails after ``timeout`` seconds, the front door answers 503 and the next request
opens a fresh connection, which finds a new primary through Sentinel. The timeout is the
``redis_timeout`` setting: far above what any command of the gateway needs (its scripts and
pipelines take milliseconds), short enough that a request learns within seconds that Redis is
not answering.

Pub/sub listeners block on purpose, for as long as nobody publishes: they read with
:data:`LISTEN_POLL_S` (a read that returns None when nothing came, well inside the socket
timeout), never with ``timeout=None``, which redis-py turns into the socket timeout and an error.
A quiet subscription is pinged (:class:`PubSubLiveness`): a connection that died without being
closed (its host gone, a failed-over primary that vanished, state dropped by a firewall) would
otherwise be listened to forever while every message goes elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import (AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection,
                                      parse_url)
from redis.asyncio.sentinel import (Sentinel, SentinelConnectionPool, SentinelManagedConnection,
                                    SentinelManagedSSLConnection)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import ConfigError

# How long a pub/sub listener waits for one message before it looks again: below the socket
# timeout, so an idle channel is never taken for a dead connection.
LISTEN_POLL_S = 1.0
# A subscription quiet this long is pinged; without an answer within the socket timeout (this
# long again on a pool without one) the listener drops it and subscribes afresh.
PUBSUB_IDLE_PING_S = 2.0
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_DEFAULT_PORT = 26379

R = TypeVar("R", bound=Redis)


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service_name[/db]``.

    :raises ConfigError: the URL does not have that form, said with the form expected.
    """
    expected = f"expected {SENTINEL_SCHEME}://[:password@]host:port[,host:port…]/service_name[/db]"
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ConfigError(f"REDIS_URL: {expected}, got the scheme {parts.scheme!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    sentinels = [_address(item.strip(), expected) for item in hosts.split(",")]
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(f"REDIS_URL: {expected}; the path must name the service (and may add a db number)")
    return SentinelURL(sentinels, path[0], int(path[1]) if len(path) == 2 else 0,
                       unquote(username) or None, unquote(password) or None)


def _address(item: str, expected: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[ipv6]:port``."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":") if rest else str(SENTINEL_DEFAULT_PORT)
    else:
        host, sep, port = item.partition(":")
        port = port if sep else str(SENTINEL_DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"REDIS_URL: {expected}; {item!r} is not a host:port")
    return host, int(port)


class _DirectWrites:
    """A connection that writes a command at once, in the caller's step.

    redis-py 5 sends every command through ``asyncio.wait_for`` once a socket timeout is set, and
    on Python 3.11 that wraps each write in a task of its own: a task per command, and the write
    leaves a loop turn later. Here the command is handed to the transport directly, and only a
    write the kernel could not take at once (the transport kept bytes back) is waited for, within
    the socket timeout as before. Reads keep redis-py's own timeout.
    """

    async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()
        elif check_health:
            await self.check_health()
        try:
            if isinstance(command, str):
                command = command.encode()
            if isinstance(command, bytes):
                command = [command]
            writer = self._writer
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc!r}.") from exc
        except BaseException:
            # A write cut short leaves the connection in an unknown state, as redis-py says.
            await self.disconnect(nowait=True)
            raise


class _Connection(_DirectWrites, Connection):
    pass


class _SSLConnection(_DirectWrites, SSLConnection):
    pass


class _UnixConnection(_DirectWrites, UnixDomainSocketConnection):
    pass


class _SentinelConnection(_DirectWrites, SentinelManagedConnection):
    pass


class _SentinelSSLConnection(_DirectWrites, SentinelManagedSSLConnection):
    pass


_DIRECT = {Connection: _Connection, SSLConnection: _SSLConnection, UnixDomainSocketConnection: _UnixConnection}


def _has_data(connection: AbstractConnection) -> bool | None:
    """Whether a pooled connection holds unread data, told without waiting; None when this
    cannot be told (then redis-py's own check runs)."""
    parser = getattr(connection, "_parser", None)
    if not isinstance(parser, _AsyncHiredisParser) or not parser._connected or parser._stream is None:
        return None
    if parser._reader.gets() is not NOT_ENOUGH_DATA:
        return True
    stream = parser._stream
    return bool(stream._buffer) or stream.at_eof()


class _ReadyCheck:
    """A pool whose check that a connection is ready to send does not wait a loop turn.

    redis-py checks every connection it hands out by reading its socket under a zero timeout,
    which suspends the caller until the next loop turn and raises and catches a timeout each
    time: for every command. What that read would find, data already buffered or the end of the
    stream, can be seen without it.
    """

    async def ensure_connection(self: Any, connection: AbstractConnection) -> None:
        await connection.connect()
        has_data = _has_data(connection)
        if has_data is None:
            await super().ensure_connection(connection)  # type: ignore[misc]
        elif has_data:
            # Left over from a command cut short: start afresh, as redis-py does.
            await connection.disconnect()
            await connection.connect()


class _Pool(_ReadyCheck, ConnectionPool):
    pass


class _SentinelPool(_ReadyCheck, SentinelConnectionPool):
    pass


def write_now(redis: Redis, *args: Any) -> "asyncio.Task[Any] | None":
    """Write one command to Redis at once, in the caller's step, and read its reply in a task.

    ``await redis.execute_command(...)`` from a caller writes the command in that caller's step
    too (with this module's pools), but its reply is read in the caller's task: a cancel of the
    caller cuts the exchange, and redis-py then drops the connection and the reply with it. Here
    the reply is the task's, whoever waits for it; the connection goes back to the pool once it
    is read.

    :returns: the task reading the reply (it raises what the command raised, ``ResponseError``s
        included), or None when no pooled connection can write without waiting (not connected
        yet, the pool full, or not one of this module's pools): then send the usual way.
    """
    pool = redis.connection_pool
    if not isinstance(pool, _ReadyCheck):
        return None
    try:
        connection = pool.get_available_connection()
    except RedisConnectionError:
        return None  # max_connections reached: the usual way waits or fails as it always has
    writer = getattr(connection, "_writer", None)
    if not connection.is_connected or writer is None or _has_data(connection) is not False:
        asyncio.ensure_future(pool.release(connection))
        return None
    try:
        writer.writelines(connection.pack_command(*args))
    except Exception:
        asyncio.ensure_future(_drop(pool, connection))
        return None
    return asyncio.ensure_future(_reply(pool, connection))


async def _reply(pool: ConnectionPool, connection: AbstractConnection) -> Any:
    try:
        writer = connection._writer  # type: ignore[attr-defined]
        if writer is not None and writer.transport.get_write_buffer_size():
            async with asyncio.timeout(connection.socket_timeout):  # type: ignore[attr-defined]
                await writer.drain()
        return await connection.read_response()
    except ResponseError:
        raise  # an error reply, read whole: the connection is fine
    except BaseException:
        await connection.disconnect(nowait=True)  # a reply cut short: the connection is unusable
        raise
    finally:
        await pool.release(connection)


async def _drop(pool: ConnectionPool, connection: AbstractConnection) -> None:
    try:
        await connection.disconnect(nowait=True)
    finally:
        await pool.release(connection)


def connection_pool(url: str, *, timeout: float, max_connections: int | None = None,
                    **connection_kwargs: Any) -> ConnectionPool:
    """A pool of connections to the Redis ``url`` names, each with ``timeout`` for connecting and
    for every read.

    :param connection_kwargs: more of redis-py's connection options (``decode_responses``…).
    :raises ConfigError: a ``redis+sentinel://`` URL that cannot be read.
    :raises ValueError: redis-py's, for a URL of no known scheme.
    """
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, **connection_kwargs}
    if max_connections is not None:
        options["max_connections"] = max_connections
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        # ConnectionPool.from_url, with the connection class of the URL's scheme swapped for ours.
        options.update(parse_url(url))
        options["connection_class"] = _DIRECT[options.get("connection_class", Connection)]
        return _Pool(**options)
    parsed = parse_sentinel_url(url)
    # The Sentinels get the same timeouts (redis-py copies the socket_* options), no credentials.
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs={"socket_timeout": timeout,
                                                           "socket_connect_timeout": timeout})
    connection_class = _SentinelSSLConnection if options.pop("ssl", False) else _SentinelConnection
    return _SentinelPool(parsed.service_name, sentinel, is_master=True, db=parsed.db, username=parsed.username,
                         password=parsed.password, connection_class=connection_class, **options)


def open_redis(url: str, *, timeout: float, max_connections: int | None = None,
               redis_class: type[R] = Redis, client_kwargs: dict[str, Any] | None = None,
               **connection_kwargs: Any) -> R:
    """A client of ``redis_class`` on a pool of its own (:func:`connection_pool`), closed with it.

    :param redis_class: ``redis.asyncio.Redis`` or a subclass (the worker's ``ArqRedis``).
    :param client_kwargs: the class's own arguments (``job_serializer`` for ``ArqRedis``).
    """
    pool = connection_pool(url, timeout=timeout, max_connections=max_connections, **connection_kwargs)
    client = redis_class(connection_pool=pool, **(client_kwargs or {}))
    client.auto_close_connection_pool = True
    return client



class PubSubLiveness:
    """Tells a pub/sub listener that its connection is dead although nothing said so.

    Call :meth:`heard` for every message read and :meth:`quiet` for every read that returned
    nothing. After :data:`PUBSUB_IDLE_PING_S` of quiet it sends a PING on the subscription (the
    answer comes back as a ``pong`` message); when nothing at all comes back within the pool's
    socket timeout, :meth:`quiet` raises, and the listener reconnects as after any Redis error.
    """

    def __init__(self, pubsub: PubSub, idle_s: float = PUBSUB_IDLE_PING_S) -> None:
        self._pubsub = pubsub
        self._idle_s = idle_s
        self._answer_s = pubsub.connection_pool.connection_kwargs.get("socket_timeout") or idle_s
        self._heard = time.monotonic()
        self._pinged: float | None = None

    def heard(self) -> None:
        self._heard = time.monotonic()
        self._pinged = None

    async def quiet(self) -> None:
        """:raises redis.exceptions.ConnectionError: a ping went unanswered."""
        now = time.monotonic()
        if self._pinged is None:
            if now - self._heard >= self._idle_s:
                self._pinged = now
                await self._pubsub.ping()
        elif now - self._pinged > self._answer_s:
            raise RedisConnectionError(f"no answer on the pub/sub connection for {now - self._heard:.1f} s")
