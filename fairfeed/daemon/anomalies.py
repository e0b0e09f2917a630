"""Anomaly detection in the compute process: the kernels' state built from the configuration
and the periodic evaluation (the events' Kafka encoding is ``fairfeed.kafka.encode``).

The monitored subscriptions are the live set when the detector is built (the supervisor's
subscription book); thresholds are resolved per instrument (instrument over data class over
``[anomalies]``) into one row per subscription. A live unsubscribe disables the subscription's
detectors (its open episodes end); a live subscribe of a new stream extends the detector, whose
other episodes go on (a subscription, once monitored, keeps its place: re-subscribing enables it).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fairfeed.core.config import Config
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Key, Stream
from fairfeed.hotpath import anomaly as an
from fairfeed.hotpath.anomaly import global_row, threshold_row

NS = 1_000_000_000


class AnomalyDetector:
    """Anomaly state of one compute process; ``update`` every batch, ``due`` / ``evaluate``
    every ``evaluate_interval``."""

    def __init__(
        self,
        cfg: Config,
        registry: Registry,
        n_rings: int,
        start_ns: int,
        streams: Iterable[Stream] | None = None,
    ) -> None:
        self.cfg = cfg.anomalies
        self.registry = registry
        # providers whose derivatives values are their subscriptions' data (nothing else comes)
        self.derivs_only = frozenset(p.name for p in cfg.providers if not p.options.market_data())
        self.n_rings = n_rings
        self.streams: list[Stream] = []  # monitored, in kernel order (a stream keeps its place)
        self.index: dict[Key, int] = {}
        self.subs: list[tuple[int, int]] = []  # (instrument id, source id) per stream
        self.rows = np.zeros(0, an.THRESHOLD_DTYPE)
        self._build(list(cfg.streams() if streams is None else streams), start_ns)
        self.interval_ns = round(self.cfg.evaluate_interval * NS)
        self.next_ns = start_ns + self.interval_ns
        self.total = 0  # events published (start and end)

    def _build(self, new: list[Stream], start_ns: int) -> None:
        """(Re)build the kernel state over ``self.streams + new`` (ids as the registry has
        them now), continuing the previous state's episodes."""
        registry, acfg = self.registry, self.cfg
        old = getattr(self, "state", None)
        for s in new:
            self.index[s.key] = len(self.streams)
            self.streams.append(s)
            self.subs.append(
                (registry.instrument_id(s.instrument), registry.source_id(s.provider, s.venue))
            )
        rows = [threshold_row(acfg, s.data_class, s.instrument) for s in new]
        # the configured thresholds, to restore after a disable
        self.rows = np.concatenate([self.rows, np.array(rows, an.THRESHOLD_DTYPE).reshape(-1)])
        self.n_instruments = len(registry.instruments)
        self.state = an.AnomalyState(
            registry.instrument_classes,
            registry.sources,
            len(registry.providers),
            len(registry.venues),
            self.subs,
            self.rows.copy(),  # the state's own: a disable overwrites its rows
            global_row(acfg),
            self.n_rings,
            start_ns,
            acfg.max_events,
        )
        if old is not None:
            self.state.carry_over(old)  # disabled rows stay disabled
        for p, name in enumerate(registry.providers):
            self.state.provs["derivs_data"][p] = name in self.derivs_only

    def extend(self, streams: Iterable[Stream], now_ns: int) -> int:
        """Monitor those of ``streams`` not yet monitored (a live subscribe); open episodes and
        clocks of the others go on. Returns how many were added."""
        new = [s for s in streams if s.key not in self.index]
        if new:
            self._build(new, now_ns)
        return len(new)

    def update(self, records: np.ndarray) -> None:
        self.state.update(records)

    def enable(self, key: Key, now_ns: int) -> bool:
        """Monitor a re-subscribed subscription again, measured afresh from ``now_ns``; False if
        it was never monitored (see :meth:`extend`)."""
        k = self.index.get(key)
        if k is None:
            return False
        self.state.enable(k, self.rows[k], now_ns)
        return True

    def disable(self, key: Key) -> None:
        """Stop monitoring an unsubscribed subscription (its open episodes end at the next
        evaluation)."""
        k = self.index.get(key)
        if k is not None:
            self.state.disable(k)

    def due(self, now_ns: int) -> bool:
        return now_ns >= self.next_ns

    def evaluate(
        self, now_ns: int, fair: np.ndarray, ring_dropped: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run one evaluation; its event rows (``E_*`` integer and float columns), for
        :func:`fairfeed.kafka.encode.encode_anomalies`."""
        self.next_ns = now_ns + self.interval_ns
        fair = fair[: self.n_instruments] if len(fair) >= self.n_instruments else fair
        ei, ef = self.state.evaluate(now_ns, fair, ring_dropped)
        self.total += len(ei)
        return ei, ef

    def open_count(self) -> int:
        return self.state.open_count()
