"""Sends one request's reply messages to the front door that waits for it.

PUBLISH round trips, not bytes, are what cost: one per SSE event tripled the time per
stream in measurements. So frames that arrive while a publish is in flight are held and
sent together in the next message, and nothing waits unless a publish is already pending.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import GatewayError, WireError
from shared.wire import Reply, reply_encoder


class ReplyLost(Exception):
    """Publishing to the front door failed: nobody will see what this job produces."""


class ReplyPublisher:
    """Coalescing, ordered publisher for one request.

    :param redis: the worker's pool.
    :param channel: the front-door process's reply channel.
    :param request_id: stamped on every message, which the front door routes by.
    :param heartbeat: seconds of silence after which a ``ping`` tells the front door we are alive.
    """

    def __init__(self, redis: Redis, channel: str, request_id: str, heartbeat: float) -> None:
        self._redis = redis
        self._channel = channel
        self._request_id = request_id
        self._heartbeat = heartbeat
        self._seq = 0
        self._frames: list[bytes] = []
        self._final: Reply | None = None
        self._wake = asyncio.Event()
        self._sender: asyncio.Task | None = None
        self.frames_sent = 0
        # What the client has been sent so far, in characters; the front door meters it should
        # this worker die before it records the usage itself.
        self.out_chars = 0

    def start(self, model_id: str) -> None:
        """Begin the reply with a ``start`` message and run the sender in the background."""
        self._final = None
        self._sender = asyncio.create_task(self._send_loop(model_id))

    def frame(self, payload: bytes) -> None:
        """Queue one SSE payload for the next publish.

        :raises ReplyLost: an earlier publish failed, so the job should stop (and its upstream call with it).
        """
        self._check()
        self._frames.append(payload)
        self._wake.set()

    def _check(self) -> None:
        if self._sender is not None and self._sender.done() and not self._sender.cancelled():
            exc = self._sender.exception()
            if exc is not None:
                raise ReplyLost(str(exc)) from exc

    async def finish(self, kind: str, *, body: bytes | None = None, error: GatewayError | None = None) -> None:
        """Send what is buffered plus the final message, and wait until it is out.

        :param kind: ``done``, ``result`` or ``error``.
        """
        self._final = Reply(
            self._request_id, 0, kind, body=body, error=WireError.of(error) if error is not None else None
        )
        self._wake.set()
        if self._sender is not None:
            try:
                await self._sender
            except (RedisError, OSError) as exc:
                raise ReplyLost(str(exc)) from exc

    async def abandon(self) -> None:
        """Stop sending without a final message (the client has gone)."""
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except asyncio.CancelledError:
                pass

    async def _publish(self, reply: Reply) -> None:
        reply.out_chars = self.out_chars
        reply.seq = self._seq
        self._seq += 1
        await self._redis.publish(self._channel, reply_encoder.encode(reply))

    async def _send_loop(self, model_id: str) -> None:
        await self._publish(Reply(self._request_id, 0, "start", model_id=model_id))
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._heartbeat)
            except TimeoutError:
                await self._publish(Reply(self._request_id, 0, "ping"))
                continue
            self._wake.clear()
            frames, self._frames = self._frames, []
            final = self._final
            self.frames_sent += len(frames)
            if final is not None:
                final.frames = frames
                await self._publish(final)
                return
            if frames:
                await self._publish(Reply(self._request_id, 0, "data", frames=frames))
