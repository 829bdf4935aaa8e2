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

A worker found silent before any of the answer reached the client does not fail its request: the
request runs again, once (:data:`WORKER_LOST_RERUNS`), on another live worker of the pool, through
the ``rerun`` hook the request was opened with. The new run has a reply id of its own
(``shared/queue.py`` ``reply_id``), so whatever the lost run still sends, should its worker have
been only slow, names no open request and is dropped. Once output went out, the stream ends with
the silence error, as before. A non-streamed result stays watched for one silence period after it
arrived: a worker that falls silent before it was heard from again may have died before metering
the request, and the ``unsettled`` hook meters it from the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from shared.errors import GatewayError, InternalError, NoWorker, Unavailable, UpstreamTimeout, WireError
from shared.queue import reply_id
from shared.reconnect import Reconnect
from shared.redis_client import LISTEN_POLL_S, PubSubLiveness
from shared.wire import Reply, batch_decoder

logger = logging.getLogger("reactor.api")

_LOST = Reply("", -1, "error", error=WireError.of(Unavailable("The connection to Redis was lost mid-request.")))
# The sequence number of the watchdog's "the worker went silent" message (-1: any other failure).
_SILENT = -2

# How many times a request whose worker was lost before any output is run again on another worker.
WORKER_LOST_RERUNS = 1

# Runs the request of a stream again after its worker was lost: called with the stream (its
# ``run`` already the new one) and the reply id of the lost run. Raises a GatewayError when it
# cannot (no live worker left, the pool full, Redis away).
Rerun = Callable[["ReplyStream", str], Awaitable[None]]
# Meters a non-streamed request whose worker fell silent right after its result: called with the
# stream and the result.
Unsettled = Callable[["ReplyStream", Reply], None]


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
        # Non-streamed results whose worker has not been heard from since: (stream, result, when).
        self._settling: dict[str, tuple[ReplyStream, Reply, float]] = {}
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

    def open(self, request_id: str, start_timeout: float, *, rerun: Rerun | None = None,
             unsettled: Unsettled | None = None) -> "ReplyStream":
        """Listen for ``request_id``'s replies; without a first one within ``start_timeout``, it fails with 503.

        The same wait applies again after each hand-off to another worker pool, and after a re-run.

        :param rerun: runs the request again when its worker is lost before any output; without
            it such a request fails.
        :param unsettled: meters a non-streamed request whose worker fell silent after its result.
        """
        stream = ReplyStream(self, request_id, start_timeout, rerun, unsettled)
        stream._timer = asyncio.get_running_loop().call_later(start_timeout, stream._no_worker)
        self._waiting[request_id] = stream
        return stream

    def close(self, key: str) -> None:
        """Stop listening for the replies of the run that ``key`` (a stream's ``reply_id``) names."""
        stream = self._waiting.pop(key, None)
        if stream is not None and stream._timer is not None:
            stream._timer.cancel()

    def _settle(self, stream: "ReplyStream", result: Reply) -> None:
        """Watch a non-streamed request's worker for one silence period after its result."""
        self.close(stream.reply_id)
        if stream.worker_id is not None and stream._unsettled is not None:
            self._settling[stream.reply_id] = (stream, result, asyncio.get_running_loop().time())

    def _rekey(self, stream: "ReplyStream", lost: str) -> None:
        """Listen for the stream's new run instead of the lost one."""
        if self._waiting.get(lost) is stream:
            del self._waiting[lost]
        self._waiting[stream.reply_id] = stream

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
                live = PubSubLiveness(pubsub)
                while True:
                    # Never timeout=None: redis-py would read with the socket timeout and fail.
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL_S)
                    if msg is None:
                        await live.quiet()
                        continue
                    live.heard()
                    if msg["type"] != "message":
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
                    stream._silent()
                elif now - stream.opened > self.deadline:
                    stream._fail(UpstreamTimeout("The request took longer than the gateway allows."))
            for key, (stream, result, since) in list(self._settling.items()):
                seen = self._seen.get(stream.worker_id, 0.0)
                if seen > since:
                    del self._settling[key]  # heard from after its result: alive, it meters the request itself
                elif now - seen > self.silence_timeout:
                    del self._settling[key]
                    try:
                        stream._unsettled(stream, result)
                    except Exception:
                        logger.exception("metering the request %s of a lost worker failed", stream.request_id)
            # Forget workers nobody waits on any more.
            serving = {s.worker_id for s in self._waiting.values()}
            serving.update(s.worker_id for s, _, _ in self._settling.values())
            for worker_id in [w for w, t in self._seen.items() if w not in serving and now - t > 60]:
                del self._seen[worker_id]


class ReplyStream:
    """The replies of one request, checked for order.

    A fallback to another provider's pool hands the request from one worker to the next: the
    first worker's ``handoff`` message unbinds the stream (no worker to watch; the start timeout
    runs again), the next worker's first message binds it to that worker, and its sequence
    numbers continue where the first left off. ``model_id`` and ``provider`` follow each attempt's
    ``start``, so after a fallback they name what served.

    A worker that goes silent before anything but its ``start`` was read from the stream is lost
    before any output: the stream runs the request again (``rerun``), listens under the new run's
    ``reply_id`` only, and its sequence starts again from 0.
    """

    def __init__(self, router: ReplyRouter, request_id: str, start_timeout: float = 10.0,
                 rerun: Rerun | None = None, unsettled: Unsettled | None = None) -> None:
        self._router = router
        self.request_id = request_id
        # The id the current run's replies name; the request id until the request runs again.
        self.reply_id = request_id
        self.run = 0
        self._rerun = rerun
        self._unsettled = unsettled
        self._start_timeout = start_timeout
        self._started = False
        self._start_seq = 0  # the current attempt's "start": nothing read past it means no output yet
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
            if reply.seq < 0:
                if reply.seq == _SILENT and self._may_rerun():
                    await self._run_again()
                    continue
                raise reply.error.to_exception()
            if reply.seq != self._next_seq:
                raise InternalError(f"Reply messages were lost (expected #{self._next_seq}, got #{reply.seq}).")
            self._next_seq += 1
            if reply.kind == "start":
                self.model_id, self.provider = reply.model_id, reply.provider
                self._start_seq = reply.seq
                if self._started:
                    continue  # a later attempt announcing itself: nothing for the client
                self._started = True
            elif reply.kind == "handoff":
                continue
            return reply

    def close(self, result: Reply | None = None) -> None:
        """Stop listening.

        :param result: the non-streamed result just read: its worker stays watched for one silence
            period, and is metered from it should it fall silent (it may have died before metering).
        """
        if result is None:
            self._router.close(self.reply_id)
        else:
            self._router._settle(self, result)

    def _may_rerun(self) -> bool:
        """Whether the request may run again: nothing after the attempt's ``start`` was read, so
        nothing reached the client, and a re-run is left."""
        return self._rerun is not None and self.run < WORKER_LOST_RERUNS and self._next_seq <= self._start_seq + 1

    async def _run_again(self) -> None:
        """Listen for a new run of the request and have it started; within the start timeout its
        worker must speak, as the first one had to.

        :raises GatewayError: the request cannot run again (no live worker is left, say).
        """
        lost = self.reply_id
        self.run += 1
        self.reply_id = reply_id(self.request_id, self.run)
        self._router._rekey(self, lost)
        # What the lost run still had queued here is not the client's any more.
        self._replies.clear()
        self._next_seq = self._start_seq = 0
        self.worker_id = None
        self._failed = False
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._start_timeout, self._no_worker)
        logger.warning("request %s: its worker went silent before any output; running it again (run %d)",
                       self.request_id, self.run)
        assert self._rerun is not None
        await self._rerun(self, lost)

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

    def _fail(self, exc: GatewayError, seq: int = -1) -> None:
        if not self._failed:
            self._failed = True
            self._put(Reply(self.request_id, seq, "error", error=WireError.of(exc)))

    def _silent(self) -> None:
        """The watchdog's word that the worker is lost; :meth:`next` decides between a re-run and the error."""
        self._fail(UpstreamTimeout("The worker serving this request went silent."), _SILENT)

    def _no_worker(self) -> None:
        self._timer = None
        if self.worker_id is None:
            self._fail(NoWorker("No worker took the request in time; try again shortly."))


def reply_error(reply: Reply) -> GatewayError:
    return reply.error.to_exception() if reply.error else InternalError("The worker failed without detail.")
