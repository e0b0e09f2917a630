"""The compact live view the supervisor refreshes every second: rates, fair prices, errors."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from fairfeed.core.counters import Slot
from fairfeed.core.registry import Registry
from fairfeed.daemon.supervisor import Supervisor

_ERROR_FIELDS = (
    ("parse errors", Slot.PARSE_ERRORS),
    ("ring drops", Slot.RING_DROPPED),
    ("kafka errors", Slot.KAFKA_ERRORS),
    ("kafka drops", Slot.KAFKA_DROPPED),
)


class LiveView:
    """Renders the status block; redraws in place on a terminal, appends lines otherwise."""

    def __init__(
        self,
        registry: Registry,
        ingest_slots: list[int],
        compute_slot: int,
        out: TextIO = sys.stdout,
        interval: float = 1.0,
        redraw: bool | None = None,
    ) -> None:
        self.registry = registry
        self.ingest_slots = ingest_slots
        self.compute_slot = compute_slot
        self.out = out
        self.interval = interval
        self.redraw = out.isatty() if redraw is None else redraw
        self._start = time.monotonic()
        self._next = self._start + interval
        self._last_t = self._start
        self._last_in = 0
        self._last_kafka = 0
        self._lines = 0

    def __call__(self, sup: Supervisor) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        text = self.render(sup, now)
        if self.redraw and self._lines:
            self.out.write(f"\x1b[{self._lines}F\x1b[J")
        self.out.write(text)
        self.out.flush()
        self._lines = text.count("\n")

    def render(self, sup: Supervisor, now: float) -> str:
        c = sup.control
        total_in = sum(c.get(s, Slot.RECORDS_IN) for s in self.ingest_slots)
        delivered = c.get(self.compute_slot, Slot.KAFKA_DELIVERED)
        dt = max(now - self._last_t, 1e-9)
        rate_in = (total_in - self._last_in) / dt
        rate_kafka = (delivered - self._last_kafka) / dt
        self._last_t, self._last_in, self._last_kafka = now, total_in, delivered
        up = sum(1 for ch in sup.children if ch.pid)
        restarts = sum(ch.restarts for ch in sup.children)
        connected = sum(c.get(s, Slot.CONNECTED) for s in self.ingest_slots)
        lines = [
            f"fairfeed  up {now - self._start:6.0f}s  processes {up}/{len(sup.children)}"
            f"  restarts {restarts}  connections {connected}",
            f"  in {rate_in:9.0f} rec/s  total {total_in:,}   kafka {rate_kafka:7.0f} msg/s"
            f"  queue {c.get(self.compute_slot, Slot.KAFKA_QUEUE)}",
        ]
        errors = []
        for label, field in _ERROR_FIELDS:
            n = sum(int(c.slots[s, field]) for s in range(c.n_slots))
            errors.append(f"{label} {n}")
        lines.append("  " + "  ".join(errors))
        wall = time.time_ns()
        for i, name in enumerate(self.registry.instruments):
            price = float(c.fair_price[i])
            if math.isnan(price):
                lines.append(f"  {name:<14} {'—':>16}")
                continue
            age = (wall - int(c.fair_ts[i])) / 1e9
            lines.append(
                f"  {name:<14} {price:16.6f}  sources {int(c.fair_sources[i])}  age {age:5.1f}s"
            )
        return "\n".join(lines) + "\n"
