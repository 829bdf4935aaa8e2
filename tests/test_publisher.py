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
from shared.wire import Reply, ReplyBatch, batch_decoder
from workers.publisher import ReplyHub, ReplyLost

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


async def batches(pubsub: PubSub, timeout: float = 2.0, finals: int = 1) -> list[ReplyBatch]:
    """Batches until ``finals`` final replies (done, result, error) were seen, or the timeout."""
    out: list[ReplyBatch] = []
    seen = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and seen < finals:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is None:
            continue
        batch = batch_decoder.decode(message["data"])
        out.append(batch)
        seen += sum(r.kind in ("done", "result", "error") for r in batch.replies)
    return out


async def collect(pubsub: PubSub, timeout: float = 2.0) -> list[Reply]:
    """Replies until a final one (done, result, error) or the timeout."""
    return [r for b in await batches(pubsub, timeout) for r in b.replies]


def with_hub(test: Callable[[ReplyHub, str, PubSub], Awaitable[T]], heartbeat: float = 5.0) -> T:
    """``with_channel`` with a running hub that sends on the test's Redis."""

    async def run(redis: Redis, channel: str, pubsub: PubSub) -> T:
        hub = ReplyHub(redis, "worker-1", heartbeat)
        sender = asyncio.create_task(hub.run())
        try:
            return await test(hub, channel, pubsub)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    return with_channel(run)


def frames_of(replies: list[Reply]) -> list[bytes]:
    return [frame for reply in replies for frame in reply.frames]


def check_sequence(replies: list[Reply], request_id: str) -> None:
    assert [r.seq for r in replies] == list(range(len(replies)))
    assert {r.request_id for r in replies} == {request_id}


@pytest.mark.parametrize("yield_every", [None, 1])
def test_500_frames_arrive_in_order_coalesced(yield_every: int | None) -> None:
    sent = [b'{"choices":[{"delta":{"content":"%d"}}]}' % i for i in range(500)]

    async def test(hub: ReplyHub, channel: str, pubsub: PubSub) -> tuple[list[Reply], int]:
        publisher = hub.open(channel, "req-500")
        publisher.start("gpt-4o-mini")
        for i, payload in enumerate(sent, 1):
            publisher.frame(payload)
            if yield_every and i % yield_every == 0:
                await asyncio.sleep(0)  # let the sender run while frames keep coming
        await publisher.finish("done")
        return await collect(pubsub), publisher.frames_sent

    replies, frames_sent = with_hub(test)

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


def test_many_requests_share_one_message_per_batch() -> None:
    """A thousand streams each sending a token at once cost a handful of PUBLISHes, not a thousand."""

    async def test(hub: ReplyHub, channel: str, pubsub: PubSub) -> list[ReplyBatch]:
        publishers = [hub.open(channel, f"req-{i}") for i in range(1000)]
        for p in publishers:
            p.start("m")
        await asyncio.sleep(0.05)
        for round_ in range(3):
            for i, p in enumerate(publishers):
                p.frame(b"%d-%d" % (i, round_))
            await asyncio.sleep(0)
        await asyncio.gather(*(p.finish("done") for p in publishers))
        return await batches(pubsub, finals=1000)

    got = with_hub(test)

    assert {b.worker_id for b in got} == {"worker-1"}
    assert len(got) <= 10
    by_request: dict[str, list[Reply]] = {}
    for batch in got:
        for reply in batch.replies:
            by_request.setdefault(reply.request_id, []).append(reply)
    assert len(by_request) == 1000
    for i in range(1000):
        replies = by_request[f"req-{i}"]
        check_sequence(replies, f"req-{i}")
        assert replies[0].kind == "start" and replies[-1].kind == "done"
        assert frames_of(replies) == [b"%d-%d" % (i, r) for r in range(3)]


def test_requests_on_two_front_doors_go_to_their_own_channel() -> None:
    async def test(redis: Redis, channel: str, pubsub: PubSub) -> tuple[list[Reply], int]:
        hub = ReplyHub(redis, "worker-2", 5.0)
        sender = asyncio.create_task(hub.run())
        other = hub.open(channel + "-other", "req-other")
        mine = hub.open(channel, "req-mine")
        other.start("m")
        mine.start("m")
        await asyncio.sleep(0.05)
        starts = hub.batches_sent
        other.frame(b"theirs")
        mine.frame(b"mine")
        await asyncio.gather(other.finish("done"), mine.finish("done"))
        sender.cancel()
        return await collect(pubsub), starts

    replies, sent = with_channel(test)

    assert {r.request_id for r in replies} == {"req-mine"}
    assert frames_of(replies) == [b"mine"]
    assert sent == 1  # both channels' start messages went out in one pipeline


def test_liveness_messages_while_requests_are_open() -> None:
    async def test(hub: ReplyHub, channel: str, pubsub: PubSub) -> tuple[list[ReplyBatch], list[ReplyBatch]]:
        publisher = hub.open(channel, "req-slow")
        publisher.start("claude-3-haiku")
        await asyncio.sleep(0.33)  # an upstream that says nothing for a while
        publisher.frame(b"late")
        await publisher.finish("done")
        during = await batches(pubsub)
        await asyncio.sleep(0.25)  # nothing open now: no more liveness messages
        after = await batches(pubsub, timeout=0.2, finals=1)
        return during, after

    during, after = with_hub(test, heartbeat=0.05)

    empty = [b for b in during if not b.replies]
    assert len(empty) >= 3  # about six in 0.33 s; scheduling may shave some
    assert all(b.worker_id == "worker-1" for b in during)
    replies = [r for b in during for r in b.replies]
    check_sequence(replies, "req-slow")
    assert frames_of(replies) == [b"late"]
    assert after == []


def test_finish_with_an_error_carries_a_wire_error() -> None:
    error = ProviderError("x", code="upstream_refused", status=429, headers={"Retry-After": "3"})

    async def test(hub: ReplyHub, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = hub.open(channel, "req-err")
        publisher.start("gpt-4o")
        publisher.frame(b"partial")
        await publisher.finish("error", error=error)
        return await collect(pubsub)

    replies = with_hub(test)

    check_sequence(replies, "req-err")
    final = replies[-1]
    assert final.kind == "error"
    assert final.error == WireError("ProviderError", "x", 429, "upstream_refused", None, "3", True)
    back = final.error.to_exception()
    assert type(back) is ProviderError
    assert (back.message, back.status, back.code, back.type) == ("x", 429, "upstream_refused", "provider_error")
    assert back.headers == {"Retry-After": "3"}
    assert frames_of(replies) == [b"partial"]


def test_finish_with_a_result_body() -> None:
    body = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'

    async def test(hub: ReplyHub, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = hub.open(channel, "req-result")
        publisher.start("gpt-4o-mini")
        await asyncio.sleep(0.02)
        await publisher.finish("result", body=body)
        return await collect(pubsub)

    replies = with_hub(test)

    assert [(r.seq, r.kind) for r in replies] == [(0, "start"), (1, "result")]
    assert replies[1].body == body
    assert replies[1].error is None


def test_abandon_sends_no_final_message() -> None:
    async def test(hub: ReplyHub, channel: str, pubsub: PubSub) -> list[Reply]:
        publisher = hub.open(channel, "req-gone")
        publisher.start("gpt-4o-mini")
        publisher.frame(b"one")
        await asyncio.sleep(0.05)
        publisher.frame(b"dropped")
        await publisher.abandon()
        publisher.frame(b"never")
        return await collect(pubsub, timeout=0.3)

    replies = with_hub(test)

    assert [r.kind for r in replies] == ["start", "data"]
    assert frames_of(replies) == [b"one"]


def test_a_failed_publish_is_reply_lost_for_its_requests() -> None:
    """Redis unreachable: finish raises ReplyLost, and so does every later frame, so the job stops."""

    async def run() -> tuple[BaseException | None, BaseException | None]:
        redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        hub = ReplyHub(redis, "worker-x", 5.0)
        sender = asyncio.create_task(hub.run())
        publisher = hub.open("nowhere", "req-lost")
        publisher.start("m")
        publisher.frame(b"a")
        finish_error = frame_error = None
        try:
            await asyncio.wait_for(publisher.finish("done"), 5)
        except ReplyLost as exc:
            finish_error = exc
        try:
            publisher.frame(b"b")
        except ReplyLost as exc:
            frame_error = exc
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await redis.aclose()
        return finish_error, frame_error

    finish_error, frame_error = asyncio.run(run())
    assert isinstance(finish_error, ReplyLost)
    assert isinstance(frame_error, ReplyLost)
