"""The supervisor's Prometheus collector: shared-memory counters → labelled series at scrape time.

Children never touch prometheus_client: they count into the control block (per-child slots), the
stream board (messages and last receive time per instrument × source), the rings' headers and the
metrics board (latency histograms, latest prices, kernel time, anomalies). At each scrape this
collector reads those arrays and turns ids into names through the supervisor's registry, which
grows live. Series are keyed by child *name* (``ingest-0``, ``compute``), never by pid, and slot
counters are cumulative across restarts, so a restarted worker continues its series.

Per-stream families (labels provider, venue, data_class, instrument) obey a budget:
``metrics.max_series`` label sets each, in registry order (first come, first kept); the rest are
folded into ``instrument="__overflow__"`` per (provider, venue, data_class) and counted in
``fairfeed_metrics_folded_streams``. Every metric is described in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fairfeed.core.counters import Slot
from fairfeed.core.records import CLASS_NAMES
from fairfeed.daemon.readiness import readiness_problems
from fairfeed.hotpath.metrics import BOUNDS_S, D_INDEX, D_MARK, HOPS, M_UNTIMED
from fairfeed.ipc.metricsboard import MetricsBoard

if TYPE_CHECKING:
    from fairfeed.daemon.ctl_handlers import Runtime

OVERFLOW = "__overflow__"
RATE_WINDOW = 10.0  # seconds: update rates are measured over about this long
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_LE = [*(repr(float(b)) for b in BOUNDS_S), "+Inf"]
_STREAM_LABELS = ["provider", "venue", "data_class", "instrument"]

# (metric name, slot, help): per-child counters exported as `<name>_total{process}`
_SLOT_COUNTERS = (
    ("records_in", Slot.RECORDS_IN, "Records in: ingest = parsed from frames, compute = read"),
    ("records_out", Slot.RECORDS_OUT, "Records out: ingest = written to its ring, compute = ticks"),
    ("parse_errors", Slot.PARSE_ERRORS, "Malformed provider messages"),
    ("frames_in", Slot.FRAMES_IN, "Provider frames received"),
    (
        "oversized_messages",
        Slot.OVERSIZED,
        "Provider messages over max_message_bytes, dropped and dead-lettered",
    ),
    (
        "adapter_failures",
        Slot.ADAPTER_FAILURES,
        "Unexpected exceptions in a provider connection (it was closed and reopened)",
    ),
    ("reconnects", Slot.RECONNECTS, "Provider reconnections"),
    ("disconnects", Slot.DISCONNECTS, "Provider connections lost"),
    (
        "stream_restarts",
        Slot.STREAM_RESTARTS,
        "Streams restarted alone while their provider connection stayed up (Kaiko calls)",
    ),
    (
        "time_errors",
        Slot.TIME_ERRORS,
        "Records whose venue time was over a day ahead of ours or before 2010 (cleared, kept)",
    ),
    (
        "value_errors",
        Slot.VALUE_ERRORS,
        "Records whose price or size was beyond any market (dropped)",
    ),
    ("sequence_gaps", Slot.GAPS, "Sequence gaps detected"),
    ("sequence_missed", Slot.MISSED, "Messages missed in sequence gaps"),
    (
        "sequence_repeats_dropped",
        Slot.REPEATS_DROPPED,
        "Numbered or keyed records dropped as already published (reconnect overlap, replays)",
    ),
    ("provider_heartbeats", Slot.HEARTBEATS, "Provider heartbeats received"),
    ("subscribe_errors", Slot.SUBSCRIBE_ERRORS, "Subscriptions refused by a provider"),
    ("dead_letters", Slot.DEAD_LETTERS, "Malformed frames forwarded to the dead-letter topic"),
    ("dead_letters_dropped", Slot.DEAD_LETTERS_DROPPED, "Malformed frames not forwarded"),
    ("fair_prices", Slot.FAIR_OUT, "Fair prices produced"),
    ("kafka_delivered", Slot.KAFKA_DELIVERED, "Kafka messages acknowledged by the broker"),
    ("kafka_errors", Slot.KAFKA_ERRORS, "Kafka delivery errors"),
    (
        "kafka_retries",
        Slot.KAFKA_RETRIES,
        "Messages a full producer queue refused (kept in the spool)",
    ),
    ("kafka_dropped", Slot.KAFKA_DROPPED, "Kafka messages given up (spool full, rejected)"),
    ("anomaly_events", Slot.ANOMALIES_TOTAL, "Anomaly events published (starts and ends)"),
)
_SLOT_GAUGES = (
    ("connections", Slot.CONNECTED, "Open provider connections"),
    (
        "kafka_queue_messages",
        Slot.KAFKA_QUEUE,
        "Messages handed to librdkafka, not yet acknowledged",
    ),
    ("anomaly_episodes_open", Slot.ANOMALIES_OPEN, "Anomaly episodes open now (all kinds)"),
)


def _anomaly_kind_names() -> dict[int, str]:
    try:
        from fairfeed.hotpath.anomaly import KIND_NAMES
    except ImportError:  # pragma: no cover - detectors not built
        return {}
    return dict(KIND_NAMES)


def _proc_stat(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, resident bytes) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return cpu, int(fields[21]) * _PAGE


class FairfeedCollector(Collector):
    """Everything the daemon exports, read from shared memory at each ``collect()``."""

    def __init__(self, rt: Runtime, board: MetricsBoard | None, max_series: int) -> None:
        self.rt = rt
        self.board = board
        self.max_series = max_series
        self.kind_names = _anomaly_kind_names()
        self._snaps: deque[tuple[float, np.ndarray]] = deque()  # (monotonic, counts) for rates
        self.last_duration = 0.0
        self.scrapes = 0

    # -- helpers ---------------------------------------------------------------------------
    def _children(self):
        return self.rt.children

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        yield from self._technical()
        yield from self._streams()
        yield from self._latency()
        yield from self._anomalies()
        yield from self._output()
        yield from self._sockets()
        self.scrapes += 1
        g = GaugeMetricFamily(
            "fairfeed_metrics_collect_seconds", "Time the previous scrape took to collect"
        )
        g.add_metric([], self.last_duration)
        yield g
        self.last_duration = time.perf_counter() - start

    # -- Kafka output and its spool ---------------------------------------------------------
    def _output(self) -> Iterator[Metric]:
        rt = self.rt
        k = rt.cfg.kafka
        slot = rt.compute.slot
        get = rt.control.get
        dropped = CounterMetricFamily(
            "fairfeed_output_dropped_records",
            "Records dropped because the output spool was full (or rejected for good), per topic",
            labels=["topic"],
        )
        for topic, field in ((k.ticks_topic, Slot.DROPPED_TICKS), (k.fair_topic, Slot.DROPPED_FAIR),
                             (k.anomalies_topic, Slot.DROPPED_ANOMALIES),
                             (k.dead_letter_topic, Slot.DROPPED_DEAD_LETTERS),
                             (k.derivatives_topic, Slot.DROPPED_DERIVATIVES),
                             ("other", Slot.DROPPED_OTHER)):  # fmt: skip
            dropped.add_metric([topic], get(slot, field))
        yield dropped
        for name, field, doc in (
            ("spool_bytes", Slot.SPOOL_BYTES, "Bytes of output in the spool not yet acknowledged"),
            ("spool_messages", Slot.SPOOL_MESSAGES, "Messages in the spool not yet acknowledged"),
            ("output_state", Slot.OUTPUT_STATE,
             "0 delivering, 1 broker not acknowledging, 2 reconnecting, 3 topic missing, "
             "4 spool full"),
        ):  # fmt: skip
            g = GaugeMetricFamily(f"fairfeed_{name}", doc)
            g.add_metric([], get(slot, field))
            yield g
        since = get(slot, Slot.OUTPUT_SINCE)
        g = GaugeMetricFamily(
            "fairfeed_output_blocked_seconds",
            "Seconds output has not been delivered (0 when it is)",
        )
        g.add_metric([], (time.time_ns() - since) / 1e9 if since else 0.0)
        yield g
        c = CounterMetricFamily(
            "fairfeed_spool_resent",
            "Messages sent again from the spool (producer replaced, restart): Kafka may hold two "
            "copies of them",
        )
        c.add_metric([], get(slot, Slot.SPOOL_RESENT))
        yield c

    # -- the supervisor's own sockets (control, HTTP) ------------------------------------------
    def _sockets(self) -> Iterator[Metric]:
        drops = CounterMetricFamily(
            "fairfeed_socket_drops",
            "Clients the control socket or the HTTP endpoint let go, by reason",
            labels=["socket", "reason"],
        )
        clients = GaugeMetricFamily(
            "fairfeed_socket_clients", "Connections open now", labels=["socket"]
        )
        buffered = GaugeMetricFamily(
            "fairfeed_socket_buffered_bytes",
            "Bytes held for clients: requests not yet served, answers not yet sent",
            labels=["socket"],
        )
        for server in self.rt.served:
            for reason, n in server.drops.items():
                drops.add_metric([server.label, reason], n)
            clients.add_metric([server.label], len(server.clients))
            buffered.add_metric([server.label], server.buffered())
        yield drops
        yield clients
        yield buffered

    # -- per process -----------------------------------------------------------------------
    def _technical(self) -> Iterator[Metric]:
        rt = self.rt
        c = rt.control
        children = self._children()
        sup = rt.supervisor
        now = time.monotonic()
        lab = ["process"]
        for name, field, doc in _SLOT_COUNTERS:
            m = CounterMetricFamily(f"fairfeed_{name}", doc, labels=lab)
            for ch in children:
                m.add_metric([ch.name], c.get(ch.slot, field))
            yield m
        for name, field, doc in _SLOT_GAUGES:
            m = GaugeMetricFamily(f"fairfeed_{name}", doc, labels=lab)
            for ch in children:
                m.add_metric([ch.name], c.get(ch.slot, field))
            yield m
        up = GaugeMetricFamily("fairfeed_process_up", "1 while the child runs", labels=lab)
        ready = GaugeMetricFamily("fairfeed_process_ready", "1 once the child booted", labels=lab)
        restarts = CounterMetricFamily(
            "fairfeed_restarts", "Child restarts since the daemon started", labels=lab
        )
        hb = GaugeMetricFamily(
            "fairfeed_heartbeat_age_seconds",
            "Seconds since the child's heartbeat last moved (+Inf while it is down)",
            labels=lab,
        )
        cpu = CounterMetricFamily(
            "fairfeed_child_cpu_seconds", "CPU time of the child's current process", labels=lab
        )
        rss = GaugeMetricFamily(
            "fairfeed_child_resident_memory_bytes", "Resident memory of the child", labels=lab
        )
        for ch in children:
            running = bool(ch.pid)
            up.add_metric([ch.name], int(running))
            ready.add_metric([ch.name], int(running and c.get(ch.slot, Slot.READY) == 1))
            restarts.add_metric([ch.name], ch.restarts)
            hb.add_metric([ch.name], now - ch.last_beat_change if running else math.inf)
            st = _proc_stat(ch.pid) if running else None
            if st is not None:
                cpu.add_metric([ch.name], st[0])
                rss.add_metric([ch.name], st[1])
        yield from (up, ready, restarts, hb, cpu, rss)
        if sup is not None:
            g = GaugeMetricFamily("fairfeed_uptime_seconds", "Seconds since the supervisor started")
            g.add_metric([], now - sup.started)
            yield g
        # rings, one per ingest worker
        fill = GaugeMetricFamily("fairfeed_ring_fill", "Records waiting in the ring", labels=lab)
        cap = GaugeMetricFamily("fairfeed_ring_capacity", "Ring capacity (records)", labels=lab)
        written = CounterMetricFamily(
            "fairfeed_ring_written", "Records published into the ring", labels=lab
        )
        dropped = CounterMetricFamily(
            "fairfeed_ring_dropped", "Records dropped because the ring stayed full", labels=lab
        )
        for w, ring in zip(rt.workers, rt.rings, strict=False):
            fill.add_metric([w.name], ring.fill())
            cap.add_metric([w.name], ring.capacity)
            written.add_metric([w.name], ring.written)
            dropped.add_metric([w.name], ring.dropped)
        yield from (fill, cap, written, dropped)
        board = self.board
        if board is not None:
            counts = board.batch_hist.tolist()
            acc = 0
            buckets = []
            for le, n in zip(_LE, counts, strict=True):
                acc += n
                buckets.append((le, acc))
            h = HistogramMetricFamily(
                "fairfeed_kernel_seconds", "Compute kernel time per record batch", labels=[]
            )
            h.add_metric([], buckets, float(board.batch_sum[0]))
            yield h
            u = CounterMetricFamily(
                "fairfeed_latency_untimed_records",
                "Records read whose ring publish stamp was already overwritten",
            )
            u.add_metric([], int(board.misc[M_UNTIMED]))
            yield u

    # -- per stream (business) -------------------------------------------------------------
    def _stream_cells(self, n_inst: int, n_src: int) -> tuple[np.ndarray, np.ndarray]:
        """(instrument, source) of every stream to export: subscribed or seen, registry order."""
        rt = self.rt
        reg = rt.registry
        mask = rt.streams.count[:n_inst, :n_src] > 0
        for s in rt.book.live:
            try:
                mask[reg.instrument_id(s.instrument), reg.source_id(s.provider, s.venue)] = True
            except (KeyError, IndexError):
                continue
        ii, ss = np.nonzero(mask)
        return ii, ss

    def _rates(self, n_inst: int, n_src: int, counts: np.ndarray, now: float) -> np.ndarray:
        """Messages/s per cell over about RATE_WINDOW (NaN until two snapshots exist)."""
        snaps = self._snaps
        if not snaps or now - snaps[-1][0] >= 1.0:
            snaps.append((now, counts.copy()))
        while len(snaps) > 2 and now - snaps[1][0] >= RATE_WINDOW:
            snaps.popleft()
        t0, c0 = snaps[0]
        if now - t0 < 0.5 or c0.shape != counts.shape:
            if c0.shape != counts.shape:  # the registry grew: restart the window
                snaps.clear()
                snaps.append((now, counts.copy()))
            return np.full(counts.shape, np.nan)
        return (counts - c0).astype(np.float64) / (now - t0)

    def _streams(self) -> Iterator[Metric]:
        rt = self.rt
        reg = rt.registry
        n_inst = min(len(reg.instruments), rt.streams.count.shape[0])
        n_src = min(len(reg.sources), rt.streams.count.shape[1])
        wall = time.time_ns()
        ii, ss = self._stream_cells(n_inst, n_src)
        counts_all = rt.streams.count[:n_inst, :n_src].astype(np.int64)
        rates_all = self._rates(n_inst, n_src, counts_all, time.monotonic())
        count = counts_all[ii, ss].tolist()
        last = rt.streams.last_ts[:n_inst, :n_src][ii, ss]
        age = np.where(last > 0, (wall - last) / 1e9, np.inf).tolist()
        rate = rates_all[ii, ss].tolist()
        fair = rt.control.fair_price[:n_inst]
        board = self.board
        if board is not None:
            price_arr = board.price[:n_inst, :n_src][ii, ss]
            ratio_arr = price_arr / fair[ii]
            price = price_arr.tolist()
            ratio = ratio_arr.tolist()
        else:
            price = ratio = [math.nan] * len(count)
        classes = [CLASS_NAMES.get(c, "unknown") for c in reg.instrument_classes]
        src_names = [(reg.providers[p], reg.venues[v]) for p, v in reg.sources]
        insts = reg.instruments

        m_msgs = CounterMetricFamily(
            "fairfeed_messages", "Market records per stream", labels=_STREAM_LABELS
        )
        m_age = GaugeMetricFamily(
            "fairfeed_last_update_age_seconds",
            "Seconds since the stream's last record was received (+Inf = never)",
            labels=_STREAM_LABELS,
        )
        m_rate = GaugeMetricFamily(
            "fairfeed_update_rate",
            f"Records per second over the last ~{RATE_WINDOW:.0f}s",
            labels=_STREAM_LABELS,
        )
        m_price = GaugeMetricFamily(
            "fairfeed_price", "Latest price per stream (trade, or quote mid)", labels=_STREAM_LABELS
        )
        m_ratio = GaugeMetricFamily(
            "fairfeed_price_ratio", "Stream price / fair price of the instrument",
            labels=_STREAM_LABELS,
        )  # fmt: skip
        budget = self.max_series
        folded: dict[tuple[str, str, str], list[float]] = {}  # msgs, min age, rate
        n_folded = 0
        for k, (i, s) in enumerate(zip(ii.tolist(), ss.tolist(), strict=True)):
            prov, venue = src_names[s]
            dclass = classes[i]
            if k >= budget:
                n_folded += 1
                f = folded.setdefault((prov, venue, dclass), [0, math.inf, 0.0])
                f[0] += count[k]
                f[1] = min(f[1], age[k])
                if rate[k] == rate[k]:
                    f[2] += rate[k]
                continue
            labels = [prov, venue, dclass, insts[i]]
            m_msgs.add_metric(labels, count[k])
            m_age.add_metric(labels, age[k])
            if rate[k] == rate[k]:
                m_rate.add_metric(labels, rate[k])
            if price[k] == price[k]:
                m_price.add_metric(labels, price[k])
                if ratio[k] == ratio[k]:
                    m_ratio.add_metric(labels, ratio[k])
        for (prov, venue, dclass), (msgs, a, r) in folded.items():
            labels = [prov, venue, dclass, OVERFLOW]
            m_msgs.add_metric(labels, msgs)
            m_age.add_metric(labels, a)
            m_rate.add_metric(labels, r)
        yield from (m_msgs, m_age, m_rate, m_price, m_ratio)
        if board is not None:
            n_folded += yield from self._derivatives(board, n_inst, n_src, classes, src_names)

        m_fair = GaugeMetricFamily(
            "fairfeed_fair_price", "Latest fair price", labels=["data_class", "instrument"]
        )
        m_fsrc = GaugeMetricFamily(
            "fairfeed_fair_sources", "Sources used by the latest fair price",
            labels=["data_class", "instrument"],
        )  # fmt: skip
        m_fage = GaugeMetricFamily(
            "fairfeed_fair_age_seconds", "Seconds since the latest fair price",
            labels=["data_class", "instrument"],
        )  # fmt: skip
        c = rt.control
        fair_l = fair.tolist()
        fsrc = c.fair_sources[:n_inst].tolist()
        fts = c.fair_ts[:n_inst].tolist()
        kept = 0
        for i, p in enumerate(fair_l):
            if p != p:
                continue
            if kept >= budget:
                n_folded += 1
                continue
            kept += 1
            labels = [classes[i], insts[i]]
            m_fair.add_metric(labels, p)
            m_fsrc.add_metric(labels, fsrc[i])
            m_fage.add_metric(labels, (wall - fts[i]) / 1e9)
        yield from (m_fair, m_fsrc, m_fage)

        subs: dict[tuple[str, str, str], int] = {}
        for s in rt.book.live:
            cell = (s.provider, s.venue, s.data_class)
            subs[cell] = subs.get(cell, 0) + 1
        m_subs = GaugeMetricFamily(
            "fairfeed_subscriptions",
            "Active subscriptions",
            labels=["provider", "venue", "data_class"],
        )
        for key, n in sorted(subs.items()):
            m_subs.add_metric(list(key), n)
        yield m_subs
        m_fold = GaugeMetricFamily(
            "fairfeed_metrics_folded_streams",
            f"Label sets beyond metrics.max_series folded into instrument={OVERFLOW!r}",
        )
        m_fold.add_metric([], n_folded)
        yield m_fold
        m_budget = GaugeMetricFamily(
            "fairfeed_metrics_max_series", "Label sets allowed per per-stream metric family"
        )
        m_budget.add_metric([], budget)
        yield m_budget

    def _derivatives(
        self,
        board: MetricsBoard,
        n_inst: int,
        n_src: int,
        classes: list[str],
        src_names: list[tuple[str, str]],
    ) -> Generator[Metric, None, int]:
        """Per stream with derivatives data: mark, index, basis, funding, open interest,
        liquidations. Returns the label sets folded beyond the budget."""
        deriv = board.deriv[:, :n_inst, :n_src]
        liq = board.liquidations[:n_inst, :n_src]
        ii, ss = np.nonzero(~np.isnan(deriv).all(axis=0) | (liq > 0))
        vals = deriv[:, ii, ss]
        mark, index, rate, nxt, oi = vals.tolist()
        # a funding record's next funding time 0 is unknown (Kaiko publishes none): no sample
        nxt = [math.nan if t == 0 else t for t in nxt]
        with np.errstate(divide="ignore", invalid="ignore"):
            basis = (vals[D_MARK] / vals[D_INDEX] - 1.0).tolist()
        n_liq = liq[ii, ss].tolist()
        size_liq = board.liquidated[:n_inst, :n_src][ii, ss].tolist()
        gauges = [
            GaugeMetricFamily(name, doc, labels=_STREAM_LABELS)
            for name, doc in (
                ("fairfeed_mark_price", "Latest mark price per stream"),
                ("fairfeed_index_price", "Latest index price per stream"),
                ("fairfeed_basis", "Latest mark price / index price - 1 per stream"),
                ("fairfeed_funding_rate", "Latest funding rate per funding interval"),
                ("fairfeed_next_funding_time_seconds", "Next funding time, Unix seconds"),
                ("fairfeed_open_interest", "Latest open interest, base units"),
            )
        ]
        series = (mark, index, basis, rate, nxt, oi)
        m_liq = CounterMetricFamily(
            "fairfeed_liquidations", "Liquidation prints per stream", labels=_STREAM_LABELS
        )
        m_liq_size = CounterMetricFamily(
            "fairfeed_liquidation_size", "Size of the liquidation prints, base units",
            labels=_STREAM_LABELS,
        )  # fmt: skip
        insts = self.rt.registry.instruments
        folded: dict[tuple[str, str, str], list[float]] = {}
        n_folded = 0
        for k, (i, s) in enumerate(zip(ii.tolist(), ss.tolist(), strict=True)):
            prov, venue = src_names[s]
            if k >= self.max_series:
                n_folded += 1
                f = folded.setdefault((prov, venue, classes[i]), [0, 0.0])
                f[0] += n_liq[k]
                f[1] += size_liq[k]
                continue
            labels = [prov, venue, classes[i], insts[i]]
            for g, values in zip(gauges, series, strict=True):
                if values[k] == values[k]:
                    g.add_metric(labels, values[k])
            if n_liq[k]:
                m_liq.add_metric(labels, n_liq[k])
                m_liq_size.add_metric(labels, size_liq[k])
        for (prov, venue, dclass), (n, size) in folded.items():
            if n:
                m_liq.add_metric([prov, venue, dclass, OVERFLOW], n)
                m_liq_size.add_metric([prov, venue, dclass, OVERFLOW], size)
        yield from gauges
        yield from (m_liq, m_liq_size)
        return n_folded

    # -- latency ---------------------------------------------------------------------------
    def _latency(self) -> Iterator[Metric]:
        board = self.board
        if board is None:
            return
        reg = self.rt.registry
        n_src = min(len(reg.sources), board.n_sources)
        h = HistogramMetricFamily(
            "fairfeed_latency_seconds",
            "Latency per hop, per provider and venue",
            labels=["provider", "venue", "hop"],
        )
        skew = CounterMetricFamily(
            "fairfeed_latency_negative",
            "Negative latencies (clock skew) counted as 0",
            labels=["provider", "venue", "hop"],
        )
        cum = np.cumsum(board.hist[:n_src], axis=2).tolist()
        sums = board.hsum[:n_src].tolist()
        skews = board.skew[:n_src].tolist()
        for s in range(n_src):
            p, v = reg.sources[s]
            prov, venue = reg.providers[p], reg.venues[v]
            for hop_i, hop in enumerate(HOPS):
                row = cum[s][hop_i]
                if not row[-1]:
                    continue
                labels = [prov, venue, hop]
                h.add_metric(labels, list(zip(_LE, row, strict=True)), sums[s][hop_i])
                skew.add_metric(labels, skews[s][hop_i])
        yield h
        yield skew

    # -- anomalies -------------------------------------------------------------------------
    def _anomalies(self) -> Iterator[Metric]:
        board = self.board
        if board is None:
            return
        reg = self.rt.registry
        total = CounterMetricFamily(
            "fairfeed_anomalies", "Anomaly episodes started", labels=["kind", "provider"]
        )
        open_ = GaugeMetricFamily(
            "fairfeed_anomalies_open", "Anomaly episodes open now", labels=["kind", "provider"]
        )
        ev = board.anomaly_events
        op = board.anomaly_open
        kinds, cols = np.nonzero(ev)
        for kind, col in zip(kinds.tolist(), cols.tolist(), strict=True):
            name = self.kind_names.get(kind, str(kind))
            prov = reg.providers[col] if col < len(reg.providers) else ""
            total.add_metric([name, prov], int(ev[kind, col]))
            open_.add_metric([name, prov], int(op[kind, col]))
        yield total
        yield open_


_TYPE_SUFFIX = {"counter": "_total"}


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_text(registry) -> bytes:
    """The Prometheus text format of ``registry``, as ``generate_latest`` writes it (same lines,
    same order) but several times faster: label values are escaped once per distinct value and
    names are not re-validated per sample (ours are fixed ASCII names)."""
    out: list[str] = []
    esc_cache: dict[str, str] = {}
    for metric in registry.collect():
        mtype = metric.type
        mname = metric.name + _TYPE_SUFFIX.get(mtype, "")
        if mtype == "unknown":
            mtype = "untyped"
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n")
        for smp in metric.samples:
            if smp.name.endswith("_created"):
                continue
            labels = smp.labels
            if labels:
                parts = []
                for k in sorted(labels):
                    v = labels[k]
                    e = esc_cache.get(v)
                    if e is None:
                        e = esc_cache[v] = _esc(v)
                    parts.append(f'{k}="{e}"')
                out.append(f"{smp.name}{{{','.join(parts)}}} {floatToGoString(smp.value)}\n")
            else:
                out.append(f"{smp.name} {floatToGoString(smp.value)}\n")
    return "".join(out).encode()


class Readiness:
    """``/healthz`` and ``/readyz`` over the supervisor's state; ``tick()`` each loop pass."""

    def __init__(self, rt: Runtime, compute_slot: int) -> None:
        self.rt = rt
        self.compute_slot = compute_slot
        self.last_tick = time.monotonic()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def healthz(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_tick
        return age < 5.0, f"supervisor loop {'alive' if age < 5.0 else 'stuck'} ({age:.2f}s)"

    def readyz(self) -> tuple[bool, str]:
        rt = self.rt
        problems = readiness_problems(rt.cfg.daemon, rt.control, rt.children, self.compute_slot)
        if problems:
            return False, "not ready: " + "; ".join(problems)
        return True, "ready"


def build_endpoint(rt: Runtime, board: MetricsBoard | None, compute_slot: int):
    """The HTTP endpoint of ``rt.cfg.metrics`` (not opened yet) and its collector."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    from fairfeed.daemon.metrics_http import MetricsHTTPServer

    m = rt.cfg.metrics
    registry = CollectorRegistry(auto_describe=False)
    collector = FairfeedCollector(rt, board, m.max_series)
    registry.register(collector)
    ProcessCollector(registry=registry)
    ready = Readiness(rt, compute_slot)

    def metrics() -> tuple[bytes, str]:
        return render_text(registry), CONTENT_TYPE_LATEST

    server = MetricsHTTPServer(
        m.listen,
        metrics,
        ready.healthz,
        ready.readyz,
        max_clients=m.max_clients,
        idle_timeout=m.idle_timeout,
        header_timeout=m.header_timeout,
    )
    rt.served.append(server)
    server.on_tick = ready.tick
    return server, collector
