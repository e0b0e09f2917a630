"""The output spool on a real directory: order, acknowledgement, bounds, recovery."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fairfeed.kafka.spool import Spool, SpoolError


def fill(spool: Spool, n: int, start: int = 0, topic: str = "t") -> list[int]:
    seqs = [spool.append(topic, b"k%d" % (i % 3), b"value %d" % i, records=i) for i in
            range(start, start + n)]  # fmt: skip
    spool.write()
    return seqs


def killed(path: Path, work: Callable[[Spool], None], **kw: int) -> None:
    """Run ``work`` on a spool in a forked child that then dies by SIGKILL (no close)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            work(Spool(path, 1 << 20, **kw))
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_messages_read_back_in_order_and_acknowledged_ones_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=4096)
    seqs = [s for k in range(5) for s in fill(spool, 100, 100 * k)]  # one write per pass
    assert seqs == list(range(500))
    assert len(list(tmp_path.glob("*.seg"))) > 1  # rotated between passes
    got = spool.read(0, 10_000)
    assert [e.seq for e in got] == seqs
    assert [e.value for e in got] == [b"value %d" % i for i in range(500)]
    assert got[7].key == b"k1" and got[7].records == 7 and got[7].topic == "t"
    for s in (0, 1, 2, 5):
        spool.ack(s)
    assert spool.advance() == 3  # 3 and 4 still wait
    assert [e.seq for e in spool.read(0, 3)] == [3, 4, 6]
    # a read continues where the previous one stopped
    assert [e.seq for e in spool.read(7, 2)] == [7, 8]
    assert [e.seq for e in spool.read(9, 2)] == [9, 10]
    for s in seqs:
        spool.ack(s)
    spool.advance()
    assert spool.pending == 0 and spool.waiting_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) <= 1  # only the segment being written stays
    spool.close()
    assert list(tmp_path.glob("*.seg")) == []


def test_unacknowledged_messages_survive_a_kill(tmp_path: Path) -> None:
    def work(spool: Spool) -> None:
        fill(spool, 300)
        for s in range(120):
            spool.ack(s)
        spool.advance()
        spool.append("t", None, b"never written")  # queued, not written: gone with the process

    killed(tmp_path, work, segment_bytes=4096)
    again = Spool(tmp_path, 1 << 20, segment_bytes=4096)
    assert again.low == 120 and again.next == 300
    assert again.recovered == again.pending == 180
    assert [e.seq for e in again.read(again.low, 1000)] == list(range(120, 300))
    assert again.waiting_bytes == sum(
        24 + len(e.topic) + len(e.key or b"") + len(e.value) for e in again.read(120, 1000)
    )
    assert again.append("t", None, b"new") == 300
    again.close()


def test_a_torn_tail_is_cut_off(tmp_path: Path) -> None:
    killed(tmp_path, lambda spool: fill(spool, 10))
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    whole = seg.read_bytes()
    seg.write_bytes(whole[:-5])  # the last entry's write was cut short
    again = Spool(tmp_path, 1 << 20)
    assert again.truncated > 0
    assert [e.value for e in again.read(0, 100)] == [b"value %d" % i for i in range(9)]
    assert again.next == 9
    again.close()


def test_full_spool_refuses_but_keeps_a_reserve(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 64 << 10, reserve_bytes=4096)
    value = b"x" * 1000
    n = 0
    while spool.append("t", b"k", value) >= 0:
        n += 1
    assert 50 <= n <= 64
    assert spool.bytes <= 64 << 10
    assert spool.append("anomalies", b"k", b"y" * 100, reserve=True) >= 0
    spool.write()
    assert spool.bytes <= (64 << 10) + 4096
    for s in range(spool.next):
        spool.ack(s)
    spool.advance()
    assert spool.append("t", b"k", value) >= 0  # room again once acknowledged... or segments go
    spool.close()


def test_one_process_per_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path, 1 << 20)
    spool.close()
    Spool(tmp_path, 1 << 20).close()


def test_position_marker_is_recovered(tmp_path: Path) -> None:
    def work(spool: Spool) -> None:
        fill(spool, 3)
        spool.append("t", None, b"v")
        spool.mark(b"fairfeed-123", np.array([10, 20], np.int64))
        spool.write()
        fill(spool, 2)

    killed(tmp_path, work)
    again = Spool(tmp_path, 1 << 20)
    assert again.positions is not None
    prefix, tails = again.positions
    assert prefix == b"fairfeed-123" and tails.tolist() == [10, 20]
    assert [e.seq for e in again.read(0, 10)] == [0, 1, 2, 3, 4, 5]  # markers are no messages
    again.close()
