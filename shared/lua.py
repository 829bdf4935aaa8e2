"""Lua scripts run inside pipelines, by SHA, without an extra round trip.

redis-py's ``Script`` in a pipeline sends ``SCRIPT EXISTS`` for every script before each
execute: one more round trip per pipeline, which was a tenth of the front door's CPU when every
enqueue batch carried the admission script. Here the pipeline sends ``EVALSHA`` straight away;
only when Redis does not know the script (first use, or after a restart or ``SCRIPT FLUSH``) is
it loaded and the pipeline sent again. Commands in that pipeline must tolerate being sent twice
(the scripts did not run; anything else beside them must be idempotent or harmless twice).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError


class PipelinedScript:
    """One Lua script; :meth:`call` queues it on a pipeline that :meth:`execute` sends."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, pipe: Pipeline, keys: Sequence[Any], args: Sequence[Any]) -> None:
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def execute(self, redis: Redis, fill: Callable[[Pipeline], None]) -> list[Any]:
        """Build a pipeline with ``fill`` and send it; load the script and resend once if Redis lacks it."""
        for attempt in range(2):
            async with redis.pipeline(transaction=False) as pipe:
                fill(pipe)
                try:
                    return await pipe.execute()
                except NoScriptError:
                    if attempt:
                        raise
            await redis.script_load(self.source)
        raise AssertionError("unreachable")
