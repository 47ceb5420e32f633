"""An event loop of the refresher's own, in a thread: the refresh keeps its share of the process however many
requests the serving loop has to answer.

On one loop, every await of a refresh (each SCAN page, each fetch) waits behind every request callback ready at
that moment: under a thousand polling connections a refresh took several intervals. In a thread, the refresh's
loop is never crowded, and the interpreter switches between the two threads at least every switch interval, so
each gets its share of the GIL whatever the other is doing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_JOIN_SECONDS = 10.0


class RefreshLoop:
    """A thread running an asyncio loop; coroutines are handed to it with `run`, from any other loop."""

    def __init__(self, name: str = "refresh") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._started = False

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def is_current(self) -> bool:
        """Whether the caller runs on this loop."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on this loop and wait for it from the caller's loop. Cancelling the caller cancels it."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        """Cancel what runs on the loop, stop it and wait for the thread, each a bounded time."""
        if not self._started or self._loop.is_closed():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.run(_cancel_all()), _JOIN_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, _JOIN_SECONDS)


async def run_on(loop: RefreshLoop | None, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on `loop` when there is one and the caller is not on it already; else here."""
    if loop is None or loop.is_current():
        return await coroutine
    return await loop.run(coroutine)


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # a turn more for their done callbacks, which hand their outcome to the loops waiting for it
    await asyncio.sleep(0)
