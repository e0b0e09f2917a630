"""The one way tests (and the end-to-end bench) wait for something to happen.

Poll a condition until it holds instead of sleeping a fixed time and then counting: a loaded
machine only makes the wait longer, never the assertion wrong. ``timeout`` is a failure bound,
not a measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns a truthy value or ``timeout`` passes; return its last
    value either way (for callers that report what is still left rather than fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(
    predicate: Callable[[], T], timeout: float = 5.0, what: str = "", interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value; fail naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], T], timeout: float = 5.0, what: str = "", interval: float = 0.005
) -> T:
    """:func:`wait_for` on the running event loop: the loop keeps serving while we poll."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
