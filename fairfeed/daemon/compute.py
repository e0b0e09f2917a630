"""Compute + sink process: drain every ring in batches, run the kernels, publish to Kafka."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairfeed.core.config import Config
from fairfeed.core.counters import Slot
from fairfeed.core.records import MAX_MARKET_KIND, RECORD_DTYPE
from fairfeed.core.registry import Registry
from fairfeed.core.subscriptions import Subscribe, SubscriptionSet, Unsubscribe
from fairfeed.daemon.anomalies import AnomalyDetector
from fairfeed.daemon.child import EXIT_OK, Heartbeat, enter_child, settle_heap
from fairfeed.daemon.commands import Command, CommandPipe, GrowRegistry, SetLogLevel
from fairfeed.daemon.derivatives import DerivativesPath
from fairfeed.hotpath.anomaly import E_KIND, E_PHASE, E_PROVIDER, PHASE_START
from fairfeed.hotpath.fairmethods import FairBook
from fairfeed.ipc.blobring import BlobRing
from fairfeed.ipc.control import ControlBlock
from fairfeed.ipc.counters import SlotCounters
from fairfeed.ipc.doorbell import Doorbell, RingWaiter
from fairfeed.ipc.metricsboard import KafkaHop as _KafkaHop
from fairfeed.ipc.metricsboard import MetricsBoard
from fairfeed.ipc.ring import Ring
from fairfeed.ipc.streams import StreamBoard
from fairfeed.kafka.collect import CollectSink
from fairfeed.kafka.encode import TickEncoder, encode_anomalies, encode_output_overflows
from fairfeed.kafka.sink import KafkaSink

log = logging.getLogger("fairfeed.compute")

# How often the periodic work runs when it has nothing new to look at (seconds).
SINK_IDLE_POLL = 0.5  # the sink with nothing in flight: its topic checks and state
SINK_BUSY_POLL = 0.005  # messages in flight: serve the delivery reports this often
FAIR_IDLE = 0.5  # no new records: fair-price heartbeats and staleness (at most this late)
NO_DOORBELL_SLEEP = 0.0005  # without a doorbell (tests building a worker by hand): poll


@dataclass
class ComputeWorker:
    """The compute + sink child; built by the supervisor before fork."""

    slot: int
    cfg: Config
    registry: Registry
    rings: list[Ring]
    dead_letters: list[BlobRing]
    control: ControlBlock
    streams: StreamBoard | None = None  # per-stream activity for `ctl list` and metrics
    pipe: CommandPipe | None = None  # commands from the supervisor
    metrics: MetricsBoard | None = None  # latency, prices, kernel time for /metrics
    # The supervisor's live subscription set (its book); a forked child sees it as of the fork.
    live: SubscriptionSet | None = None
    spool_dir: Path | None = None  # the Kafka output spool (None: a temporary one)
    ring_prefix: str = ""  # the rings' name prefix: ties a spool position marker to them
    # `fairfeed replay` without a broker: fair prices and anomalies go to this JSON-lines file
    collect: Path | None = None
    doorbell: Doorbell | None = None  # the ingest workers ring it when compute sleeps
    name: str = "compute"

    def main(self) -> int:
        """Child entry point (runs after fork)."""
        enter_child(self.name, self.cfg.daemon.log_level, self.control, self.slot)
        stopping = False
        doorbell = self.doorbell

        def on_term(_sig: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            if doorbell is not None:
                doorbell.ring()  # out of the wait at once

        signal.signal(signal.SIGTERM, on_term)
        counters = SlotCounters(self.control, self.slot)
        sink = output_sink(self.cfg, counters, self.spool_dir, self.collect)
        self._resume(sink)
        pipeline = Pipeline(
            self.cfg,
            self.registry,
            sink,
            self.control,
            counters,
            streams=self.streams,
            metrics=self.metrics,
            live=self.live,
        )
        reader = self.pipe.child_side() if self.pipe is not None else None
        heartbeat = Heartbeat(self.control, self.slot, self.cfg.daemon.heartbeat_interval)
        waiter = RingWaiter(self.rings, doorbell, reader.fd if reader is not None else -1)
        settle_heap()
        self.control.set(self.slot, Slot.READY, 1)
        log.info("reading %d rings, publishing to %s", len(self.rings), self.cfg.kafka.bootstrap)
        batch = self.cfg.ring.read_batch
        buf = np.empty(batch * len(self.rings), dtype=RECORD_DTYPE)
        marker = self.ring_prefix.encode()
        delay = self.cfg.ring.flush_delay_ms / 1000
        fair_every = self.cfg.fair.min_interval
        fair_idle = FAIR_IDLE
        if self.cfg.fair.heartbeat_interval > 0:
            fair_idle = min(fair_idle, self.cfg.fair.heartbeat_interval / 4)
        clock = time.monotonic
        next_fair = next_fair_idle = next_poll = 0.0
        fresh = recent = False  # records since the last fair-price run / the one before
        commands = True
        parts: list[tuple[Ring, int]] = []
        while True:
            started = clock()
            if not heartbeat.beat():
                log.error("supervisor is gone: stopping")
                break
            if commands and reader is not None:
                for cmd in reader.read():
                    pipeline.command(cmd)
            # One pass: what every ring holds, read together, so the kernels, the encoder and
            # the producer each run once over all of it (few, larger Kafka messages).
            got = 0
            full = False
            parts.clear()
            for ring in self.rings:
                k = ring.read_into(buf[got : got + batch], commit=False)
                if k:
                    parts.append((ring, k))
                    got += k
                    full = full or k == batch
            if got:
                pipeline.process(buf[:got], parts)
                fresh = True
            for blobs in self.dead_letters:
                if blobs.used():
                    pipeline.dead_letters(blobs.read())
            # Write the pass's output to the spool, then release the records it came from:
            # a crash now loses nothing that reached a ring (the spool has it, or the ring).
            # Before the periodic work below, which must not hold the ticks back.
            if got:
                sink.commit(marker, np.array([r.cursor for r in self.rings], np.int64))
                for ring, _k in parts:
                    ring.commit()
            now = clock()
            periodic = False
            if now >= next_fair and (fresh or recent or now >= next_fair_idle):
                # Each instrument is throttled to min_interval by the kernel anyway; one more
                # run after the last records emits what that throttle held back.
                pipeline.emit_fair(time.time_ns())
                recent, fresh = fresh, False
                next_fair, next_fair_idle = now + fair_every, now + fair_idle
                periodic = True
            periodic = pipeline.check_anomalies(time.time_ns(), self.rings) or periodic
            if now >= next_poll:
                sink.poll()  # commits what the periodic work produced too
                pipeline.output_events()
                next_poll = now + (SINK_IDLE_POLL if sink.idle() else SINK_BUSY_POLL)
            else:
                if periodic:
                    sink.commit()
                if got or periodic:
                    # New output in flight: its delivery reports (and the spool's release) are
                    # served within SINK_BUSY_POLL, not at an idle sink's next poll (0.5 s).
                    next_poll = min(next_poll, now + SINK_BUSY_POLL)
            if full:
                continue  # behind: no waiting
            if not got and stopping:
                # Stop only once the rings are empty: the supervisor stops the ingest workers
                # first, so nothing more arrives after SIGTERM reached us.
                break
            if got and delay > 0:
                # Records are flowing: passes start at most every flush_delay, so the next
                # pass reads what gathered meanwhile at once (commands still wake us). A pass
                # that took longer goes on at once: it was big enough to pay its overhead.
                left = started + delay - clock()
                commands = waiter.pause(left) if left > 0 else True
                continue
            if got:
                commands = True
                continue
            due = [heartbeat.due_at, next_poll, next_fair if (fresh or recent) else next_fair_idle]
            det = pipeline.anomalies
            if det is not None:
                due.append(now + (det.next_ns - time.time_ns()) / 1e9)
            commands = waiter.sleep(min(due) - clock())
            if delay > 0 and any(r.unread() for r in self.rings):
                # Woken by the first records: give the other rings flush_delay to publish
                # theirs too, so that one pass (one message per group) takes them all.
                commands = waiter.pause(delay) or commands
        for blobs in self.dead_letters:
            pipeline.dead_letters(blobs.read(1 << 30))
        pipeline.emit_fair(time.time_ns(), final=True)
        if self.collect is not None:
            # a replay is often shorter than one evaluation interval: evaluate what it showed
            pipeline.check_anomalies(time.time_ns(), self.rings, force=True)
        sink.commit()
        # Orphaned, the broker may well have died with the supervisor: do not linger.
        flush = min(2.0, self.cfg.kafka.flush_timeout) if heartbeat.orphaned() else None
        sink.close(self.cfg.kafka.flush_timeout if flush is None else flush)
        waiter.close()
        log.info(
            "stopped: %d records in, %d fair prices, %d Kafka messages delivered",
            counters[Slot.RECORDS_IN],
            counters[Slot.FAIR_OUT],
            counters[Slot.KAFKA_DELIVERED],
        )
        return EXIT_OK

    def _resume(self, sink: KafkaSink | CollectSink) -> None:
        """Skip what an earlier compute process of this daemon already spooled: its last
        position marker is ahead of the rings' tails when it died between writing a pass to
        the spool and committing the rings."""
        pos = sink.spool.positions
        if pos is None or pos[0] != self.ring_prefix.encode() or len(pos[1]) != len(self.rings):
            return
        for ring, tail in zip(self.rings, pos[1].tolist(), strict=True):
            if tail > ring.read_count:
                log.warning("%s: %d records already spooled by the previous compute process: "
                            "skipped", ring.name, tail - ring.read_count)  # fmt: skip
                ring.commit(tail)


def output_sink(
    cfg: Config, counters: SlotCounters, spool_dir: Path | None, collect: Path | None = None
) -> KafkaSink | CollectSink:
    """The compute process's sink: its spool, per-topic drop counters, the anomaly reserve;
    or, for a replay without a broker (``collect``), the file of fair prices and anomalies."""
    k = cfg.kafka
    if collect is not None and not k.bootstrap:
        return CollectSink(collect, frozenset({k.fair_topic, k.anomalies_topic}), counters)
    return KafkaSink(
        k,
        counters,
        spool_dir=spool_dir,
        drop_slots={
            k.ticks_topic: Slot.DROPPED_TICKS,
            k.fair_topic: Slot.DROPPED_FAIR,
            k.anomalies_topic: Slot.DROPPED_ANOMALIES,
            k.dead_letter_topic: Slot.DROPPED_DEAD_LETTERS,
            k.derivatives_topic: Slot.DROPPED_DERIVATIVES,
        },
        reserve_topics=frozenset({k.anomalies_topic}),
    )


class Pipeline:
    """Records → state → ticks and fair prices on Kafka; one instance per compute process."""

    def __init__(
        self,
        cfg: Config,
        registry: Registry,
        sink: KafkaSink | CollectSink,
        control: ControlBlock,
        counters: SlotCounters,
        streams: StreamBoard | None = None,
        metrics: MetricsBoard | None = None,
        live: SubscriptionSet | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.sink = sink
        self.control = control
        self.counters = counters
        self.streams = streams
        self.metrics = metrics
        self.encoder = TickEncoder(registry)
        # Sized for the registry's capacity and updated in place as it grows, so the kernels'
        # state never has to be reallocated when an instrument or a venue is added live.
        d = cfg.daemon
        self.source_table = np.full((max(len(cfg.providers), 1), d.max_sources), -1, np.int32)
        self._fill_source_table()
        self.state = FairBook.from_config(
            registry,
            cfg.fair,
            d.max_instruments,
            d.max_sources,
            self.source_table,
            dispute=cfg.anomalies.divergence,
        )
        self.ticks_topic = cfg.kafka.ticks_topic
        self.derivatives = DerivativesPath(
            self.encoder, sink, cfg.kafka.derivatives_topic, metrics, self.source_table
        )
        self.fair_topic = cfg.kafka.fair_topic
        # The live subscription set (the supervisor's book when this process was forked, then
        # kept current by its subscribe / unsubscribe commands).
        self.live = SubscriptionSet(live if live is not None else cfg.streams())
        self.active = np.zeros(d.max_instruments, np.int32)  # live subscriptions per instrument
        for s in self.live:
            self.active[registry.instrument_id(s.instrument)] += 1
        self.anomalies = self._detector() if cfg.anomalies.enabled else None

    def _detector(self) -> AnomalyDetector:
        return AnomalyDetector(
            self.cfg, self.registry, self.cfg.daemon.workers, time.time_ns(), self.live
        )

    def _live_change(self, change: Subscribe | Unsubscribe) -> None:
        now = time.time_ns()
        changed = self.live.apply(change)
        step = 1 if isinstance(change, Subscribe) else -1
        for s in changed:
            self.active[self.registry.instrument_id(s.instrument)] += step
        det = self.anomalies
        if det is None:
            return
        if isinstance(change, Subscribe):
            new = [s for s in changed if not det.enable(s.key, now)]
            if new:
                det.extend(new, now)
                log.info("anomaly detectors now monitor %d more subscriptions", len(new))
        else:
            for s in changed:
                det.disable(s.key)

    def _fill_source_table(self) -> None:
        for sid, (p, v) in enumerate(self.registry.sources):
            self.source_table[p, v] = sid

    def command(self, cmd: Command) -> None:
        """A supervisor command: registry growth, a subscription change, a log level."""
        if isinstance(cmd, GrowRegistry):
            self.registry.extend(cmd.snapshot)
            self._fill_source_table()
            self.state.set_source_venues([v for _p, v in self.registry.sources])
            self.encoder.refresh()
        elif isinstance(cmd, SetLogLevel):
            logging.getLogger().setLevel(cmd.level)
        elif isinstance(cmd, Subscribe | Unsubscribe):
            self._live_change(cmd)
        else:
            log.error("unknown command %r from the supervisor", cmd)

    def process(self, records: np.ndarray, parts: Sequence[tuple[Ring, int]] = ()) -> None:
        """Update the fair-price state and publish the records as ticks. ``parts``: the rings
        they were read from, in order, and how many came from each (for the latency metrics;
        the records of a ring follow each other)."""
        metrics = self.metrics
        if metrics is not None:
            t0 = time.perf_counter_ns()
            wall0 = time.time_ns()  # the batch reaches the kernels
        self.counters.add(Slot.RECORDS_IN, len(records))
        self.state.update(records)
        if self.anomalies is not None:
            self.anomalies.update(records)  # health records included
        if self.streams is not None:
            self.streams.update(records, self.source_table)
        if metrics is not None:
            seen = self._metrics(metrics, records, parts, wall0)
            metrics.batch_done(time.perf_counter_ns() - t0)
        kinds = records["kind"]
        if kinds.max() > MAX_MARKET_KIND:
            # Derivatives data goes to its own topic; health events (gaps, heartbeats,
            # status) feed the detectors. Neither is a tick.
            self.derivatives.process(records)
            records = records[kinds <= MAX_MARKET_KIND]
        msgs = self.encoder.ticks(records)
        hop = None
        if metrics is not None and msgs and len(seen):
            # kernel -> Kafka: until the broker acknowledges the batch's last tick message
            hop = _KafkaHop(metrics, seen, t0)
        self.sink.produce_many(self.ticks_topic, msgs, self.encoder.counts, hop)
        self.counters.add(Slot.RECORDS_OUT, len(records))

    def _metrics(
        self,
        metrics: MetricsBoard,
        records: np.ndarray,
        parts: Sequence[tuple[Ring, int]],
        wall0: int,
    ) -> np.ndarray:
        """The metrics kernel over each ring's part (its publish stamps); the sources seen."""
        if not parts:
            metrics.update(records, self.source_table, wall0, None, 0)
        a = 0
        for ring, k in parts:
            metrics.update(records[a : a + k], self.source_table, wall0, ring, ring.cursor - k)
            a += k
        return metrics.take_seen()

    def check_anomalies(self, now_ns: int, rings: list[Ring], force: bool = False) -> bool:
        """Evaluate the anomaly detectors when due (or ``force``) and publish their events;
        whether it evaluated."""
        det = self.anomalies
        if det is None or not (force or det.due(now_ns)):
            return False
        dropped = np.array([r.dropped for r in rings], np.int64)
        topic = self.cfg.kafka.anomalies_topic
        ev_i, ev_f = det.evaluate(now_ns, self.control.fair_price, dropped)
        for key, value in encode_anomalies(ev_i, ev_f, self.registry):
            self.sink.produce(topic, key, value)
        if self.metrics is not None:
            n_providers = len(self.registry.providers)
            for kind, provider, phase in ev_i[:, [E_KIND, E_PROVIDER, E_PHASE]].tolist():
                provider = provider if 0 <= provider < n_providers else -1
                self.metrics.anomaly_event(kind, provider, phase == PHASE_START)
        self.counters.set(Slot.ANOMALIES_OPEN, det.open_count())
        self.counters.set(Slot.ANOMALIES_TOTAL, det.total)
        return True

    def output_events(self) -> None:
        """Announce the output spool's overflow episodes on the anomalies topic."""
        events = self.sink.overflow_events()
        if events:
            topic = self.cfg.kafka.anomalies_topic
            for key, value in encode_output_overflows(events):
                self.sink.produce(topic, key, value)

    def dead_letters(self, blobs: list[bytes]) -> None:
        """Publish malformed provider messages (``provider NUL value``) keyed by provider."""
        topic = self.cfg.kafka.dead_letter_topic
        for blob in blobs:
            key, _, value = blob.partition(b"\0")
            self.sink.produce(topic, key, value)

    def emit_fair(self, now_ns: int, final: bool = False) -> None:
        """Publish the fair prices that are due (all pending ones when ``final``)."""
        out = self.state.compute(now_ns, final)
        if not len(out.instrument):
            return
        live = self.active[out.instrument.astype(np.intp)] > 0
        if not live.all():  # instruments nobody subscribes to any more: no fair price
            out = type(out)(*(a[live] for a in out))
            if not len(out.instrument):
                return
        for key, value in self.encoder.fair(
            out.instrument,
            out.price,
            out.sources,
            out.oldest_age_ns,
            now_ns,
            self.state.method,
            venues=out.venues,
            dispersion=out.dispersion,
            status=out.status,
            reasons=out.reasons,
            marks=out.marks if self.state.mark_inputs else None,  # no `marks` field when off
            mark_reasons=out.mark_reasons,
        ):
            self.sink.produce(self.fair_topic, key, value)
        board = out.instrument.astype(np.intp)
        self.control.fair_price[board] = out.price
        self.control.fair_ts[board] = now_ns
        self.control.fair_sources[board] = out.sources
        self.counters.add(Slot.FAIR_OUT, len(out.instrument))
