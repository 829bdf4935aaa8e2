"""Many callers, one Redis call: what is submitted in one turn of the event loop goes out together.

A lone caller waits for nothing (its batch leaves on the next loop turn); a burst of fifty costs
one command instead of fifty, which under load is most of the client's time in redis-py.

A batch may also be capped, and written by the caller that fills it, in its own step: a wave of
five hundred requests reaching the queue in one loop turn then reaches Redis (and the workers,
on another core) in pieces while the rest of the wave is still being admitted, instead of all
together once the last of it is. Only the write is the caller's; the reply is read in a task of
the batch's, so a caller cancelled meanwhile (its client hung up) leaves the others' answers whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class LoopTurnBatch(Generic[T, R]):
    """Collects the items submitted in one loop turn and hands them to ``send`` together.

    :param send: takes the batch's items, returns one result per item in order; whatever it
        raises is raised to every caller of that batch.
    :param max_items: the most items one batch holds; None for no cap.
    :param write_now: for a full batch: writes it at once, synchronously, and returns what
        awaits its results (as ``send``'s would be), or None when it cannot (then ``send`` sends it).
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[R]]], max_items: int | None = None,
                 write_now: Callable[[list[T]], Awaitable[list[R]] | None] | None = None) -> None:
        self._send = send
        self._max_items = max_items
        self._write_now = write_now
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._sending: set[asyncio.Task] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, future))
        if self._max_items is not None and len(self._pending) >= self._max_items:
            # The flush scheduled above takes whatever is submitted after this.
            self._flush(full=True)
        return await future

    def _flush(self, full: bool = False) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        written = self._write_now([item for item, _ in batch]) if full and self._write_now is not None else None
        task = asyncio.ensure_future(self._run(batch, written))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]], written: Awaitable[list[R]] | None = None) -> None:
        try:
            results = await (written if written is not None else self._send([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
