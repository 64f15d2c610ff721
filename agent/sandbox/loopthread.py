"""An asyncio event loop running in its own daemon thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, TypeVar

from .errors import SandboxError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Owns an event loop in a background thread; submit work from any thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop, wait for its result (from another thread)."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self.in_loop_thread():
            raise SandboxError("LoopThread.run() called from its own loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise SandboxError(f"operation did not finish within {timeout:.1f}s") from None
        except BaseException:
            fut.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 10.0) -> T:
        """Run plain ``fn(*args)`` in the loop thread and return its result."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self.loop.is_running() or self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
