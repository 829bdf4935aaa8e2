"""The worker replaces parts of arq's Worker for speed; this fails loudly if arq's internals it relies on change.

``workers.worker.WakeableWorker`` overrides ``main`` and ``_poll_iteration``, runs claimed jobs
itself and reads arq's attributes and key layout. pyproject pins arq to the minor series this was
built and measured against; a new arq must pass this test before the pin moves.
"""

from __future__ import annotations

import asyncio
import inspect

import arq
import arq.constants
import arq.jobs
import arq.worker

from shared.queue import job_deserializer, job_serializer
from workers.worker import WakeableWorker

TESTED_ARQ = ("0.28.",)


def test_arq_is_a_tested_version() -> None:
    assert arq.VERSION.startswith(TESTED_ARQ), f"arq {arq.VERSION}: check workers/worker.py's overrides, then this"


def test_the_key_layout_the_scripts_assume() -> None:
    assert (arq.constants.in_progress_key_prefix, arq.constants.job_key_prefix, arq.constants.retry_key_prefix) == (
        "arq:in-progress:", "arq:job:", "arq:retry:")


def test_the_job_envelope_round_trips() -> None:
    raw = arq.jobs.serialize_job("chat", (b"payload",), {}, None, 123, serializer=job_serializer)
    function, args, kwargs, job_try, enqueue_ms = arq.jobs.deserialize_job_raw(raw, deserializer=job_deserializer)
    assert (function, list(args), kwargs, enqueue_ms) == ("chat", [b"payload"], {}, 123)


def test_the_overridden_and_used_members_exist() -> None:
    for name in ("main", "_poll_iteration", "_release_sem_dec_counter_on_complete"):
        assert callable(getattr(arq.worker.Worker, name, None)), name
    # The attributes the overrides read, on a worker built the way WorkerProcess builds it.
    async def build():
        async def job(ctx):
            return None

        class FakePool:
            def register_script(self, script):
                return script

        worker = WakeableWorker(functions=[arq.worker.func(job, name="chat", max_tries=1, timeout=5)],
                                queue_name="q", redis_pool=FakePool(), handle_signals=False, max_jobs=7,
                                keep_result=0, poll_delay=0.5, job_serializer=job_serializer,
                                job_deserializer=job_deserializer, ctx={}, log_results=False,
                                wake=asyncio.Event())
        return worker

    worker = asyncio.run(build())
    for name in ("pool", "max_jobs", "job_counter", "sem", "loop", "tasks", "in_progress_timeout_s", "functions",
                 "job_timeout_s", "max_tries", "jobs_complete", "jobs_failed", "queue_name", "ctx", "on_startup",
                 "poll_delay_s", "allow_pick_jobs", "job_deserializer"):
        assert hasattr(worker, name), name
    assert worker.max_jobs == 7 and worker.poll_delay_s == 0.5
    assert isinstance(worker.sem, asyncio.Semaphore)
    function = worker.functions["chat"]
    assert (function.max_tries, function.timeout_s) == (1, 5)
    assert inspect.iscoroutinefunction(function.coroutine)
