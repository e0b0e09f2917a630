"""Which ingest worker owns a subscription: rendezvous (highest-random-weight) hashing.

Stable across processes and restarts (no use of Python's salted ``hash``), and adding a worker
moves only the subscriptions the new worker wins, about 1/(n+1) of them.
"""

from __future__ import annotations

import hashlib


def _weight(key: str, worker: int) -> int:
    digest = hashlib.blake2b(f"{key}|{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def worker_for(provider: str, instrument: str, workers: int) -> int:
    """Index of the ingest worker that owns subscription (provider, instrument)."""
    key = f"{provider}:{instrument}"
    return max(range(workers), key=lambda w: _weight(key, w))
