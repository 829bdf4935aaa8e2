"""Settings of the Python runtime that the gateway's long-running processes share.

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

# Allocations between young collections, then young collections per middle one, then middle
# ones per full one (CPython's defaults: 700, 10, 10). 10,000 and 200,000 measured alike in
# throughput; the smaller keeps each young collection's pause short.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Freeze what start-up allocated and raise the collection thresholds; call once a process is ready."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
