import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import uuid4

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from shared.errors import ProviderError, WireError
from shared.keys import Keys
from shared.wire import Reply, reply_decoder
from workers.publisher import ReplyPublisher

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

T = TypeVar("T")


def with_channel(test: Callable[[Redis, str, PubSub], Awaitable[T]]) -> T:
    """Run `test` with a client, a reply channel of its own and a subscriber already confirmed on it."""
    keys = Keys(prefix=f"utest-{uuid4().hex[:8]}:")
    channel = keys.reply_channel("proc-1")

    async def run() -> T:
        redis = Redis.from_url(REDIS_URL)
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(channel)
            confirmation = await pubsub.get_message(timeout=2.0)
            assert confirmation is not None and confirmation["type"] == "subscribe"
            return await test(redis, channel, pubsub)
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()
            # Pub/sub leaves no keys, but keep the promise in case a publisher ever does.
            leftovers = [key async for key in redis.scan_iter(match=f"{keys.prefix}*")]
            if leftovers:
                await redis.delete(*leftovers)
            await redis.aclose()

    return asyncio.run(run())


async def collect(pubsub: PubSub, timeout: float = 2.0) -> list[Reply]:
    """Replies until a final one (done, result, error) or the timeout."""
    replies: list[Reply] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is None:
            continue
        reply = reply_decoder.decode(message["data"])
        replies.append(reply)
        if reply.kind in ("done", "result", "error"):
            break
    return replies


def frames_of(replies: list[Reply]) -> list[bytes]:
    return [frame for reply in replies for frame in reply.frames]


def check_sequence(replies: list[Reply], request_id: str) -> None:
    assert [r.seq for r in replies] == list(range(len(replies)))
    assert {r.request_id for r in replies} == {request_id}


@pytest.mark.parametrize("yield_every", [None, 1])
def test_500_frames_arrive_in_order_coalesced(yield_every: int | None) -> None:
    sent = [b'{"choices":[{"delta":{"content":"%d"}}]}' % i for i in range(500)]

    async def test(redis: Redis, channel: str, pubsub: PubSub) -> tuple[list[Reply], int]:
        publisher = ReplyPublisher(redis, channel, "req-500", heartbeat=5.0)
        publisher.start("gpt-4o-mini")
        for i, payload in enumerate(sent, 1):
            publisher.frame(payload)
            if yield_every and i % yield_every == 0:
                await asyncio.sleep(0)  # let the sender run while frames keep coming
        await publisher.finish("done")
        return await collect(pubsub), publisher.frames_sent

    replies, frames_sent = with_channel(test)

    check_sequence(replies, "req-500")
    assert replies[0].kind == "start"
    assert replies[0].model_id == "gpt-4o-mini"
    assert replies[0].frames == []
    assert replies[-1].kind == "done"
    assert {r.kind for r in replies[1:-1]} <= {"data"}
    assert frames_of(replies) == sent
    assert frames_sent == 500
    if yield_every is None:
        # The sender never ran before finish: everything rides on the final message.
        assert [r.kind for r in replies] == ["start", "done"]
        assert len(replies[-1].frames) == 500
    else:
        # The sender ran between frames: data messages, each carrying what piled up during a publish.
        assert "data" in [r.kind for r in replies]
        assert len(replies) < 250


def test_heartbeat_pings_during_silence() -> None:
    async def test(redis: Redis, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = ReplyPublisher(redis, channel, "req-ping", heartbeat=0.05)
        publisher.start("claude-3-haiku")
        await asyncio.sleep(0.3)
        publisher.frame(b"late")
        await publisher.finish("done")
        return await collect(pubsub)

    replies = with_channel(test)

    check_sequence(replies, "req-ping")
    kinds = [r.kind for r in replies]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    pings = [r for r in replies if r.kind == "ping"]
    assert 3 <= len(pings) <= 7  # ~6 in 0.3 s at 0.05 s; scheduling may shave one or two
    assert kinds[1 : 1 + len(pings)] == ["ping"] * len(pings)  # pings come before anything else
    assert all(r.frames == [] and r.body is None and r.error is None for r in pings)
    assert frames_of(replies) == [b"late"]


def test_no_ping_while_frames_flow() -> None:
    async def test(redis: Redis, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = ReplyPublisher(redis, channel, "req-busy", heartbeat=0.25)
        publisher.start("gpt-4")
        for i in range(8):
            publisher.frame(b"%d" % i)
            await asyncio.sleep(0.02)
        await publisher.finish("done")
        return await collect(pubsub)

    replies = with_channel(test)

    check_sequence(replies, "req-busy")
    assert "ping" not in [r.kind for r in replies]
    assert frames_of(replies) == [b"%d" % i for i in range(8)]


def test_finish_with_an_error_carries_a_wire_error() -> None:
    error = ProviderError("x", code="upstream_refused", status=429, headers={"Retry-After": "3"})

    async def test(redis: Redis, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = ReplyPublisher(redis, channel, "req-err", heartbeat=5.0)
        publisher.start("gpt-4o")
        publisher.frame(b"partial")
        await publisher.finish("error", error=error)
        return await collect(pubsub)

    replies = with_channel(test)

    check_sequence(replies, "req-err")
    final = replies[-1]
    assert final.kind == "error"
    assert final.error == WireError("ProviderError", "x", 429, "upstream_refused", None, "3")
    back = final.error.to_exception()
    assert type(back) is ProviderError
    assert (back.message, back.status, back.code, back.type) == ("x", 429, "upstream_refused", "provider_error")
    assert back.headers == {"Retry-After": "3"}
    assert frames_of(replies) == [b"partial"]


def test_finish_with_a_plain_provider_error() -> None:
    async def test(redis: Redis, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = ReplyPublisher(redis, channel, "req-err2", heartbeat=5.0)
        publisher.start("gpt-4o")
        await publisher.finish("error", error=ProviderError("x"))
        return await collect(pubsub)

    replies = with_channel(test)

    assert [r.kind for r in replies] == ["start", "error"]
    assert replies[-1].error == WireError.of(ProviderError("x"))
    back = replies[-1].error.to_exception()
    assert type(back) is ProviderError
    assert (back.message, back.status, back.code, back.headers) == ("x", 502, "provider_error", {})


def test_finish_with_a_result_body() -> None:
    body = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'

    async def test(redis: Redis, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = ReplyPublisher(redis, channel, "req-result", heartbeat=5.0)
        publisher.start("gpt-4o-mini")
        await publisher.finish("result", body=body)
        return await collect(pubsub)

    replies = with_channel(test)

    assert [(r.seq, r.kind) for r in replies] == [(0, "start"), (1, "result")]
    assert replies[1].body == body
    assert replies[1].error is None


def test_abandon_sends_no_final_message() -> None:
    async def test(redis: Redis, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = ReplyPublisher(redis, channel, "req-gone", heartbeat=5.0)
        publisher.start("gpt-4o-mini")
        publisher.frame(b"one")
        await asyncio.sleep(0.05)
        await publisher.abandon()
        publisher.frame(b"never")
        return await collect(pubsub, timeout=0.3)

    replies = with_channel(test)

    assert [r.kind for r in replies] == ["start", "data"]
    assert frames_of(replies) == [b"one"]
