"""The micro-batcher gathers concurrent callers into shared batch calls and keeps each caller's results."""

import asyncio
import threading

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
