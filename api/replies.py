"""Receiving workers' replies: one pub/sub connection per front-door process.

The process subscribes to its own reply channel once, at start-up, before it accepts a
request, so no token can be published before someone listens. Each message names its
request; the router hands it to that request's queue.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from redis.asyncio import Redis

from shared.errors import GatewayError, InternalError, NoWorker, Unavailable, UpstreamTimeout, WireError
from shared.wire import Reply, reply_decoder

logger = logging.getLogger("reactor.api")

_LOST = Reply("", -1, "error", error=WireError.of(Unavailable("The connection to Redis was lost mid-request.")))


class ReplyRouter:
    """Routes reply messages on ``channel`` to the requests waiting for them.

    :param redis: a pool; the router takes one connection from it for good.
    :param channel: this process's reply channel.
    """

    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._waiting: dict[str, asyncio.Queue[Reply]] = {}
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="reply-router")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def open(self, request_id: str) -> "ReplyStream":
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._waiting[request_id] = queue
        return ReplyStream(self, request_id, queue)

    def close(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Wait for the confirmation: until it arrives, published replies would be lost.
                while (msg := await pubsub.get_message(timeout=5.0)) is None or msg["type"] != "subscribe":
                    pass
                self._ready.set()
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if msg is None or msg["type"] != "message":
                        continue
                    try:
                        reply = reply_decoder.decode(msg["data"])
                    except msgspec.DecodeError:
                        logger.warning("dropped a malformed reply message")
                        continue
                    queue = self._waiting.get(reply.request_id)
                    if queue is not None:
                        queue.put_nowait(reply)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Messages may have been missed while the connection was down: every request in
                # flight is ended with an error rather than left waiting for a gap it cannot see.
                self._ready.clear()
                logger.warning("reply channel lost (%r); resubscribing", exc)
                for queue in self._waiting.values():
                    queue.put_nowait(_LOST)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass


class ReplyStream:
    """The replies of one request, checked for order and silence."""

    def __init__(self, router: ReplyRouter, request_id: str, queue: asyncio.Queue[Reply]) -> None:
        self._router = router
        self.request_id = request_id
        self._queue = queue
        self._next_seq = 0

    async def next(self, timeout: float, *, waiting_for_worker: bool = False) -> Reply:
        """The next reply other than a ping.

        :param timeout: seconds of silence allowed; workers ping while they wait on an upstream.
        :param waiting_for_worker: silence means no worker took the job (503), not a stall (504).
        :raises GatewayError: on silence, a gap in the sequence, or an error reply.
        """
        while True:
            try:
                reply = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                if waiting_for_worker:
                    raise NoWorker("No worker took the request in time; try again shortly.") from None
                raise UpstreamTimeout("The worker serving this request went silent.") from None
            if reply.seq == -1:
                raise reply.error.to_exception()
            if reply.seq != self._next_seq:
                raise InternalError(f"Reply messages were lost (expected #{self._next_seq}, got #{reply.seq}).")
            self._next_seq += 1
            if reply.kind == "ping":
                continue
            return reply

    def close(self) -> None:
        self._router.close(self.request_id)


def reply_error(reply: Reply) -> GatewayError:
    return reply.error.to_exception() if reply.error else InternalError("The worker failed without detail.")
