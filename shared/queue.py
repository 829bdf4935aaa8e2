"""Putting jobs on a provider's arq queue, in arq's own job format, in one round trip.

arq's ``enqueue_job`` checks for an existing job id inside a WATCH/MULTI transaction, which
costs several round trips. Our job ids are fresh random request ids, so that check can
never fire: admitting the job, writing it, adding it to the queue and waking the workers are
one script instead, run once for every job the process submits in the same loop turn.

Admission is backpressure: a pool takes a job only while the jobs it holds (queued or running:
the queue keeps both until they end) are fewer than the limit the front door computed from
its live workers' slots plus a backlog. It is checked inside Redis, so several front doors
cannot overfill a pool between them. Within that, once the pool's workers are all busy (it
holds as many jobs as they have slots, so the next would wait), one user's jobs may hold only
their share of the pool (``queue_user_share``); below that nobody waits, so one user may use
every idle slot and nobody is starved by it. Each pool keeps, per user, the ids of the jobs that user holds
(``Keys.queue_user_jobs``), added here and removed by the worker's end-of-job script. Each id is
scored by when it is forgotten anyway (the longest a job can live), so an end that is never
cleared (a worker killed mid-job) costs the user that slot only until then.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from enum import IntEnum
from typing import Any

import msgspec
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .batching import LoopTurnBatch
from .config import Settings
from .errors import GatewayError, Overloaded, UserShareExceeded
from .fleet import RETRY_AFTER_S
from .keys import Keys
from .redis_client import write_now
from .wire import Job

# arq's job envelope is serialised with msgpack (not pickle) on both sides.
job_serializer = msgspec.msgpack.encode
job_deserializer = msgspec.msgpack.decode

JOB_FUNCTIONS = {"chat": "chat", "embeddings": "embeddings"}
# The most jobs one admission call carries. A wave of requests admitted in one loop turn goes to
# Redis in calls of this many, each written by the request that fills it, so the workers start on
# the first while the front door still admits the rest: 500 streams arriving together got their
# first token sooner (median 526 against 623 ms over six A/B pairs, bench/README.md).
ENQUEUE_BATCH_MAX = 32

# How long past request_timeout a job may still run: the worker's own limit on a job function
# (workers/worker.py) gives it this much more.
JOB_TIMEOUT_SLACK_S = 30.0


class Admission(IntEnum):
    """What the admission script said of one job (compare by identity: two refusals are truthy)."""

    POOL_FULL = 0
    ADMITTED = 1
    USER_SHARE_FULL = 2

    def refusal(self, provider: str) -> GatewayError | None:
        """What to tell the client when ``provider``'s pool refused the job; None when admitted."""
        if self is Admission.ADMITTED:
            return None
        if self is Admission.USER_SHARE_FULL:
            return UserShareExceeded(f"Your requests already hold your share of the provider {provider!r}'s workers "
                                     f"(queue_user_share); try again when one of them has finished.",
                                     headers={"Retry-After": str(RETRY_AFTER_S)})
        return Overloaded(f"Every worker of the provider {provider!r} is busy; try again shortly.",
                          headers={"Retry-After": str(RETRY_AFTER_S)})


def job_lifetime(settings: Settings) -> float:
    """The longest a job can be held by its pool, queued then running, in seconds: how long a
    user's share counts it when its end is never cleared."""
    return settings.queue_timeout + settings.request_timeout + JOB_TIMEOUT_SLACK_S


# Admits the jobs of one batch and wakes their pools, as one command: a pipeline costs redis-py
# more client time than the commands in it. KEYS: per job, its queue, its job key and its user's
# jobs in that pool. ARGV: per job, envelope, expiry ms, score (now ms), limit, job id, the
# queue's notify channel, the user's limit (-1: none, and their jobs are not counted), how
# long the user's set keeps the id (ms), and from how many jobs held the user's limit binds.
# Returns per job an Admission: 1 (admitted), 0 (the pool is full) or 2 (the user holds their
# whole share of a busy pool). A full pool is said first: it is full for everyone, whoever holds it.
_ADMIT = """
local out, wake = {}, {}
for i = 0, #KEYS / 3 - 1 do
  local queue, owner, a = KEYS[3 * i + 1], KEYS[3 * i + 3], 9 * i
  local now, own_limit = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 7])
  local own_full = false
  if own_limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', owner, '-inf', now)
    own_full = redis.call('ZCARD', owner) >= own_limit
  end
  local held = redis.call('ZCARD', queue)
  if held >= tonumber(ARGV[a + 4]) then
    out[#out + 1] = 0
  elseif own_full and held >= tonumber(ARGV[a + 9]) then
    out[#out + 1] = 2
  else
    redis.call('SET', KEYS[3 * i + 2], ARGV[a + 1], 'PX', ARGV[a + 2])
    redis.call('ZADD', queue, now, ARGV[a + 5])
    if own_limit >= 0 then
      redis.call('ZADD', owner, now + tonumber(ARGV[a + 8]), ARGV[a + 5])
      redis.call('PEXPIRE', owner, ARGV[a + 8])
    end
    wake[ARGV[a + 6]] = true
    out[#out + 1] = 1
  end
end
for channel in pairs(wake) do
  redis.call('PUBLISH', channel, '1')
end
return out
"""


class JobOwner(msgspec.Struct, array_like=True):
    """The leading fields of an encoded :class:`~shared.wire.Job`, as far as its user: what the
    worker reads to clear a job from its user's share, without decoding the rest."""

    request_id: str
    kind: str
    reply_channel: str
    user_id: str


owner_decoder = msgspec.msgpack.Decoder(JobOwner)


def queue_job_id(job: Job) -> str:
    """The arq job id ``job`` is queued under: its request id, plus the attempt once it is handed
    to another pool, plus the run once the front door runs it again after its worker was lost.
    The hand-off is queued while the worker handing it over still holds its own claim on the
    request id (and bumps its try count), and that worker clears the id's keys when its job ends:
    under the same id the next pool could neither claim the job nor read it. A lost worker's claim
    is the same: it would block the id until it lapses."""
    base = job.request_id if job.attempt == 0 else f"{job.request_id}:{job.attempt}"
    return base if job.run == 0 else f"{base}~r{job.run}"


def reply_id(request_id: str, run: int = 0) -> str:
    """The id that the replies and cancels of one run of a request name: the request id, plus the
    run once the request runs again after its worker was lost. The front door listens to the
    current run only, so a lost worker that was merely slow cannot put a second answer into the
    stream (its replies name no open request), and a cancel of the lost run cannot stop the next.
    Usage is metered under the request id whichever run records it, so at most once."""
    return request_id if run == 0 else f"{request_id}~r{run}"


class Enqueuer:
    """Batches the enqueues of one process: all jobs submitted in the same turn of the event
    loop go to Redis as one script call.

    :param redis: the process's pool.
    :param keys: the key names.
    :param hold_s: how long a user's share counts a job whose end is never cleared
        (:func:`job_lifetime`).
    """

    def __init__(self, redis: Redis, keys: Keys, hold_s: float = 0.0) -> None:
        self._keys = keys
        self._hold_ms = max(1, int(hold_s * 1000))
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._batch: LoopTurnBatch[tuple[Job, str, float, int, int | None, int], Admission] = \
            LoopTurnBatch(self._send, max_items=ENQUEUE_BATCH_MAX, write_now=self._write_now)

    async def enqueue(self, job: Job, provider: str, expires_s: float, limit: int,
                      user_limit: int | None = None, shared_above: int = 0) -> Admission:
        """Queue ``job`` for ``provider``'s workers and wake them, if the pool has room.

        :param expires_s: after this the job key is gone and a worker that finds the id skips it,
            so a request the front door has given up on is never served late.
        :param limit: the most jobs (queued and running) the pool may hold with this one.
        :param user_limit: the most of them the job's user may hold with this one; None for no
            per-user limit (and the job is not counted in its user's share).
        :param shared_above: the user's limit binds only while the pool holds at least this many
            jobs: its live workers' slots, past which jobs wait (0: always).
        :returns: ``ADMITTED``, or why not: ``POOL_FULL``, ``USER_SHARE_FULL``.
        :raises redis.RedisError: what the script call raised.
        """
        return await self._batch.submit((job, provider, expires_s, limit, user_limit, shared_above))

    async def forget(self, provider: str, job_id: str, user_id: str) -> None:
        """Take a run whose worker was lost out of ``provider``'s queue, with its keys and its place
        in ``user_id``'s share: a dead worker's claim would otherwise hold both until they lapse. A
        worker that was only slow finds them gone when its run ends, which is harmless.

        :raises redis.RedisError: what the pipeline raised.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.queue(provider), job_id)
            pipe.zrem(self._keys.queue_user_jobs(provider, user_id), job_id)
            pipe.delete(in_progress_key_prefix + job_id, job_key_prefix + job_id, retry_key_prefix + job_id)
            await pipe.execute()

    async def _send(self, batch: list[tuple[Job, str, float, int, int | None, int]]) -> list[Admission]:
        keys, args = self._script_args(batch)
        return [Admission(int(code)) for code in await self._admit(keys=keys, args=args)]

    def _write_now(self, batch: list[tuple[Job, str, float, int, int | None, int]]) -> Awaitable[list[Admission]] | None:
        """A full batch's admission, written now; None when no connection can take it at once."""
        keys, args = self._script_args(batch)
        reply = write_now(self._redis, "EVALSHA", self._admit.sha, len(keys), *keys, *args)
        return None if reply is None else self._admissions(reply, keys, args)

    async def _admissions(self, reply: Awaitable[Any], keys: list[str], args: list[bytes | str | int]) -> list[Admission]:
        try:
            codes = await reply
        except NoScriptError:
            # Redis lost its scripts (a restart, a failover): nothing ran; the usual call loads it.
            codes = await self._admit(keys=keys, args=args)
        return [Admission(int(code)) for code in codes]

    def _script_args(self, batch: list[tuple[Job, str, float, int, int | None, int]]) \
            -> tuple[list[str], list[bytes | str | int]]:
        now_ms = int(time.time() * 1000)
        keys: list[str] = []
        args: list[bytes | str | int] = []
        for job, provider, expires_s, limit, own_limit, shared_above in batch:
            job_id = self._keys.job_id(provider, queue_job_id(job))
            queue = self._keys.queue(provider)
            # Without a user limit the queue stands in for the user's key: the script leaves it be.
            owner = self._keys.queue_user_jobs(provider, job.user_id) if own_limit is not None else queue
            keys += [queue, job_key_prefix + job_id, owner]
            args += [serialize_job(JOB_FUNCTIONS[job.kind], (msgspec.msgpack.encode(job),), {}, None, now_ms,
                                   serializer=job_serializer),
                     int(expires_s * 1000), now_ms, limit, job_id, self._keys.queue_notify(provider),
                     -1 if own_limit is None else own_limit, self._hold_ms, shared_above]
        return keys, args
