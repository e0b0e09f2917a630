"""Ring write and read in batches: cost per record (pytest-benchmark)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fairfeed.core.records import RECORD_DTYPE
from fairfeed.ipc.ring import Ring


@pytest.fixture
def ring():
    r = Ring.create(f"ffbench-{os.getpid()}", 1 << 16)
    yield r
    r.close()
    r.unlink()


@pytest.mark.parametrize("batch", [64, 256, 4096])
def test_ring_write_then_read(benchmark, ring: Ring, batch: int) -> None:
    """One batch written and read back (wraps around the ring as rounds go on)."""
    recs = np.zeros(batch, RECORD_DTYPE)
    recs["sequence"] = np.arange(batch)
    out = np.empty(batch, RECORD_DTYPE)

    def cycle() -> int:
        ring.write(recs)
        return ring.read_into(out)

    assert benchmark(cycle) == batch
    assert ring.dropped == 0 and np.array_equal(out["sequence"], recs["sequence"])
    benchmark.extra_info["us_per_record"] = benchmark.stats.stats.mean * 1e6 / batch
