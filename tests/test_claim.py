"""The worker's claim script against the real Redis: running jobs leave the due range."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
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


def test_tune_gc_freezes_start_up_and_raises_thresholds() -> None:
    code = ("import gc; from shared.runtime import tune_gc, GC_THRESHOLDS; tune_gc(); "
            "assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold(); "
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); "
            "assert gc.isenabled(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
