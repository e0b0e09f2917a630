"""A local server in a spawned process of its own, driven over a pipe (benchmarks: the load
generator must not share the measured process's CPU or event loop)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable
from typing import Any


class ServerProcess:
    """Runs ``serve(pipe, *args)`` in a spawned process. The child sends its address first, then
    answers each ``(command, argument)`` message, until ``("stop", None)``."""

    what = "the server"  # for the timeout's message
    answer_timeout = 60.0  # seconds: the child imports and starts first

    def __init__(self, serve: Callable[..., None], args: tuple) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.address: str = self._ask(None)

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def _ask(self, msg: tuple[str, object] | None) -> Any:
        if msg is not None:
            self._pipe.send(msg)
        if not self._pipe.poll(self.answer_timeout):
            raise TimeoutError(f"{self.what} did not answer within {self.answer_timeout:g} s")
        return self._pipe.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(("stop", None))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
