"""The front door's reply router: liveness per worker, not per request, against the real Redis."""

from __future__ import annotations

import asyncio
import os
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from shared.errors import NoWorker, UpstreamTimeout
from shared.wire import Reply, ReplyBatch, reply_encoder
from api.replies import ReplyRouter

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HEARTBEAT, SILENCE = 0.1, 0.35


def run_router(test, deadline: float = 3600.0):
    async def run():
        redis = Redis.from_url(REDIS_URL)
        router = ReplyRouter(redis, f"utest-{uuid4().hex[:8]}:reply:p", heartbeat=HEARTBEAT,
                             silence_timeout=SILENCE, deadline=deadline)
        await router.start()
        try:
            return await test(router, redis)
        finally:
            await router.stop()
            await redis.aclose()

    return asyncio.run(run())


async def send(redis: Redis, router: ReplyRouter, worker: str, *replies: Reply) -> None:
    await redis.publish(router.channel, reply_encoder.encode(ReplyBatch(worker, list(replies))))


def test_no_start_within_the_timeout_is_no_worker() -> None:
    async def test(router, redis):
        stream = router.open("r1", start_timeout=0.2)
        with pytest.raises(NoWorker):
            await asyncio.wait_for(stream.next(), 2)
        stream.close()
        return router.open_requests

    assert run_router(test) == 0


def test_a_worker_that_only_says_it_is_alive_keeps_its_streams() -> None:
    """An upstream silent for many silence timeouts: the worker's empty batches keep the stream open."""

    async def test(router, redis):
        stream = router.open("r1", start_timeout=1)
        await send(redis, router, "w1", Reply("r1", 0, "start", model_id="m"))
        assert (await stream.next()).kind == "start"
        waiter = asyncio.create_task(stream.next())
        for _ in range(12):  # 1.2 s, more than three silence timeouts
            await asyncio.sleep(HEARTBEAT)
            await send(redis, router, "w1")
        assert not waiter.done()
        await send(redis, router, "w1", Reply("r1", 1, "done", frames=[b"x"]))
        return await asyncio.wait_for(waiter, 2)

    final = run_router(test)
    assert final.kind == "done" and final.frames == [b"x"]


def test_any_request_of_the_worker_counts_as_life() -> None:
    async def test(router, redis):
        quiet, busy = router.open("quiet", start_timeout=1), router.open("busy", start_timeout=1)
        await send(redis, router, "w1", Reply("quiet", 0, "start"), Reply("busy", 0, "start"))
        await quiet.next()
        await busy.next()
        waiter = asyncio.create_task(quiet.next())
        for seq in range(1, 13):
            await asyncio.sleep(HEARTBEAT)
            await send(redis, router, "w1", Reply("busy", seq, "data", frames=[b"t"]))
        return waiter.done()

    assert run_router(test) is False


def test_a_silent_worker_ends_its_streams_only() -> None:
    async def test(router, redis):
        dead, alive = router.open("dead", start_timeout=1), router.open("alive", start_timeout=1)
        await send(redis, router, "w-dead", Reply("dead", 0, "start"))
        await send(redis, router, "w-alive", Reply("alive", 0, "start"))
        await dead.next()
        await alive.next()
        alive_waiter = asyncio.create_task(alive.next())
        loop = asyncio.get_running_loop()
        started = loop.time()
        dead_waiter = asyncio.create_task(dead.next())
        while not dead_waiter.done() and loop.time() - started < 3:
            await asyncio.sleep(HEARTBEAT / 2)
            await send(redis, router, "w-alive")
        with pytest.raises(UpstreamTimeout, match="went silent"):
            await dead_waiter
        return loop.time() - started, alive_waiter.done()

    took, alive_done = run_router(test)
    assert SILENCE <= took < SILENCE + 4 * HEARTBEAT
    assert alive_done is False


def test_the_overall_deadline_ends_even_a_live_workers_request() -> None:
    async def test(router, redis):
        stream = router.open("r1", start_timeout=1)
        await send(redis, router, "w1", Reply("r1", 0, "start"))
        await stream.next()
        waiter = asyncio.create_task(stream.next())
        while not waiter.done():
            await asyncio.sleep(HEARTBEAT / 2)
            await send(redis, router, "w1")
        with pytest.raises(UpstreamTimeout, match="longer than the gateway allows"):
            await waiter

    run_router(test, deadline=0.5)


def test_a_gap_in_the_sequence_is_reported() -> None:
    async def test(router, redis):
        stream = router.open("r1", start_timeout=1)
        await send(redis, router, "w1", Reply("r1", 0, "start"), Reply("r1", 2, "done"))
        await stream.next()
        with pytest.raises(Exception, match="Reply messages were lost"):
            await stream.next()

    run_router(test)


def test_a_socket_error_from_redis_is_a_503_not_a_500(tmp_path) -> None:
    """redis-py mostly raises its ConnectionError, but a reset mid-command can surface as the OS's."""
    from api.gateway import Gateway
    from shared.config import load_settings
    from shared.errors import Unavailable
    from shared.overlay import FixedRegistry, registry_for
    from shared.wire import Job, Target

    async def run():
        settings = load_settings(None, env={"REACTOR_DATA_DIR": str(tmp_path)})
        registry = await registry_for(settings)
        redis = Redis.from_url(REDIS_URL)
        gateway = Gateway(settings, FixedRegistry(registry), redis, verifier=None)
        gateway.replies._ready.set()  # as if subscribed: the failure comes from the queue

        async def reset(provider):
            raise ConnectionResetError("connection reset by peer")

        gateway.capacity.limit = reset
        job = Job(request_id="r", kind="chat", reply_channel="c", user_id="u",
                  targets=[Target(provider="openrouter", model_id="m", upstream_model="m")], alias=None, body=b"{}")
        try:
            await gateway.submit(job)
        finally:
            await redis.aclose()

    with pytest.raises(Unavailable):
        asyncio.run(run())
