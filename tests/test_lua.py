"""Scripts in pipelines: sent by SHA, loaded and resent once when Redis does not know them."""

from __future__ import annotations

import asyncio
import os
from uuid import uuid4

from redis.asyncio import Redis

from shared.lua import PipelinedScript

REDIS_URL = os.environ.get("REACTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_unknown_script_is_loaded_then_the_pipeline_resent() -> None:
    tag = uuid4().hex
    # A comment unique to this run: Redis cannot know the script yet.
    script = PipelinedScript(f"-- {tag}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = f"utest-{tag[:8]}:n"

    async def run():
        redis = Redis.from_url(REDIS_URL)
        try:
            assert await redis.script_exists(script.sha) == [False]
            first = await script.execute(redis, lambda pipe: (script.call(pipe, [key], [2]), pipe.get(key)))
            known = await redis.script_exists(script.sha)
            second = await script.execute(redis, lambda pipe: script.call(pipe, [key], [3]))
            return first, known, second
        finally:
            await redis.delete(key)
            await redis.aclose()

    first, known, second = asyncio.run(run())
    assert first == [2, b"2"]  # the script ran once: the first send failed whole with NOSCRIPT
    assert known == [True]
    assert second == [5]
