"""The queue's Lua scripts against the real Redis: admission, claim (running jobs leave the due range), end."""

from __future__ import annotations

import asyncio
import time
import os
from uuid import uuid4

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from workers.worker import _CLAIM

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_claimed_and_held_jobs_are_no_longer_due() -> None:
    tag = uuid4().hex[:8]
    queue = f"utest-{tag}:queue:p"
    ids = [f"utest-{tag}-{i}" for i in range(4)]
    now, ttl = 1_000_000, 60_000

    async def run():
        redis = Redis.from_url(REDIS_URL)
        claim = redis.register_script(_CLAIM)
        args = [in_progress_key_prefix, job_key_prefix, retry_key_prefix]
        try:
            await redis.zadd(queue, {ids[0]: now - 3, ids[1]: now - 2, ids[2]: now - 1, ids[3]: now + 5})
            for job_id in ids:
                await redis.set(job_key_prefix + job_id, b"payload-" + job_id.encode())
            # Another worker holds ids[1] for 5 more seconds.
            await redis.set(in_progress_key_prefix + ids[1], "1", px=5_000)
            first = await claim(keys=[queue], args=[now, ttl, *args, 10])
            scores = dict(await redis.zrange(queue, 0, -1, withscores=True))
            again = await claim(keys=[queue], args=[now + 1, ttl, *args, 10])
            limited = await claim(keys=[queue], args=[now + 10, ttl, *args, 0])
            return first, scores, again, limited
        finally:
            await redis.delete(queue, *(p + i for i in ids for p in (in_progress_key_prefix, job_key_prefix,
                                                                      retry_key_prefix)))
            await redis.aclose()

    first, scores, again, limited = asyncio.run(run())
    # Due and free: claimed with payload and try count, oldest first; the future job is not due.
    assert first == [ids[0].encode(), b"payload-" + ids[0].encode(), 1,
                     ids[2].encode(), b"payload-" + ids[2].encode(), 1]
    # Claimed jobs stay queued (a dead worker's job is found again) but are due when their claim lapses.
    assert scores[ids[0].encode()] == now + ttl and scores[ids[2].encode()] == now + ttl
    # The job another worker holds moved to when that worker's claim lapses.
    assert now + 4_000 < scores[ids[1].encode()] <= now + 5_000
    assert scores[ids[3].encode()] == now + 5
    assert again == []
    assert limited == []


def test_one_batch_admits_up_to_each_pools_limit_and_wakes_each_pool_once() -> None:
    from shared.keys import Keys
    from shared.queue import Enqueuer
    from shared.wire import Job

    keys = Keys(f"utest-{uuid4().hex[:8]}:")

    def job(i: int) -> Job:
        return Job(request_id=f"{keys.prefix}{i}", kind="chat", reply_channel="r", user_id="u", targets=[],
                   alias=None, body=b"{}")

    async def run():
        redis = Redis.from_url(REDIS_URL)
        pubsub = redis.pubsub()
        await pubsub.subscribe(keys.queue_notify("p"), keys.queue_notify("q"))
        for _ in range(2):
            await pubsub.get_message(timeout=1)
        try:
            enqueuer = Enqueuer(redis, keys)
            admitted = await asyncio.gather(*(enqueuer.enqueue(job(i), "p", 5, limit=2) for i in range(3)),
                                            enqueuer.enqueue(job(9), "q", 5, limit=1))
            wakes = []
            while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)) is not None:
                wakes.append(message["channel"].decode())
            queued = {q: await redis.zcard(keys.queue(q)) for q in ("p", "q")}
            rejected_key = await redis.exists(job_key_prefix + keys.job_id("p", job(2).request_id))
            return admitted, sorted(wakes), queued, rejected_key
        finally:
            await pubsub.aclose()
            await redis.delete(keys.queue("p"), keys.queue("q"),
                               *(job_key_prefix + keys.job_id(q, job(i).request_id) for i, q in
                                 ((0, "p"), (1, "p"), (2, "p"), (9, "q"))))
            await redis.aclose()

    admitted, wakes, queued, rejected_key = asyncio.run(run())
    assert admitted == [True, True, False, True]
    assert wakes == sorted([keys.queue_notify("p"), keys.queue_notify("q")])
    assert queued == {"p": 2, "q": 1}
    assert rejected_key == 0  # a refused job leaves nothing behind


def test_ended_jobs_leave_queue_and_keys() -> None:
    from workers.worker import _END

    tag = uuid4().hex[:8]
    queue, ids = f"utest-{tag}:queue:p", [f"utest-{tag}-{i}" for i in range(3)]

    async def run():
        redis = Redis.from_url(REDIS_URL)
        end = redis.register_script(_END)
        try:
            await redis.zadd(queue, {i: 1 for i in ids})
            for i in ids:
                for prefix in (in_progress_key_prefix, job_key_prefix, retry_key_prefix):
                    await redis.set(prefix + i, "x")
            cleared = await end(keys=[queue], args=[in_progress_key_prefix, job_key_prefix, retry_key_prefix,
                                                    *ids[:2]])
            left = await redis.zrange(queue, 0, -1)
            keys_left = [p + i for i in ids for p in (in_progress_key_prefix, job_key_prefix, retry_key_prefix)
                         if await redis.exists(p + i)]
            return cleared, left, keys_left
        finally:
            await redis.delete(queue, *(p + i for i in ids for p in (in_progress_key_prefix, job_key_prefix,
                                                                      retry_key_prefix)))
            await redis.aclose()

    cleared, left, keys_left = asyncio.run(run())
    assert cleared == 2
    assert left == [ids[2].encode()]
    assert len(keys_left) == 3  # only the third job's keys


def test_a_wave_of_enqueues_reaches_redis_in_full_batches_before_its_loop_turn_ends() -> None:
    import redis as sync_redis

    from shared.keys import Keys
    from shared.queue import ENQUEUE_BATCH_MAX, Admission, Enqueuer
    from shared.redis_client import open_redis
    from shared.wire import Job

    keys = Keys(f"utest-{uuid4().hex[:8]}:")
    n = ENQUEUE_BATCH_MAX + 8
    jobs = [Job(request_id=f"{keys.prefix}{i}", kind="chat", reply_channel="r", user_id="u", targets=[],
                alias=None, body=b"{}") for i in range(n)]
    watcher = sync_redis.Redis.from_url(REDIS_URL)

    async def run():
        redis = open_redis(REDIS_URL, timeout=5)
        await redis.ping()
        enqueuer = Enqueuer(redis, keys)
        try:
            tasks = [asyncio.ensure_future(enqueuer.enqueue(job, "p", 5, limit=n)) for job in jobs]

            async def look() -> int:
                # Runs in the same loop turn as the enqueues, after them, and blocks the loop: only
                # what their own steps wrote can be in Redis.
                queued = 0
                for _ in range(200):
                    if (queued := watcher.zcard(keys.queue("p"))) >= ENQUEUE_BATCH_MAX:
                        break
                    time.sleep(0.005)
                return queued

            seen = await asyncio.ensure_future(look())
            admitted = await asyncio.gather(*tasks)
            return seen, admitted, await redis.zcard(keys.queue("p"))
        finally:
            await redis.delete(keys.queue("p"), *(job_key_prefix + keys.job_id("p", j.request_id) for j in jobs))
            await redis.aclose()

    try:
        seen, admitted, queued = asyncio.run(run())
    finally:
        watcher.close()
    assert seen == ENQUEUE_BATCH_MAX  # the full batch, written in the turn; the rest came after it
    assert admitted == [Admission.ADMITTED] * n and queued == n
