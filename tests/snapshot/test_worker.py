"""The refreshes' own loop: coroutines handed over from another loop, cancellation, a bounded stop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.snapshot.worker import RefreshLoop

pytestmark = pytest.mark.anyio


async def test_coroutines_run_on_the_loop_s_own_thread_and_their_result_comes_back() -> None:
    loop = RefreshLoop(name="refresh-test")
    loop.start()
    try:

        async def where() -> tuple[str, bool]:
            await asyncio.sleep(0)
            return threading.current_thread().name, loop.is_current()

        assert await loop.run(where()) == ("refresh-test", True)
        assert not loop.is_current()

        async def fails() -> None:
            raise ValueError("from the other thread")

        with pytest.raises(ValueError, match="from the other thread"):
            await loop.run(fails())
    finally:
        await loop.stop()
    assert not any(thread.name == "refresh-test" for thread in threading.enumerate())


async def test_cancelling_the_caller_cancels_the_coroutine_and_stop_ends_what_runs() -> None:
    loop = RefreshLoop(name="refresh-cancel")
    loop.start()
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.ensure_future(loop.run(forever()))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.to_thread(cancelled.wait, 5)
    assert cancelled.is_set()
    left_running = asyncio.ensure_future(loop.run(forever()))
    await asyncio.sleep(0.05)
    await loop.stop()  # cancels it and joins the thread
    with pytest.raises(asyncio.CancelledError):
        await left_running
    assert not any(thread.name == "refresh-cancel" for thread in threading.enumerate())
