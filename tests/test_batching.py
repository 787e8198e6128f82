"""The micro-batcher gathers concurrent callers into shared batch calls and keeps each caller's results."""

import asyncio
import threading
import time

import pytest

from notellm.batching import MicroBatcher


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [x * x for x in items]

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(square, max_batch_size=64, max_wait_s=0.05)
        return await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(20)))

    results = asyncio.run(main())
    assert results == [[i * i, (i + 100) ** 2] for i in range(20)]
    assert len(calls) < 20  # batched, not one call per request
    assert sorted(x for call in calls for x in call) == sorted([i for i in range(20)] + [i + 100 for i in range(20)])


def test_batch_size_is_bounded() -> None:
    sizes: list[int] = []

    def ident(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> None:
        batcher = MicroBatcher(ident, max_batch_size=4, max_wait_s=0.05)
        await asyncio.gather(*(batcher.submit([i]) for i in range(10)))

    asyncio.run(main())
    assert max(sizes) <= 4 and sum(sizes) == 10


def test_error_reaches_callers_of_that_batch_and_batcher_keeps_working() -> None:
    fail = threading.Event()
    fail.set()

    def maybe_fail(items: list[int]) -> list[int]:
        if fail.is_set():
            raise ValueError("model exploded")
        return items

    async def main() -> list[int]:
        batcher = MicroBatcher(maybe_fail, max_batch_size=8, max_wait_s=0.001)
        with pytest.raises(ValueError, match="model exploded"):
            await batcher.submit([1])
        fail.clear()
        return await batcher.submit([2, 3])

    assert asyncio.run(main()) == [2, 3]


def test_a_lone_call_runs_at_once_without_waiting_max_wait() -> None:
    sizes: list[int] = []

    def ident(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> list[float]:
        batcher = MicroBatcher(ident, max_batch_size=32, max_wait_s=30.0)
        times = []
        for i in range(3):  # one caller after another: the batcher is idle at every call
            start = time.perf_counter()
            assert await batcher.submit([i]) == [i]
            times.append(time.perf_counter() - start)
        return times

    times = asyncio.run(main())
    assert sizes == [1, 1, 1]
    assert max(times) < 5.0  # far below max_wait_s (the old batcher waited it out on every call)


def test_callers_arriving_during_a_batch_are_gathered_into_the_next() -> None:
    calls: list[list[int]] = []
    started, release = threading.Event(), threading.Event()

    def blocking(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:  # the first batch runs until the test releases it
            started.set()
            release.wait(30)
        return [-x for x in items]

    async def main() -> tuple[list[list[int]], float]:
        batcher = MicroBatcher(blocking, max_batch_size=4, max_wait_s=30.0)
        first = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.to_thread(started.wait, 30)
        during = [asyncio.ensure_future(batcher.submit([i])) for i in (1, 2)]
        await asyncio.sleep(0.01)
        release.set()
        assert await first == [0]
        await asyncio.sleep(0.05)  # the first batch is over; its successor still gathers (max_wait_s)
        start = time.perf_counter()
        late = [asyncio.ensure_future(batcher.submit([i])) for i in (3, 4)]
        results = await asyncio.gather(*during, *late)
        return results, time.perf_counter() - start

    results, seconds = asyncio.run(main())
    assert calls == [[0], [1, 2, 3, 4]]
    assert results == [[-1], [-2], [-3], [-4]]
    assert seconds < 5.0  # a full batch runs without waiting out max_wait_s
