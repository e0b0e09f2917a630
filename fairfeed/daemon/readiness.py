"""Whether the daemon is ready: every child up, ready and beating, and Kafka output flowing.

One definition for ``/readyz`` (``daemon/metrics.py``) and systemd's ``READY=1``
(``daemon/service.py``), so the two never disagree about what "ready" means.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fairfeed.core.config import DaemonConfig
from fairfeed.core.counters import Slot
from fairfeed.daemon.supervisor import ChildSpec
from fairfeed.ipc.control import ControlBlock
from fairfeed.kafka.sink import STATE_TEXT, OutputState


def readiness_problems(
    cfg: DaemonConfig,
    control: ControlBlock,
    children: Sequence[ChildSpec],
    compute_slot: int,
    now: float | None = None,
) -> list[str]:
    """What keeps the daemon from being ready, in words (empty = ready)."""
    now = time.monotonic() if now is None else now
    problems = []
    # A beat late by more than a few intervals means a stuck child, long before the
    # supervisor's own heartbeat_timeout kills it.
    late = min(cfg.heartbeat_timeout, 2.0 + 4 * cfg.heartbeat_interval)
    for ch in children:
        if not ch.pid:
            problems.append(f"{ch.name} down")
        elif control.get(ch.slot, Slot.READY) != 1:
            problems.append(f"{ch.name} not ready")
        elif now - ch.last_beat_change > late:
            problems.append(f"{ch.name} heartbeat {now - ch.last_beat_change:.1f}s old")
    state = control.get(compute_slot, Slot.OUTPUT_STATE)
    if state:
        since = control.get(compute_slot, Slot.OUTPUT_SINCE)
        waited = (time.time_ns() - since) / 1e9 if since else 0.0
        problems.append(
            f"kafka output: {STATE_TEXT.get(OutputState(state), state)} for {waited:.1f}s, "
            f"{control.get(compute_slot, Slot.SPOOL_MESSAGES)} messages "
            f"({control.get(compute_slot, Slot.SPOOL_BYTES)} bytes) in the spool"
        )
    return problems
