"""Receiving workers' replies: one pub/sub connection per front-door process.

The process subscribes to its own reply channel once, at start-up, before it accepts a
request, so no token can be published before someone listens. Each message is a batch from
one worker naming each reply's request; the router hands each to that request's queue.

Liveness is tracked per worker, not per request: any message from a worker (a batch of
anyone's tokens, or the empty batch it sends every heartbeat interval) counts as life for
every request it serves. One watchdog pass per heartbeat interval ends the requests of a
worker silent for longer than the silence timeout, so waiting for the next token costs no
timer per message, and a busy worker with thousands of slow streams is never taken for dead.
A slow upstream is not the front door's business: the worker's read timeout ends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import msgspec
from redis.asyncio import Redis

from shared.errors import GatewayError, InternalError, NoWorker, Unavailable, UpstreamTimeout, WireError
from shared.reconnect import Reconnect
from shared.wire import Reply, batch_decoder

logger = logging.getLogger("reactor.api")

_LOST = Reply("", -1, "error", error=WireError.of(Unavailable("The connection to Redis was lost mid-request.")))


class ReplyRouter:
    """Routes reply messages on ``channel`` to the requests waiting for them.

    :param redis: a pool; the router takes one connection from it for good.
    :param channel: this process's reply channel.
    :param heartbeat: how often workers prove they are alive, and how often the watchdog looks.
    :param silence_timeout: a worker silent this long is taken for dead, and its requests end.
    :param deadline: no request waits for replies longer than this in all, whatever happens.
    """

    def __init__(self, redis: Redis, channel: str, heartbeat: float = 2.0, silence_timeout: float = 7.0,
                 deadline: float = 3600.0) -> None:
        self.redis = redis
        self.channel = channel
        self.heartbeat = heartbeat
        self.silence_timeout = silence_timeout
        self.deadline = deadline
        self._waiting: dict[str, ReplyStream] = {}
        self._seen: dict[str, float] = {}
        self._tasks: list[asyncio.Task] = []
        self._ready = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="reply-router"),
                       asyncio.create_task(self._watch(), name="reply-watchdog")]
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def open_requests(self) -> int:
        return len(self._waiting)

    def open(self, request_id: str, start_timeout: float) -> "ReplyStream":
        """Listen for ``request_id``'s replies; without a first one within ``start_timeout``, it fails with 503.

        The same wait applies again after each hand-off to another worker pool.
        """
        stream = ReplyStream(self, request_id, start_timeout)
        stream._timer = asyncio.get_running_loop().call_later(start_timeout, stream._no_worker)
        self._waiting[request_id] = stream
        return stream

    def close(self, request_id: str) -> None:
        stream = self._waiting.pop(request_id, None)
        if stream is not None and stream._timer is not None:
            stream._timer.cancel()

    async def _run(self) -> None:
        reconnect = Reconnect(cap=2.0)
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Wait for the confirmation: until it arrives, published replies would be lost.
                while (msg := await pubsub.get_message(timeout=5.0)) is None or msg["type"] != "subscribe":
                    pass
                self._ready.set()
                reconnect.succeeded()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if msg is None or msg["type"] != "message":
                        continue
                    try:
                        batch = batch_decoder.decode(msg["data"])
                    except msgspec.DecodeError:
                        logger.warning("dropped a malformed reply message")
                        continue
                    self._seen[batch.worker_id] = loop.time()
                    for reply in batch.replies:
                        stream = self._waiting.get(reply.request_id)
                        if stream is not None:
                            stream._deliver(reply, batch.worker_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Messages may have been missed while the connection was down: every request in
                # flight is ended with an error rather than left waiting for a gap it cannot see.
                self._ready.clear()
                logger.warning("reply channel lost (%r); resubscribing", exc)
                for stream in list(self._waiting.values()):
                    stream._put(_LOST)
                await reconnect.wait()
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _watch(self) -> None:
        """End the requests of workers that went silent, and any request past the overall deadline."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat)
            now = loop.time()
            for stream in list(self._waiting.values()):
                if stream.worker_id is not None and now - self._seen.get(stream.worker_id, 0.0) > self.silence_timeout:
                    stream._fail(UpstreamTimeout("The worker serving this request went silent."))
                elif now - stream.opened > self.deadline:
                    stream._fail(UpstreamTimeout("The request took longer than the gateway allows."))
            # Forget workers nobody waits on any more.
            serving = {s.worker_id for s in self._waiting.values()}
            for worker_id in [w for w, t in self._seen.items() if w not in serving and now - t > 60]:
                del self._seen[worker_id]


class ReplyStream:
    """The replies of one request, checked for order.

    A fallback to another provider's pool hands the request from one worker to the next: the
    first worker's ``handoff`` message unbinds the stream (no worker to watch; the start timeout
    runs again), the next worker's first message binds it to that worker, and its sequence
    numbers continue where the first left off. ``model_id`` and ``provider`` follow each attempt's
    ``start``, so after a fallback they name what served.
    """

    def __init__(self, router: ReplyRouter, request_id: str, start_timeout: float = 10.0) -> None:
        self._router = router
        self.request_id = request_id
        self._start_timeout = start_timeout
        self._started = False
        self.model_id: str | None = None
        self.provider: str | None = None
        # A deque and one waiter rather than an asyncio.Queue: this is touched once per token,
        # and only one coroutine ever waits on it.
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._next_seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False
        self.worker_id: str | None = None
        self.opened = asyncio.get_running_loop().time()

    async def next(self) -> Reply:
        """The next reply.

        :raises GatewayError: no worker took the request in time, its worker went silent, a reply
            was lost (a gap in the sequence), or the router lost Redis.
        """
        while True:
            reply = self._replies.popleft() if self._replies else None
            if reply is None:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            if reply.seq == -1:
                raise reply.error.to_exception()
            if reply.seq != self._next_seq:
                raise InternalError(f"Reply messages were lost (expected #{self._next_seq}, got #{reply.seq}).")
            self._next_seq += 1
            if reply.kind == "start":
                self.model_id, self.provider = reply.model_id, reply.provider
                if self._started:
                    continue  # a later attempt announcing itself: nothing for the client
                self._started = True
            elif reply.kind == "handoff":
                continue
            return reply

    def close(self) -> None:
        self._router.close(self.request_id)

    def _put(self, reply: Reply) -> None:
        self._replies.append(reply)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deliver(self, reply: Reply, worker_id: str) -> None:
        if reply.kind == "handoff":
            # Another pool takes over: nobody to watch until its worker speaks, who must do so in time.
            self.worker_id = None
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self._start_timeout, self._no_worker)
            self._put(reply)
            return
        if self.worker_id is None:
            self.worker_id = worker_id
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._put(reply)

    def _fail(self, exc: GatewayError) -> None:
        if not self._failed:
            self._failed = True
            self._put(Reply(self.request_id, -1, "error", error=WireError.of(exc)))

    def _no_worker(self) -> None:
        self._timer = None
        if self.worker_id is None:
            self._fail(NoWorker("No worker took the request in time; try again shortly."))


def reply_error(reply: Reply) -> GatewayError:
    return reply.error.to_exception() if reply.error else InternalError("The worker failed without detail.")
