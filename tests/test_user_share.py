"""Each user's share of a provider pool (``queue_user_share``, shared/queue.py).

What this file proves:

- with real ``reactor api`` and ``reactor worker`` processes and a pool of four (two worker slots,
  a backlog of two, a share of one half), a user whose two requests hold the upstream gets 429
  ``user_queue_share_exceeded`` with ``Retry-After`` for a third, while another user is still
  served; once the first user's requests end, their share is free again (the end-of-job script
  cleared it), and the user's job set in Redis is empty;
- the scripts alone, on the real Redis: a user's count is per pool; a job whose end is never
  cleared stops counting once its hold lapses; the end-of-job script removes each id from its
  user's set.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import anyio
import openai
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from shared.keys import Keys
from shared.fleet import user_limit
from shared.queue import Admission, Enqueuer
from shared.wire import Job

from .conftest import REDIS_URL
from .gateway_proc import LOCAL_KEY, RunningGateway, free_port
from .mocks.openai import MockUpstream

# One wait, whatever it waits for, never runs longer than this.
WAIT_S = 10.0


class HeldUpstream(MockUpstream):
    """An OpenAI-compatible mock that holds every chat request until :attr:`release` is set."""

    def __init__(self) -> None:
        super().__init__(api_key=LOCAL_KEY, flavour="openai", port=free_port())
        self.release = threading.Event()
        self.holding = 0

    async def _chat(self, request):
        self.holding += 1
        try:
            deadline = time.monotonic() + WAIT_S
            while not self.release.is_set() and time.monotonic() < deadline:
                await anyio.sleep(0.02)
        finally:
            self.holding -= 1
        return await super()._chat(request)


@pytest.fixture
def held() -> Iterator[HeldUpstream]:
    mock = HeldUpstream().start()
    try:
        yield mock
    finally:
        mock.release.set()
        mock.stop()


@pytest.fixture
def small_pool(tmp_path, redis_url, openrouter_mock, local_mock, held) -> Iterator[RunningGateway]:
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, "worker_concurrency = 2\nqueue_backlog = 2\nqueue_user_share = 0.5",
                        providers=f"""
[gateway.providers.held]
kind = "openai"
base_url = "{held.url}"
api_key_env = "LOCAL_LLM_KEY"
""", overlay="""
[models."m-held"]
owned_by = "mock"
capabilities = ["chat", "streaming"]
routes = [{ provider = "held", model = "held-model" }]
""", worker_providers=("held",))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def wait_until(predicate, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def ask(client: openai.OpenAI, text: str) -> str:
    completion = client.chat.completions.create(model="m-held", messages=[{"role": "user", "content": text}])
    return completion.choices[0].message.content


def test_one_user_cannot_take_the_whole_pool(small_pool, held):
    heavy, light = small_pool.client("user_heavy"), small_pool.client("user_light")
    with ThreadPoolExecutor(4) as pool:
        # The heavy user's two jobs run (both worker slots), held by the upstream: half the pool of four.
        running = [pool.submit(ask, heavy, f"heavy {i}") for i in range(2)]
        assert wait_until(lambda: held.holding == 2), small_pool.logs()

        with pytest.raises(openai.RateLimitError) as refused:
            ask(heavy, "heavy 2")
        assert refused.value.status_code == 429
        assert refused.value.body["code"] == "user_queue_share_exceeded"
        assert refused.value.response.headers["retry-after"] == "1"

        # The pool still has room for someone else: the light user's job waits in the backlog.
        served = pool.submit(ask, light, "light 0")
        assert wait_until(lambda: small_pool.redis.zcard(f"{small_pool.prefix}queue:held") == 3)
        held.release.set()
        assert served.result(WAIT_S).startswith("Hello from mock: light 0")
        assert [f.result(WAIT_S) for f in running] == ["Hello from mock: heavy 0", "Hello from mock: heavy 1"]

    # The heavy user's jobs ended, and their ends were cleared from the share: in again.
    assert wait_until(lambda: small_pool.redis.zcard(Keys(small_pool.prefix).queue_user_jobs("held", "user_heavy")) == 0)
    assert ask(heavy, "heavy again").startswith("Hello from mock: heavy again")
    assert wait_until(lambda: small_pool.redis.zcard(Keys(small_pool.prefix).queue_user_jobs("held", "user_heavy")) == 0)


def test_the_share_is_per_pool_heals_by_itself_and_is_cleared_at_the_end() -> None:
    from workers.worker import _END

    keys = Keys(f"utest-{uuid.uuid4().hex[:8]}:")

    def job(i: int, user: str = "u") -> Job:
        return Job(request_id=f"{keys.prefix}{i}", kind="chat", reply_channel="r", user_id=user, targets=[],
                   alias=None, body=b"{}")

    def queued_id(i: int, provider: str = "p") -> str:
        return keys.job_id(provider, job(i).request_id)

    async def run():
        redis = Redis.from_url(REDIS_URL)
        try:
            # A hold of 0.3 s stands for a job whose end was never cleared (a worker killed mid-job).
            enqueuer = Enqueuer(redis, keys, hold_s=0.3)
            first = await asyncio.gather(enqueuer.enqueue(job(0), "p", 5, limit=10, user_limit=1),
                                         enqueuer.enqueue(job(1), "p", 5, limit=10, user_limit=1),
                                         enqueuer.enqueue(job(2), "q", 5, limit=10, user_limit=1),
                                         enqueuer.enqueue(job(3, "v"), "p", 5, limit=10, user_limit=1),
                                         enqueuer.enqueue(job(4), "p", 5, limit=10))
            await asyncio.sleep(0.4)
            healed = await enqueuer.enqueue(job(5), "p", 5, limit=10, user_limit=1)
            before_end = await redis.zrange(keys.queue_user_jobs("p", "u"), 0, -1)
            end = redis.register_script(_END)
            await end(keys=[keys.queue("p"), keys.queue_user_jobs("p", "u"), keys.queue("p")],
                      args=[in_progress_key_prefix, job_key_prefix, retry_key_prefix, queued_id(5), queued_id(4)])
            after_end = await redis.zcard(keys.queue_user_jobs("p", "u"))
            queued = await redis.zrange(keys.queue("p"), 0, -1)
            return first, healed, before_end, after_end, queued
        finally:
            for provider in ("p", "q"):
                await redis.delete(keys.queue(provider), keys.queue_user_jobs(provider, "u"),
                                   keys.queue_user_jobs(provider, "v"))
            await redis.delete(*(job_key_prefix + queued_id(i, provider) for i in range(6) for provider in ("p", "q")))
            await redis.aclose()

    first, healed, before_end, after_end, queued = asyncio.run(run())
    assert first == [Admission.ADMITTED, Admission.USER_SHARE_FULL, Admission.ADMITTED, Admission.ADMITTED,
                     Admission.ADMITTED]  # the last without a user limit
    assert healed is Admission.ADMITTED
    assert before_end == [queued_id(5).encode()]  # job 0's hold lapsed; job 4 was never counted
    assert after_end == 0
    assert sorted(queued) == sorted(queued_id(i).encode() for i in (0, 3))


def test_user_limit_is_a_share_of_the_pool_and_at_least_one() -> None:
    assert user_limit(4, 0.5) == 2
    assert user_limit(2256, 0.5) == 1128
    assert user_limit(1, 0.5) == 1
    assert user_limit(10, 1.0) == 10


def test_the_share_binds_only_once_the_pools_workers_are_busy() -> None:
    """Idle slots are anyone's: a lone user fills all four workers' slots past a share of two, and
    only then (the next job would wait) is refused, while another user still gets into the backlog."""
    keys = Keys(f"utest-{uuid.uuid4().hex[:8]}:")

    def job(i: int, user: str = "heavy") -> Job:
        return Job(request_id=f"{keys.prefix}{i}", kind="chat", reply_channel="r", user_id=user, targets=[],
                   alias=None, body=b"{}")

    async def run() -> list[Admission]:
        redis = Redis.from_url(REDIS_URL)
        try:
            enqueuer = Enqueuer(redis, keys, hold_s=30)
            # Four slots plus a backlog of two; a user's share of a busy pool is two.
            answers = [await enqueuer.enqueue(job(i), "p", 5, limit=6, user_limit=2, shared_above=4)
                       for i in range(5)]
            answers.append(await enqueuer.enqueue(job(9, "light"), "p", 5, limit=6, user_limit=2, shared_above=4))
            return answers
        finally:
            await redis.delete(keys.queue("p"), keys.queue_user_jobs("p", "heavy"), keys.queue_user_jobs("p", "light"),
                               *(job_key_prefix + keys.job_id("p", job(i).request_id) for i in (0, 1, 2, 3, 4, 9)))
            await redis.aclose()

    assert asyncio.run(run()) == [Admission.ADMITTED] * 4 + [Admission.USER_SHARE_FULL, Admission.ADMITTED]


def test_a_pools_room_is_its_live_slots_plus_the_backlog_with_a_users_share_of_it() -> None:
    from shared.fleet import PoolCapacity, Room

    keys = Keys(f"utest-{uuid.uuid4().hex[:8]}:")

    async def run() -> tuple[Room, Room]:
        redis = Redis.from_url(REDIS_URL)
        try:
            now = time.time()
            # Two live workers of 10 and 6 slots, and one long gone whose slots no longer count.
            await redis.zadd(keys.workers("p"), {"w1": now, "w2": now, "gone": now - 3600})
            await redis.hset(keys.worker_slots("p"), mapping={"w1": 10, "w2": 6, "gone": 50})
            capacity = PoolCapacity(redis, keys, ["p"], heartbeat=2.0, backlog=4)
            return await capacity.room("p", 0.5), await capacity.room("p", 0.01)
        finally:
            await redis.delete(keys.workers("p"), keys.worker_slots("p"))
            await redis.aclose()

    half, tiny = asyncio.run(run())
    assert half == Room(limit=20, user_limit=10, shared_above=16)
    assert tiny == Room(limit=20, user_limit=1, shared_above=16)
