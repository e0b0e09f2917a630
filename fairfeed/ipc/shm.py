"""Create / attach shared-memory segments so that only the creator ever unlinks them."""

from __future__ import annotations

import os
from multiprocessing import resource_tracker, shared_memory

SHM_DIR = "/dev/shm"


def create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """Create a new segment (fails if ``name`` exists). The caller owns and must unlink it."""
    return shared_memory.SharedMemory(name=name, create=True, size=size)


def attach_segment(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing segment without taking ownership of it.

    On Python < 3.13 attaching registers the segment with this process's resource tracker,
    which unlinks it when the process exits (cpython #82300); unregistering right after the
    attach leaves the creator as the only one who unlinks.
    """
    shm = shared_memory.SharedMemory(name=name, create=False)
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def segment_exists(name: str) -> bool:
    """Whether a POSIX shared-memory segment called ``name`` exists (Linux)."""
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def list_segments(prefix: str) -> list[str]:
    """Names of existing segments starting with ``prefix`` (Linux)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []
