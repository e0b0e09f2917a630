"""Servers on their own asyncio loop in a background thread, driven from synchronous code."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Self


class LoopThread:
    """Starts ``servers`` (objects with async ``start`` / ``stop``) on a private event loop in a
    daemon thread; :meth:`call` runs anything on that loop and returns its result."""

    def __init__(self, *servers: Any) -> None:
        self.servers = servers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        for s in self.servers:
            self.call(s.start)
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` (a coroutine function or a plain one) on the servers' loop."""

        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        for s in self.servers:
            with contextlib.suppress(Exception):
                self.call(s.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
