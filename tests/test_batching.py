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


def test_a_full_batch_is_written_by_the_caller_that_fills_it_the_rest_next_turn() -> None:
    events: list[str] = []

    async def send(items: list[int]) -> list[int]:
        events.append(f"send {items}")
        return items

    def write_now(items: list[int]):
        events.append(f"written {items}")

        async def results() -> list[int]:
            return [i * 10 for i in items]

        return results()

    async def run():
        batch = LoopTurnBatch(send, max_items=2, write_now=write_now)
        first = [asyncio.ensure_future(batch.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        events.append("turn over")
        return await asyncio.gather(*first)

    results = asyncio.run(run())
    assert results == [0, 10, 20, 30, 4]  # written batches answer through write_now, the rest through send
    assert events.index("written [0, 1]") < events.index("written [2, 3]") < events.index("turn over")
    assert events.index("send [4]") > events.index("turn over")


def test_a_cancelled_caller_does_not_cut_its_batch_for_the_others() -> None:
    async def send(items: list[int]) -> list[int]:
        return items

    async def run():
        gate = asyncio.Event()

        def write_now(items: list[int]):
            async def results() -> list[int]:
                await gate.wait()  # the reply takes a while
                return [i + 100 for i in items]

            return results()

        batch = LoopTurnBatch(send, max_items=3, write_now=write_now)
        tasks = [asyncio.ensure_future(batch.submit(i)) for i in range(3)]
        await asyncio.sleep(0)
        tasks[2].cancel()  # the one whose step wrote the batch
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, second, third = asyncio.run(run())
    assert (first, second) == (100, 101)
    assert isinstance(third, asyncio.CancelledError)


def test_without_write_now_a_full_batch_is_sent_the_usual_way_at_once() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        return items

    async def run():
        batch = LoopTurnBatch(send, max_items=2)
        return await asyncio.gather(*(batch.submit(i) for i in range(5)))

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]
    assert sent == [[0, 1], [2, 3], [4]]
