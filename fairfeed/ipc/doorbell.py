"""How the ingest workers wake the compute process when it sleeps on empty rings.

The protocol (the ring side is :meth:`~fairfeed.ipc.ring.Ring.wake_wanted` and
:meth:`~fairfeed.ipc.ring.Ring.set_waiting`): the consumer, finding every ring empty, sets
each ring's ``waiting`` word, :func:`fence`, looks at the rings once more and only then waits
on the :class:`Doorbell`; a producer publishes, fences, and rings the bell if it finds
``waiting`` set (clearing it). Both sides store, fence, then load what the other stored, so at
least one sees the other: a record published while the consumer goes to sleep either stops
the sleep or rings the bell. The consumer's wait also has a timeout (its periodic work).
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fairfeed.ipc.ring import Ring

_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier: taking and releasing an uncontended lock is a locked
    read-modify-write on x86-64, which orders earlier stores before later loads (the one
    reordering TSO allows, and the one the protocol above must forbid)."""
    _FENCE.acquire()
    _FENCE.release()


class Doorbell:
    """An eventfd the producers ring to wake the consumer sleeping on their rings.

    Created before fork (by the supervisor), so every process of the daemon holds it."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def ring(self) -> None:
        """Wake the consumer (or make its next wait return at once)."""
        os.eventfd_write(self.fd, 1)

    def clear(self) -> None:
        """Consumer: forget the rings so far (the next wait sleeps until a new one)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RingWaiter:
    """The consumer's waits: on the doorbell when every ring is empty, or a fixed pause while
    records flow; both also end when ``other_fd`` (its command pipe, -1 = none) is readable.

    Without a doorbell the sleep is a short poll (``fallback`` seconds at most)."""

    def __init__(
        self,
        rings: Sequence[Ring],
        doorbell: Doorbell | None,
        other_fd: int = -1,
        fallback: float = 0.0005,
    ) -> None:
        self.rings = list(rings)
        self.doorbell = doorbell
        self.other_fd = other_fd
        self.fallback = fallback
        self._ep = select.epoll()
        if other_fd >= 0:
            self._ep.register(other_fd, select.EPOLLIN)
        self._ep_bell = select.epoll()
        if doorbell is not None:
            self._ep_bell.register(doorbell.fd, select.EPOLLIN)
        if other_fd >= 0:
            self._ep_bell.register(other_fd, select.EPOLLIN)

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (records are flowing: let more gather). True if ``other_fd`` became
        readable meanwhile (the wait then ends early)."""
        return bool(self._ep.poll(max(seconds, 0.0)))

    def sleep(self, timeout: float) -> bool:
        """Every ring was found empty: sleep until a producer publishes, ``other_fd`` is
        readable or ``timeout`` seconds pass. True if ``other_fd`` may be readable."""
        bell = self.doorbell
        if bell is None:
            return bool(self._ep.poll(min(max(timeout, 0.0), self.fallback)))
        bell.clear()
        for r in self.rings:
            r.set_waiting(True)
        fence()
        try:
            if any(r.unread() for r in self.rings):
                return False  # published while we were getting ready: no sleep
            events = self._ep_bell.poll(max(timeout, 0.0))
        finally:
            for r in self.rings:
                r.set_waiting(False)
        return any(fd == self.other_fd for fd, _ in events)

    def close(self) -> None:
        self._ep.close()
        self._ep_bell.close()
