"""Putting jobs on a provider's arq queue, in arq's own job format, in one round trip.

arq's ``enqueue_job`` checks for an existing job id inside a WATCH/MULTI transaction, which
costs several round trips. Our job ids are fresh random request ids, so that check can
never fire: admitting the job, writing it, adding it to the queue and waking the workers are
one script instead, run once for every job the process submits in the same loop turn.

Admission is backpressure: a pool takes a job only while the jobs it holds (queued or running:
the queue keeps both until they end) are fewer than the limit the front door computed from
its live workers' slots plus a backlog. It is checked inside Redis, so several front doors
cannot overfill a pool between them.
"""

from __future__ import annotations

import time

import msgspec
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from .batching import LoopTurnBatch
from .keys import Keys
from .wire import Job

# arq's job envelope is serialised with msgpack (not pickle) on both sides.
job_serializer = msgspec.msgpack.encode
job_deserializer = msgspec.msgpack.decode

JOB_FUNCTIONS = {"chat": "chat", "embeddings": "embeddings"}

# Admits the jobs of one batch and wakes their pools, as one command: a pipeline costs redis-py
# more client time than the commands in it. KEYS: per job, its queue and its job key. ARGV: per
# job, envelope, expiry ms, score (now ms), limit, job id, the queue's notify channel. Returns
# 1 (admitted) or 0 (the pool is full) per job.
_ADMIT = """
local out, wake = {}, {}
for i = 0, #KEYS / 2 - 1 do
  local queue, a = KEYS[2 * i + 1], 6 * i
  if redis.call('ZCARD', queue) < tonumber(ARGV[a + 4]) then
    redis.call('SET', KEYS[2 * i + 2], ARGV[a + 1], 'PX', ARGV[a + 2])
    redis.call('ZADD', queue, ARGV[a + 3], ARGV[a + 5])
    wake[ARGV[a + 6]] = true
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for channel in pairs(wake) do
  redis.call('PUBLISH', channel, '1')
end
return out
"""


def queue_job_id(job: Job) -> str:
    """The arq job id ``job`` is queued under: its request id, plus the attempt once it is handed
    to another pool. The hand-off is queued while the worker handing it over still holds its own
    claim on the request id (and bumps its try count), and that worker clears the id's keys when
    its job ends: under the same id the next pool could neither claim the job nor read it."""
    return job.request_id if job.attempt == 0 else f"{job.request_id}:{job.attempt}"


class Enqueuer:
    """Batches the enqueues of one process: all jobs submitted in the same turn of the event
    loop go to Redis as one script call.

    :param redis: the process's pool.
    :param keys: the key names.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._admit = redis.register_script(_ADMIT)
        self._batch: LoopTurnBatch[tuple[Job, str, float, int], bool] = LoopTurnBatch(self._send)

    async def enqueue(self, job: Job, provider: str, expires_s: float, limit: int) -> bool:
        """Queue ``job`` for ``provider``'s workers and wake them, if the pool has room.

        :param expires_s: after this the job key is gone and a worker that finds the id skips it,
            so a request the front door has given up on is never served late.
        :param limit: the most jobs (queued and running) the pool may hold with this one.
        :returns: whether the job was queued; False when the pool is full.
        :raises redis.RedisError: what the script call raised.
        """
        return await self._batch.submit((job, provider, expires_s, limit))

    async def _send(self, batch: list[tuple[Job, str, float, int]]) -> list[bool]:
        now_ms = int(time.time() * 1000)
        keys: list[str] = []
        args: list[bytes | str | int] = []
        for job, provider, expires_s, limit in batch:
            job_id = queue_job_id(job)
            keys += [self._keys.queue(provider), job_key_prefix + job_id]
            args += [serialize_job(JOB_FUNCTIONS[job.kind], (msgspec.msgpack.encode(job),), {}, None, now_ms,
                                   serializer=job_serializer),
                     int(expires_s * 1000), now_ms, limit, job_id, self._keys.queue_notify(provider)]
        return [bool(ok) for ok in await self._admit(keys=keys, args=args)]
