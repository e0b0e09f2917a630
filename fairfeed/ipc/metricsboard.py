"""The metrics board: what the compute process measures for Prometheus, in shared memory.

Written only by the compute process, once per record batch (a Numba kernel, no per-message
Python), read by the supervisor's collector at scrape time (``fairfeed/daemon/metrics.py``):

- ``price[instrument, source]``: latest price per stream — the last trade, or the mid of the last
  bid and ask when the latest record is a quote (NaN = none yet);
- ``hist[source, hop, bucket]`` / ``hsum[source, hop]``: latency histograms per source
  (provider × venue) and hop, with the fixed bucket bounds ``BOUNDS_S`` (plus +Inf), counts not
  cumulative, sums in seconds. Hops (``HOPS``):

  ==================  =====================================================================
  exchange_provider   ``ts_provider - ts_exchange`` (both known)
  provider_receive    ``ts_receive - ts_provider`` (or ``- ts_exchange`` when the provider
                      adds no time of its own)
  receive_ring        ring publish time - ``ts_receive`` (the ring's publish stamps)
  ring_kernel         time the batch reached the metrics kernel - ring publish time
  kernel_kafka        the batch reaching the kernel → its last tick message's broker
                      acknowledgement served (one observation per batch and source)
  kafka_ack           that message's ``produce()`` → broker acknowledgement as the Kafka
                      client timed it (librdkafka's message latency): the broker's and the
                      network's share of ``kernel_kafka``; the rest is the daemon's
  ==================  =====================================================================

  A negative difference (clock skew between the venue, the provider and us) counts in the
  lowest bucket and in ``skew[source, hop]``.
- ``batch_hist[bucket]`` / ``misc``: kernel time per batch (all of ``Pipeline.process``'s
  kernels) and scalar counters (``M_*``);
- ``deriv[field, instrument, source]``: the latest derivatives values per stream (``D_*`` of
  ``fairfeed.hotpath.metrics``: mark, index, funding rate, next funding time in seconds since
  epoch, open interest in base units; NaN = none yet), ``liquidations`` /
  ``liquidated[instrument, source]``: liquidation prints and their size (base units) so far;
- ``anomaly_events[kind, provider]`` / ``anomaly_open[kind, provider]``: anomaly episodes
  started and open now per kind and provider (last column: no provider, e.g. venue or ring
  level).

Values are aligned 8-byte words with one writer; a reader may see one batch half applied, never
a torn value.
"""

from __future__ import annotations

import time

import numpy as np

from fairfeed.hotpath.metrics import (
    BOUNDS_NS,
    HOP_KAFKA_ACK,
    HOP_KERNEL_KAFKA,
    M_UNTIMED,
    N_ANOMALY_KINDS,
    N_BUCKETS,
    N_DERIV,
    N_HOPS,
    N_MISC,
    batch_done_nb,
    observe_many_nb,
    update_derivatives_nb,
    update_metrics_nb,
)
from fairfeed.ipc.shm import attach_segment, create_segment


class MetricsBoard:
    """The arrays above in one shared-memory segment; create in the supervisor, fork to use."""

    def __init__(self, shm, n_instruments: int, n_sources: int, *, owner: bool) -> None:
        self._shm = shm
        self.name = shm.name
        self.owner = owner
        self.n_instruments = n_instruments
        self.n_sources = n_sources
        off = 0

        def arr(shape, dtype):
            nonlocal off
            a = np.ndarray(shape, dtype, shm.buf, off)
            off += a.nbytes
            return a

        ns = (n_instruments, n_sources)
        self.price = arr(ns, np.float64)
        self.bid = arr(ns, np.float64)
        self.ask = arr(ns, np.float64)
        self.hist = arr((n_sources, N_HOPS, N_BUCKETS), np.uint64)
        self.hsum = arr((n_sources, N_HOPS), np.float64)
        self.skew = arr((n_sources, N_HOPS), np.uint64)
        self.batch_hist = arr((N_BUCKETS,), np.uint64)
        self.batch_sum = arr((1,), np.float64)
        self.misc = arr((N_MISC,), np.uint64)
        self.anomaly_events = arr((N_ANOMALY_KINDS, n_sources + 1), np.uint64)
        self.anomaly_open = arr((N_ANOMALY_KINDS, n_sources + 1), np.int64)
        self.deriv = arr((N_DERIV, *ns), np.float64)
        self.liquidations = arr(ns, np.uint64)
        self.liquidated = arr(ns, np.float64)
        self.touched = np.zeros(n_sources, np.uint8)  # private: sources of the last batch

    @staticmethod
    def size(n_instruments: int, n_sources: int) -> int:
        return (
            n_instruments * n_sources * 3 * 8
            + n_sources * N_HOPS * (N_BUCKETS + 2) * 8
            + (N_BUCKETS + 1 + N_MISC) * 8
            + N_ANOMALY_KINDS * (n_sources + 1) * 16
            + n_instruments * n_sources * (N_DERIV + 2) * 8
        )

    @classmethod
    def create(cls, name: str, n_instruments: int, n_sources: int) -> MetricsBoard:
        shm = create_segment(name, cls.size(n_instruments, n_sources))
        board = cls(shm, n_instruments, n_sources, owner=True)
        board.price[:] = np.nan
        board.bid[:] = 0.0
        board.ask[:] = 0.0
        board.deriv[:] = np.nan
        return board  # the rest of a new segment is zero

    @classmethod
    def attach(cls, name: str, n_instruments: int, n_sources: int) -> MetricsBoard:
        return cls(attach_segment(name), n_instruments, n_sources, owner=False)

    # -- writer (compute) ------------------------------------------------------------------
    def update(self, records, source_table, now_ns: int, ring=None, tail0: int = 0) -> None:
        """One batch: prices and latencies; ``ring`` (it was read from) gives the stamps. The
        sources it showed are remembered for :meth:`take_seen`."""
        if ring is not None:
            end, ns, count = ring.stamp_end, ring.stamp_ns, ring.stamp_count
        else:
            end, ns, count = _NO_STAMPS, _NO_STAMPS, -1
        untimed = update_metrics_nb(
            records, len(records), source_table, end, ns, count, tail0, now_ns, BOUNDS_NS,
            self.hist, self.hsum, self.skew, self.price, self.bid, self.ask, self.touched,
        )  # fmt: skip
        if untimed:
            self.misc[M_UNTIMED] += np.uint64(untimed)

    def take_seen(self) -> np.ndarray:
        """The source ids of the batches given to :meth:`update` since the last call."""
        seen = np.flatnonzero(self.touched)
        self.touched[seen] = 0
        return seen

    def derivatives(self, records: np.ndarray, source_table: np.ndarray) -> None:
        """The latest derivatives values and the liquidations of ``records`` (other kinds and
        unknown streams are skipped), one kernel call."""
        update_derivatives_nb(records, len(records), source_table, self.deriv,
                              self.liquidations, self.liquidated)  # fmt: skip

    def batch_done(self, elapsed_ns: int) -> None:
        """Kernel time of one batch."""
        batch_done_nb(elapsed_ns, BOUNDS_NS, self.batch_hist, self.batch_sum, self.misc)

    def observe(self, hop: int, sources: np.ndarray, seconds: np.ndarray) -> None:
        """Latencies of one hop measured outside the kernel (Kafka delivery)."""
        observe_many_nb(sources, seconds, hop, BOUNDS_NS, self.hist, self.hsum, self.skew)

    def anomaly_event(self, kind: int, provider: int, start: bool) -> None:
        """An anomaly episode started (or ended) for ``provider`` (-1 = none)."""
        if not 0 <= kind < N_ANOMALY_KINDS:
            return
        col = provider if 0 <= provider < self.n_sources else self.n_sources
        if start:
            self.anomaly_events[kind, col] += np.uint64(1)
            self.anomaly_open[kind, col] += 1
        elif self.anomaly_open[kind, col] > 0:
            self.anomaly_open[kind, col] -= 1

    def close(self) -> None:
        self.touched = None  # type: ignore[assignment]
        for name in ("price", "bid", "ask", "hist", "hsum", "skew", "batch_hist", "batch_sum",
                     "misc", "anomaly_events", "anomaly_open", "deriv", "liquidations",
                     "liquidated"):  # fmt: skip
            setattr(self, name, None)
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()


_NO_STAMPS = np.zeros(1, np.int64)


class KafkaHop:
    """Delivery callback of a batch's last tick message: observes the kernel → Kafka hop
    (from the batch reaching the kernels, ``perf_counter_ns`` ``t0``, to the broker's ack) and
    the message's own ``produce()`` → ack (``kafka_ack``) once for every source of the batch."""

    __slots__ = ("board", "sources", "t0")

    def __init__(self, board: MetricsBoard, sources: np.ndarray, t0: int) -> None:
        self.board = board
        self.sources = sources
        self.t0 = t0

    def __call__(self, err, msg) -> None:
        if err is not None or self.board.hist is None:
            return
        dt = (time.perf_counter_ns() - self.t0) * 1e-9
        n = len(self.sources)
        self.board.observe(HOP_KERNEL_KAFKA, self.sources, np.full(n, dt))
        ack = msg.latency() if msg is not None else None
        if ack is not None:
            self.board.observe(HOP_KAFKA_ACK, self.sources, np.full(n, ack))
