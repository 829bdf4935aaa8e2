"""Sends every request's reply messages to the front doors that wait for them.

PUBLISH round trips, not bytes, are what cost: one per SSE event tripled the time per
stream in measurements, and a worker holding a thousand slow streams (a token every 100 ms
each) would make ten thousand of them a second, each waiting for a Redis connection of its
own. So one :class:`ReplyHub` per worker process sends for all of its requests: whatever
they produce while one batch is in flight goes out in the next, one PUBLISH per front-door
channel, all in one pipeline. Nothing waits unless a batch is already in flight, so a lone
request's first token still leaves on the next loop turn.

The hub also proves the worker alive: every message names the worker, and every heartbeat
interval a channel with requests open gets one even when their upstreams are silent. The
front door takes any message from a worker as a sign of life for all of that worker's
requests, so a busy worker is never mistaken for a dead one, and a slow upstream is the
read timeout's business, not the front door's.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import GatewayError, WireError
from shared.wire import Reply, ReplyBatch, reply_encoder

logger = logging.getLogger("reactor.worker")

# With this many requests open, the sender waits this long before each batch so that it holds
# more than one or two tokens: at 500 streams of a token every 100 ms, batches sent as fast as
# Redis answers carried 1.5 replies each and the hub's own work was a tenth of the worker's CPU
# (most of it the write system call of each PUBLISH). Below it a batch leaves on the next loop
# turn, so a lone stream's tokens are not delayed; above it a token waits at most this long.
LINGER_ABOVE_OPEN = 64
LINGER_S = 0.005


class ReplyLost(Exception):
    """Publishing to the front door failed: nobody will see what this job produces."""


class ReplyHub:
    """Batches the reply messages of every request of one worker process.

    :param redis: the worker's pool; at most one pipeline of it is in flight at a time.
    :param worker_id: named in every message, which the front door tracks liveness by.
    :param heartbeat: seconds between the liveness messages sent to each channel with open requests.
    """

    def __init__(self, redis: Redis, worker_id: str, heartbeat: float) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._heartbeat = heartbeat
        # Requests with something to send, by channel, in the order they first had it.
        self._dirty: dict[str, list[ReplyPublisher]] = {}
        # How many requests are open per channel: those channels get the liveness messages.
        self._open: dict[str, int] = {}
        self.open_requests = 0
        self._wake = asyncio.Event()
        self.batches_sent = 0

    def open(self, channel: str, request_id: str, seq: int = 0) -> "ReplyPublisher":
        """A publisher for one request; :meth:`ReplyPublisher.start` begins its reply.

        :param seq: the first sequence number, past the messages of the workers that had it before.
        """
        self._open[channel] = self._open.get(channel, 0) + 1
        self.open_requests += 1
        return ReplyPublisher(self, channel, request_id, seq)

    def _closed(self, channel: str) -> None:
        self.open_requests -= 1
        left = self._open.get(channel, 0) - 1
        if left > 0:
            self._open[channel] = left
        else:
            self._open.pop(channel, None)

    def _mark(self, publisher: "ReplyPublisher") -> None:
        self._dirty.setdefault(publisher.channel, []).append(publisher)
        self._wake.set()

    async def run(self) -> None:
        """Send batches until cancelled; run it as a task for the process's lifetime."""
        pinger = asyncio.create_task(self._ping_forever(), name="reply-pings")
        try:
            while True:
                await self._wake.wait()
                if self.open_requests >= LINGER_ABOVE_OPEN:
                    await asyncio.sleep(LINGER_S)
                self._wake.clear()
                await self._send(self._take())
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def flush(self) -> None:
        """Send whatever is pending now (at shutdown, once ``run`` is stopped)."""
        await self._send(self._take())

    def _take(self) -> dict[str, tuple[list[Reply], list["ReplyPublisher"]]]:
        dirty, self._dirty = self._dirty, {}
        batch = {}
        for channel, publishers in dirty.items():
            replies: list[Reply] = []
            for publisher in publishers:
                replies += publisher._take()
            batch[channel] = (replies, publishers)
        return batch

    async def _send(self, batch: dict[str, tuple[list[Reply], list["ReplyPublisher"]]]) -> None:
        if not batch:
            return
        try:
            if len(batch) == 1:
                # The usual case, one front door: one command costs less client time than a pipeline.
                [(channel, (replies, _))] = batch.items()
                await self._redis.publish(channel, reply_encoder.encode(ReplyBatch(self.worker_id, replies)))
            else:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for channel, (replies, _) in batch.items():
                        pipe.publish(channel, reply_encoder.encode(ReplyBatch(self.worker_id, replies)))
                    await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - whatever it was, the batch's requests must not wait forever
            if not isinstance(exc, (RedisError, OSError)):
                logger.exception("publishing a reply batch failed")
            logger.warning("could not publish replies to %d front door(s): %r", len(batch), exc)
            for _, publishers in batch.values():
                for publisher in publishers:
                    publisher._sent(exc)
            return
        self.batches_sent += 1
        for _, publishers in batch.values():
            for publisher in publishers:
                publisher._sent(None)

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            for channel in self._open:
                # An empty batch: "this worker is alive", for every request of it on that channel.
                self._dirty.setdefault(channel, [])
            if self._open:
                self._wake.set()


class ReplyPublisher:
    """The ordered replies of one request: frames produced between two batches travel as one message."""

    def __init__(self, hub: ReplyHub, channel: str, request_id: str, seq: int = 0) -> None:
        self._hub = hub
        self.channel = channel
        self.request_id = request_id
        self._seq = seq
        self._start: Reply | None = None
        self._frames: list[bytes] = []
        self._final: Reply | None = None
        self._marked = False
        self._closed = False
        self._error: BaseException | None = None
        self._done: asyncio.Future[None] | None = None
        self.frames_sent = 0
        # What the client has been sent so far, in characters; the front door meters it should
        # this worker die before it records the usage itself.
        self.out_chars = 0

    @property
    def has_output(self) -> bool:
        """Whether any frame of the answer went (or is going) to the client: past that, no fallback."""
        return self.frames_sent > 0 or bool(self._frames)

    @property
    def next_seq(self) -> int:
        """The sequence number the next message would carry (for the worker a request is handed to)."""
        return self._seq

    def start(self, model_id: str, provider: str | None = None) -> None:
        """Begin the reply (or a new attempt of it): the front door learns the job has a worker, and
        which model, on which provider, serves."""
        self._start = Reply(self.request_id, 0, "start", model_id=model_id, provider=provider)
        self._mark()

    def frame(self, payload: bytes) -> None:
        """Queue one SSE payload for the next batch.

        :raises ReplyLost: an earlier publish failed, so the job should stop (and its upstream call with it).
        """
        if self._error is not None:
            raise ReplyLost(str(self._error)) from self._error
        self._frames.append(payload)
        self._mark()

    async def finish(self, kind: str, *, body: bytes | None = None, error: GatewayError | None = None) -> None:
        """Send what is buffered plus the final message, and wait until it is out.

        :param kind: ``done``, ``result``, ``error``, or ``handoff`` (another worker continues).
        :raises ReplyLost: it could not be published.
        """
        if self._error is not None:
            self._close()
            raise ReplyLost(str(self._error)) from self._error
        self._final = Reply(self.request_id, 0, kind, body=body,
                            error=WireError.of(error) if error is not None else None)
        self._done = asyncio.get_running_loop().create_future()
        self._mark()
        await self._done

    async def abandon(self) -> None:
        """Stop sending, without a final message (the client has gone)."""
        self._frames = []
        self._close()

    def _mark(self) -> None:
        if not self._marked and not self._closed:
            self._marked = True
            self._hub._mark(self)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._closed(self.channel)

    def _take(self) -> list[Reply]:
        """The messages for the batch being sent: the start, then the frames with the final reply, if any."""
        self._marked = False
        if self._closed:
            return []
        if self._error is not None:
            # An earlier batch of this request was lost: the front door will end it; send nothing more.
            self._close()
            return []
        out: list[Reply] = []
        if self._start is not None:
            out.append(self._start)
            self._start = None
        frames, self._frames = self._frames, []
        if self._final is not None:
            self._final.frames = frames
            out.append(self._final)
            self._close()
        elif frames:
            out.append(Reply(self.request_id, 0, "data", frames=frames))
        self.frames_sent += len(frames)
        for reply in out:
            reply.seq = self._seq
            reply.out_chars = self.out_chars
            self._seq += 1
        return out

    def _sent(self, error: BaseException | None) -> None:
        """Called by the hub once the batch holding this request's messages is out, or failed."""
        if error is not None and self._error is None:
            self._error = error
        if self._done is not None and not self._done.done() and self._closed:
            if self._error is not None:
                self._done.set_exception(ReplyLost(str(self._error)))
            else:
                self._done.set_result(None)
