"""LoopTurnBatch: one send per loop turn, results in order, failures to every caller of the batch."""

from __future__ import annotations

import asyncio

from shared.batching import LoopTurnBatch


def test_one_send_per_loop_turn_with_results_in_order() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        return [i * 10 for i in items]

    async def run():
        batch = LoopTurnBatch(send)
        first = await asyncio.gather(*(batch.submit(i) for i in range(5)))
        second = await batch.submit(7)
        return first, second

    first, second = asyncio.run(run())
    assert first == [0, 10, 20, 30, 40] and second == 70
    assert sent == [[0, 1, 2, 3, 4], [7]]


def test_a_failed_send_fails_every_caller_of_that_batch_only() -> None:
    async def send(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ConnectionError("down")
        return items

    async def run():
        batch = LoopTurnBatch(send)
        failed = await asyncio.gather(batch.submit("a"), batch.submit("bad"), return_exceptions=True)
        return failed, await batch.submit("b")

    failed, later = asyncio.run(run())
    assert [type(r) for r in failed] == [ConnectionError, ConnectionError]
    assert later == "b"


def test_a_send_returning_the_wrong_count_fails_its_callers_rather_than_misdeliver() -> None:
    async def send(items: list[int]) -> list[int]:
        return items[:-1]

    async def run():
        batch = LoopTurnBatch(send)
        return await asyncio.wait_for(asyncio.gather(batch.submit(1), batch.submit(2), return_exceptions=True), 2)

    results = asyncio.run(run())
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
