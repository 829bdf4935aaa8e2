"""A worker lost while it serves a request (SIGKILL, or silent for longer than the silence timeout).

What this file proves:

- lost before any output reached the client, the request runs again on another live worker of
  the pool and the client (the official ``openai`` SDK) gets its whole answer, streamed or not; the
  upstream saw two requests and the request is metered once;
- lost mid-stream, the stream ends with the clean SSE error event and the front door meters what
  the client got, once, as ``worker_lost``; nothing runs again;
- lost with no other live worker, the client gets 503 ``no_worker_available`` in bounded time;
- a worker that was only slow cannot put a second answer into the stream: the replies of the lost
  run are ignored once the next run started;
- a non-streamed request whose worker falls silent right after its result reached the front door
  (it may have died before metering) is metered by the front door as ``worker_lost``, from the
  usage in the result, and only once. Killing a worker in the microseconds between its result and
  its usage record cannot be timed from outside, so this is tested on the front door's own parts
  (a real Redis, fake worker messages).

Real ``reactor api`` and ``reactor worker`` processes for the end-to-end cases: two workers on the
``local`` pool, a mock upstream that notes which client port (which worker process) each request
came from and answers late, so there is time to kill the worker that holds the request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import msgspec
import openai
import psutil
import pytest
from arq.constants import job_key_prefix
from redis.asyncio import Redis

from api.gateway import Gateway
from api.inference import single
from api.replies import ReplyRouter
from shared.config import load_settings
from shared.errors import NoWorker, UpstreamTimeout
from shared.fleet import silence_timeout
from shared.overlay import FixedRegistry, registry_for
from shared.wire import Cancel, Job, Reply, ReplyBatch, Target, job_decoder, reply_encoder

from .gateway_proc import LOCAL_KEY, RunningGateway
from .mocks.openai import MockUpstream

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# One wait, whatever it waits for, never runs longer than this.
WAIT_S = 15.0
# How long the upstream takes before it answers at all, while a test wants time to kill its worker.
SLOW_FIRST_TOKEN_S = 1.5
# The gateway's heartbeat in tests/gateway_proc.py, and what follows from it.
GATEWAY_HEARTBEAT = 0.5
GATEWAY_SILENCE = silence_timeout(GATEWAY_HEARTBEAT)
GATEWAY_QUEUE_TIMEOUT = 3.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- end to end: real processes ---------------------------------------------------------------------


class PeerUpstream(MockUpstream):
    """The OpenAI-flavoured mock, noting the client port of every chat request (the connection a
    worker process holds) and answering ``first_delay_s`` late."""

    def __init__(self) -> None:
        super().__init__(api_key=LOCAL_KEY, flavour="openai")
        self.first_delay_s = 0.0
        self.peers: list[int] = []

    async def _chat(self, request):
        with self._lock:
            self.peers.append(request.client.port)
        if self.first_delay_s:
            await anyio.sleep(self.first_delay_s)
        return await super()._chat(request)

    def clear(self) -> None:
        with self._lock:
            self.peers.clear()
            self.received.clear()


@pytest.fixture(scope="module")
def upstream():
    with PeerUpstream() as mock:
        yield mock


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, redis_url, openrouter_mock, upstream):
    gw = RunningGateway(tmp_path_factory.mktemp("worker-loss"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                        openrouter_mock.url, upstream.url, worker_providers=("local",))
    gw.start()
    yield gw
    gw.stop()


def worker_procs(gw: RunningGateway) -> list[subprocess.Popen]:
    return [p for p in (gw.worker, *gw.extras) if p is not None and p.poll() is None]


def live_local_workers(gw: RunningGateway) -> int:
    try:
        return httpx.get(f"{gw.base_url}/health", timeout=1).json()["workers"].get("local", 0)
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


def keep_workers(gw: RunningGateway, upstream: PeerUpstream, count: int) -> None:
    """Exactly ``count`` live workers on the ``local`` pool (started or killed), a quiet upstream."""
    procs = worker_procs(gw)
    for proc in procs[count:]:
        kill(proc)
    for _ in range(count - len(procs)):
        gw.extra_worker("local")
    assert wait_until(lambda: live_local_workers(gw) == count), gw.logs()
    upstream.first_delay_s = 0.0
    upstream.clear()


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def kill_the_worker_holding(gw: RunningGateway, port: int) -> None:
    """SIGKILL the worker process whose upstream connection comes from ``port``."""
    for proc in worker_procs(gw):
        process = psutil.Process(proc.pid)
        for p in (process, *process.children(recursive=True)):
            if any(c.laddr and c.laddr.port == port for c in p.net_connections(kind="tcp")):
                kill(proc)
                return
    raise AssertionError(f"no worker holds the upstream connection from port {port}")


def kill_when_the_upstream_is_asked(gw: RunningGateway, upstream: PeerUpstream, asked: int = 1) -> None:
    assert wait_until(lambda: len(upstream.peers) >= asked), "the upstream was never asked"
    kill_the_worker_holding(gw, upstream.peers[asked - 1])


def usage_of(gw: RunningGateway, request_id: str) -> list[dict]:
    return [e["properties"] for e in gw.usage_events() if e["properties"]["request_id"] == request_id]


def metered_once(gw: RunningGateway, request_id: str) -> dict:
    """The request's one usage record; waits for it, then a while longer for a second that must not come."""
    assert wait_until(lambda: len(usage_of(gw, request_id)) >= 1), "the request was never metered"
    time.sleep(2 * GATEWAY_HEARTBEAT)
    records = usage_of(gw, request_id)
    assert len(records) == 1, records
    return records[0]


def test_non_stream_worker_killed_before_its_answer_runs_again(two_workers, upstream):
    gw = two_workers
    keep_workers(gw, upstream, 2)
    upstream.first_delay_s = SLOW_FIRST_TOKEN_S
    client = gw.client()
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(client.chat.completions.create, model="mock-local",
                            messages=[{"role": "user", "content": "run me twice"}])
        kill_when_the_upstream_is_asked(gw, upstream)
        completion = asked.result(timeout=WAIT_S)
    assert completion.choices[0].message.content == "Hello from mock: run me twice"
    assert len(upstream.peers) == 2  # the lost run's request, and the one that answered
    record = metered_once(gw, completion.id.removeprefix("chatcmpl-"))
    assert record["status"] == "ok" and record["tokens_out"] == completion.usage.completion_tokens


def test_stream_worker_killed_before_its_first_token_runs_again(two_workers, upstream):
    gw = two_workers
    keep_workers(gw, upstream, 2)
    upstream.first_delay_s = SLOW_FIRST_TOKEN_S
    client = gw.client()

    def read() -> tuple[str, str, list]:
        stream = client.chat.completions.create(model="mock-local", stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "#chunks=5"}])
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return chunks[0].id, text, chunks

    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(read)
        kill_when_the_upstream_is_asked(gw, upstream)
        chunk_id, text, chunks = asked.result(timeout=WAIT_S)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert len({c.id for c in chunks}) == 1  # one completion, not two runs' pieces
    assert len(upstream.peers) == 2
    record = metered_once(gw, chunk_id.removeprefix("chatcmpl-"))
    assert record["status"] == "ok" and record["tokens_out"] == chunks[-1].usage.completion_tokens


def test_stream_worker_killed_mid_stream_ends_cleanly_and_is_not_run_again(two_workers, upstream):
    gw = two_workers
    keep_workers(gw, upstream, 2)
    client = gw.client()
    stream = client.chat.completions.create(model="mock-local", stream=True,
                                            messages=[{"role": "user", "content": "#chunks=400 #delay=25"}])
    got = 0
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got += 1
            request_id = chunk.id.removeprefix("chatcmpl-")
            if got == 3:
                kill_the_worker_holding(gw, upstream.peers[0])
    assert "silent" in str(info.value)
    assert 3 <= got < 400
    record = metered_once(gw, request_id)
    assert record["status"] == "worker_lost" and record["tokens_out"] >= 1
    assert len(upstream.peers) == 1  # output went out: nothing is run again


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_worker_killed_with_no_other_worker_is_a_503(two_workers, upstream, stream):
    gw = two_workers
    keep_workers(gw, upstream, 1)
    upstream.first_delay_s = SLOW_FIRST_TOKEN_S
    client = gw.client()

    def ask():
        answer = client.chat.completions.create(model="mock-local", stream=stream,
                                                messages=[{"role": "user", "content": "alone"}])
        return list(answer) if stream else answer

    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(ask)
        kill_when_the_upstream_is_asked(gw, upstream)
        killed = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            asked.result(timeout=WAIT_S)
    # Noticed after the silence timeout, refused at once: no wait for a queue that no worker reads.
    assert time.monotonic() - killed < GATEWAY_SILENCE + GATEWAY_QUEUE_TIMEOUT
    assert info.value.status_code == 503
    assert info.value.body["code"] == "no_worker_available"
    assert len(upstream.peers) == 1


# -- the front door's parts: real Redis, fake workers ----------------------------------------------

HEARTBEAT, SILENCE = 0.1, 0.35


def run_router(test):
    async def run():
        redis = Redis.from_url(REDIS_URL)
        router = ReplyRouter(redis, f"utest-{uuid.uuid4().hex[:8]}:reply:p", heartbeat=HEARTBEAT,
                             silence_timeout=SILENCE)
        await router.start()
        try:
            return await test(router, redis)
        finally:
            await router.stop()
            await redis.aclose()

    return asyncio.run(run())


async def send(redis: Redis, channel: str, worker: str, *replies: Reply) -> None:
    await redis.publish(channel, reply_encoder.encode(ReplyBatch(worker, list(replies))))


class Reruns:
    """A rerun hook that notes its calls, or refuses with ``refuse``."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.refuse = refuse

    async def __call__(self, stream, lost: str) -> None:
        self.calls.append((stream.run, lost))
        if self.refuse is not None:
            raise self.refuse


def test_a_worker_lost_before_output_runs_again_and_its_late_replies_are_ignored() -> None:
    async def test(router, redis):
        reruns = Reruns()
        stream = router.open("r1", start_timeout=1, rerun=reruns)
        await send(redis, router.channel, "w-slow", Reply("r1", 0, "start", model_id="m"))
        assert (await stream.next()).kind == "start"
        waiter = asyncio.create_task(stream.next())
        assert await asyncio.to_thread(wait_until, lambda: reruns.calls, 3)
        assert stream.reply_id != "r1" and stream.run == 1
        # The lost worker was only slow: its answer names the lost run and goes nowhere.
        await send(redis, router.channel, "w-slow", Reply("r1", 1, "result", body=b"old"))
        await send(redis, router.channel, "w-new", Reply(stream.reply_id, 0, "start", model_id="m"),
                   Reply(stream.reply_id, 1, "result", body=b"new"))
        reply = await asyncio.wait_for(waiter, 2)
        stream.close()
        return reruns.calls, reply, router.open_requests

    calls, reply, open_requests = run_router(test)
    assert calls == [(1, "r1")]
    assert reply.kind == "result" and reply.body == b"new"
    assert open_requests == 0


def test_a_worker_lost_after_output_is_not_run_again() -> None:
    async def test(router, redis):
        reruns = Reruns()
        stream = router.open("r1", start_timeout=1, rerun=reruns)
        await send(redis, router.channel, "w1", Reply("r1", 0, "start"), Reply("r1", 1, "data", frames=[b"{}"]))
        await stream.next()
        assert (await stream.next()).kind == "data"
        with pytest.raises(UpstreamTimeout, match="went silent"):
            await asyncio.wait_for(stream.next(), 3)
        stream.close()
        return reruns.calls

    assert run_router(test) == []


def test_a_request_runs_again_once_only() -> None:
    async def test(router, redis):
        reruns = Reruns()
        stream = router.open("r1", start_timeout=1, rerun=reruns)
        await send(redis, router.channel, "w1", Reply("r1", 0, "start"))
        await stream.next()
        waiter = asyncio.create_task(stream.next())
        assert await asyncio.to_thread(wait_until, lambda: reruns.calls, 3)
        await send(redis, router.channel, "w2", Reply(stream.reply_id, 0, "start"))  # then w2 dies as well
        with pytest.raises(UpstreamTimeout, match="went silent"):
            await asyncio.wait_for(waiter, 3)
        stream.close()
        return reruns.calls

    assert len(run_router(test)) == 1


def test_a_rerun_that_cannot_start_is_the_clients_error() -> None:
    async def test(router, redis):
        stream = router.open("r1", start_timeout=1, rerun=Reruns(refuse=NoWorker("No worker serves it.")))
        await send(redis, router.channel, "w1", Reply("r1", 0, "start"))
        await stream.next()
        with pytest.raises(NoWorker):
            await asyncio.wait_for(stream.next(), 3)
        stream.close()
        return router.open_requests

    assert run_router(test) == 0


def test_a_rerun_whose_worker_never_starts_is_no_worker() -> None:
    async def test(router, redis):
        stream = router.open("r1", start_timeout=0.5, rerun=Reruns())
        await send(redis, router.channel, "w1", Reply("r1", 0, "start"))
        await stream.next()
        with pytest.raises(NoWorker):
            await asyncio.wait_for(stream.next(), 3)
        stream.close()

    run_router(test)


@pytest.mark.parametrize("heard_again", [False, True], ids=["silent", "heard-again"])
def test_a_result_whose_worker_falls_silent_is_handed_to_the_meter(heard_again) -> None:
    async def test(router, redis):
        unsettled = []
        stream = router.open("r1", start_timeout=1, unsettled=lambda s, result: unsettled.append(result))
        await send(redis, router.channel, "w1", Reply("r1", 0, "start"), Reply("r1", 1, "result", body=b"{}"))
        await stream.next()
        result = await stream.next()
        stream.close(result)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < SILENCE + 4 * HEARTBEAT:
            if heard_again:
                await send(redis, router.channel, "w1")  # an empty batch: alive
            await asyncio.sleep(HEARTBEAT / 2)
        return unsettled, router.open_requests

    unsettled, open_requests = run_router(test)
    assert [r.body for r in unsettled] == ([] if heard_again else [b"{}"])
    assert open_requests == 0


class FakeFleet:
    """A :class:`Gateway` on the real Redis under a prefix of its own, with fake workers: their
    heartbeats go into the fleet keys and their replies onto the gateway's reply channel."""

    def __init__(self, tmp_path) -> None:
        self.prefix = f"utest-{uuid.uuid4().hex[:8]}:"
        config = tmp_path / "reactor.toml"
        config.write_text(f'[gateway]\nkey_prefix = "{self.prefix}"\nheartbeat_interval = {HEARTBEAT}\n'
                          f'queue_timeout = 2\ndata_dir = "{tmp_path}"\n')
        self.settings = load_settings(config, env={})
        self.redis = Redis.from_url(REDIS_URL)
        self.gateway: Gateway | None = None

    async def __aenter__(self) -> "FakeFleet":
        registry = await registry_for(self.settings)
        self.gateway = Gateway(self.settings, FixedRegistry(registry), self.redis, verifier=None)
        await self.gateway.replies.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.gateway.stop()
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}*")]
        keys += [k async for k in self.redis.scan_iter(match=f"{job_key_prefix}utest-*")]
        if keys:
            await self.redis.delete(*keys)
        await self.redis.aclose()

    async def beat(self, worker: str) -> None:
        keys = self.gateway.keys
        await self.redis.zadd(keys.workers("openrouter"), {worker: time.time()})
        await self.redis.hset(keys.worker_slots("openrouter"), worker, 10)

    async def beat_forever(self, worker: str) -> None:
        while True:
            await self.beat(worker)
            await asyncio.sleep(HEARTBEAT)

    async def send(self, worker: str, *replies: Reply) -> None:
        await send(self.redis, self.gateway.replies.channel, worker, *replies)

    def job(self) -> Job:
        return Job(request_id=f"utest-{uuid.uuid4().hex}", kind="chat", reply_channel=self.gateway.replies.channel,
                   user_id="u", targets=[Target("m", "openrouter", "up-m")], alias=None,
                   body=b'{"model":"m","messages":[{"role":"user","content":"hi"}]}', enqueued_at=time.time())

    async def submit(self, job: Job, worker: str):
        submitted = asyncio.create_task(self.gateway.submit(job))
        await asyncio.sleep(0.05)
        await self.send(worker, Reply(job.request_id, 0, "start", model_id="m"))
        return await asyncio.wait_for(submitted, 2)

    async def usage(self, request_id: str) -> list[dict]:
        entries = await self.redis.xrange(self.gateway.keys.usage_events)
        return [p for p in (json.loads(f[b"data"])["properties"] for _, f in entries) if p["request_id"] == request_id]


async def never_disconnects() -> dict:
    """An ASGI ``receive`` whose client stays until the test ends."""
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


# One silence period after a result, two watchdog passes, and time for the record to be written.
SILENCE_AFTER_RESULT = silence_timeout(HEARTBEAT) + 3 * HEARTBEAT + 0.5
RESULT = msgspec.json.encode({"id": "x", "object": "chat.completion", "choices": [],
                              "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})


@pytest.mark.parametrize("worker_metered_first", [False, True], ids=["died-before-metering", "metered"])
def test_front_door_meters_a_result_whose_worker_died_before_metering(tmp_path, worker_metered_first) -> None:
    from shared.usage import Tokens, build_usage

    async def run():
        async with FakeFleet(tmp_path) as fleet:
            await fleet.beat("w1")
            job = fleet.job()
            replies = await fleet.submit(job, "w1")
            await fleet.send("w1", Reply(job.request_id, 1, "result", body=RESULT))
            assert await asyncio.wait_for(single(fleet.gateway, replies, never_disconnects), 2) == RESULT
            if worker_metered_first:  # the worker recorded its usage, then went quiet (idle, or dead)
                await fleet.gateway.usage.record(build_usage(
                    request_id=job.request_id, user_id="u", alias=None, model_id="m", provider="openrouter",
                    tokens=Tokens(11, 7), model=None, started=job.enqueued_at, status="ok"))
            # Nothing more from w1: past one silence period (and a watchdog pass) the front door acts.
            await asyncio.sleep(SILENCE_AFTER_RESULT)
            return await fleet.usage(job.request_id)

    records = asyncio.run(run())
    assert len(records) == 1
    if worker_metered_first:
        assert records[0]["status"] == "ok"
    else:
        assert records[0]["status"] == "worker_lost"
        assert (records[0]["tokens_in"], records[0]["tokens_out"]) == (11, 7)


def test_front_door_reruns_the_job_under_a_new_run_and_cancels_the_lost_one(tmp_path) -> None:
    async def run():
        async with FakeFleet(tmp_path) as fleet:
            await fleet.beat("w-lost")
            job = fleet.job()
            cancels = fleet.redis.pubsub()
            await cancels.subscribe(fleet.gateway.keys.cancel_channel)
            replies = await fleet.submit(job, "w-lost")
            queue = fleet.gateway.keys.queue("openrouter")
            assert await fleet.redis.zscore(queue, fleet.gateway.keys.job_id("openrouter", job.request_id)) is not None
            # w-lost falls silent, and out of the fleet; w-new is alive.
            await fleet.redis.zrem(fleet.gateway.keys.workers("openrouter"), "w-lost")
            beating = asyncio.create_task(fleet.beat_forever("w-new"))
            answer = asyncio.create_task(single(fleet.gateway, replies, never_disconnects))
            deadline = time.monotonic() + 5
            while replies.run == 0 and time.monotonic() < deadline:
                await asyncio.sleep(HEARTBEAT / 2)
            await asyncio.sleep(0.2)  # the hook's enqueue
            queued = [m.decode() for m in await fleet.redis.zrange(queue, 0, -1)]
            payload = await fleet.redis.get(job_key_prefix + queued[0]) if queued else None
            rerun = job_decoder.decode(msgspec.msgpack.decode(payload)["a"][0]) if payload else None
            # The lost run answers late: ignored.
            await fleet.send("w-lost", Reply(job.request_id, 1, "result", body=b'{"from":"lost"}'))
            await fleet.send("w-new", Reply(replies.reply_id, 0, "start", model_id="m"),
                             Reply(replies.reply_id, 1, "result", body=RESULT))
            body = await asyncio.wait_for(answer, 3)
            cancelled = []
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                message = await cancels.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    cancelled.append(msgspec.msgpack.decode(message["data"], type=Cancel).request_id)
            await cancels.aclose()
            beating.cancel()
            return job.request_id, queued, rerun, body, cancelled, replies.reply_id, fleet.gateway.keys

    request_id, queued, rerun, body, cancelled, reply_id, keys = asyncio.run(run())
    # The lost run left the queue; the new one is in it.
    assert queued == [keys.job_id("openrouter", f"{request_id}~r1")]
    assert rerun is not None and rerun.request_id == request_id and rerun.run == 1
    assert body == RESULT
    assert request_id in cancelled and reply_id not in cancelled
