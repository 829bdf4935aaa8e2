"""Putting jobs on a provider's arq queue, in arq's own job format, in one round trip.

arq's ``enqueue_job`` checks for an existing job id inside a WATCH/MULTI transaction, which
costs several round trips. Our job ids are fresh random request ids, so that check can
never fire: writing the job, adding it to the queue and waking the workers go out as one
pipeline instead.
"""

from __future__ import annotations

import time

import msgspec
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from .keys import Keys
from .wire import Job

# arq's job envelope is serialised with msgpack (not pickle) on both sides.
job_serializer = msgspec.msgpack.encode
job_deserializer = msgspec.msgpack.decode

JOB_FUNCTIONS = {"chat": "chat", "embeddings": "embeddings"}


async def enqueue(redis: Redis, keys: Keys, job: Job, provider: str, expires_s: float) -> None:
    """Queue ``job`` for ``provider``'s workers and wake them.

    :param expires_s: after this the job key is gone and a worker that finds the id skips it,
        so a request the front door has given up on is never served late.
    """
    now_ms = int(time.time() * 1000)
    envelope = serialize_job(JOB_FUNCTIONS[job.kind], (msgspec.msgpack.encode(job),), {}, None, now_ms,
                             serializer=job_serializer)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.psetex(job_key_prefix + job.request_id, int(expires_s * 1000), envelope)
        pipe.zadd(keys.queue(provider), {job.request_id: now_ms})
        pipe.publish(keys.queue_notify(provider), b"1")
        await pipe.execute()
