"""Settings of the Python runtime that the gateway's long-running processes share.

Open files. Every stream holds a socket in the front door (the client) and one in the worker
(the upstream), and many systems start processes with a soft limit of 1,024 open files: a worker
with the default 2,000 job slots would fail with "too many open files" near a thousand streams.
So each process raises its soft limit to the hard one, which needs no privilege.

The garbage collector. A worker holding a thousand streams keeps a few hundred thousand
objects alive (tasks, generators, response buffers), and the default thresholds (700, 10, 10)
ran a young collection every few hundred allocations and a full one every couple of seconds:
about 7% of each process's CPU, in pauses up to 80 ms that every stream of the process waited
out (measured with 500 slow streams: ``bench/README.md``). So once a process has loaded
everything it will keep for its lifetime, those objects are frozen out of collection, and the
young generation is allowed to grow larger before it is scanned, so most short-lived objects
(a chunk's dict, a request's parsed body) are freed by reference counting before any scan.
Cycles are still collected: the collector is tuned, never turned off.
"""

from __future__ import annotations

import gc
import logging
import resource

logger = logging.getLogger("reactor")

# Allocations between young collections, then young collections per middle one, then middle
# ones per full one (CPython's defaults: 700, 10, 10). 10,000 and 200,000 measured alike in
# throughput; the smaller keeps each young collection's pause short.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Freeze what start-up allocated and raise the collection thresholds; call once a process is ready."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from %s: %s", soft, exc)
    return soft


def tune_process() -> None:
    """Everything above, for a gateway process that is ready to serve."""
    raise_open_files_limit()
    tune_gc()
