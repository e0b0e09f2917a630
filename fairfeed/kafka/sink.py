"""The compute process's Kafka output: a spool on disk in front of one confluent-kafka producer.

Every message goes through the spool (:mod:`fairfeed.kafka.spool`) first:

- :meth:`KafkaSink.produce` appends a message to the spool's pass buffer; :meth:`KafkaSink.commit`
  (once per pass, before the caller commits its ring read positions) writes the pass to disk and
  hands what it can to the producer. A message reaches librdkafka only once it is on disk.
- A delivery report acknowledges the message in the spool. The producer holds at most
  ``queue_max_messages`` unacknowledged messages; the rest wait in the spool and are read back in
  order as room appears. So a broker that is down, hung or slow costs disk, never data: output
  for a key is sent in the order it was produced, older before newer.
- When the producer cannot recover by itself — a fatal error (an idempotent producer meeting a
  broker that lost its state: UNKNOWN_PRODUCER_ID), nothing delivered for ``stall_timeout``
  with messages waiting (the same broker restart can hang it forever, FIELD-NOTES), or a
  delivery error — the sink purges it, creates a new one after a capped, jittered backoff, checks
  the topics (recreating missing ones when ``create_topics``; otherwise it names the missing
  topic and keeps spooling) and resends every unacknowledged message from the spool. Messages
  that were in flight at the purge may already be in Kafka: they are counted as resent
  (``Slot.SPOOL_RESENT``), the only duplicates this path can make.
- Only when the spool is full (``spool_max_bytes``) is output dropped: counted in records per
  topic (``Slot.DROPPED_*``), logged with how much and since when, and reported as an
  ``output_overflow`` episode (:meth:`KafkaSink.overflow_events`; the anomaly events themselves
  may use a small reserve beyond the bound so the announcement is not lost too).
- :attr:`KafkaSink.state` (``Slot.OUTPUT_STATE``, since ``Slot.OUTPUT_SINCE``) says whether
  output is being delivered; ``/readyz`` reports it.

The librdkafka client is created lazily (after fork) from a configuration built once.
"""

from __future__ import annotations

import enum
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fairfeed.core.backoff import Backoff
from fairfeed.core.config import KafkaConfig
from fairfeed.core.counters import Counters, Slot
from fairfeed.kafka.client import KafkaClientError, client_config, scrub
from fairfeed.kafka.spool import Spool
from fairfeed.kafka.topics import TopicCheck, TopicGuard

log = logging.getLogger("fairfeed.sink")

LOG_INTERVAL = 5.0  # seconds between two log lines of one kind (others are counted)
BLOCKED_AFTER = 2.0  # seconds without a delivery while messages wait: output is blocked
ROOM_AGAIN = 0.75  # an overflow episode ends once the spool is back under this share of its bound
REJOIN_GRACE = 3.0  # seconds a producer has to deliver once its broker answers again
CATCH_UP_BATCH = 5000  # messages read back from the spool per pass
TOPIC_RETRY = (0.5, 10.0)  # backoff base and cap between two topic checks that failed
RECOVER_BACKOFF = (0.2, 5.0)  # backoff base and cap between two producer replacements

_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
# Delivery errors that no resend can cure: the message is given up (counted as dropped).
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError._INVALID_ARG,
    }
)
_UNREACHABLE = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
    }
)


class KafkaSinkError(RuntimeError):
    """The sink cannot be used (bad configuration)."""


class OutputState(enum.IntEnum):
    """Whether output reaches Kafka (``Slot.OUTPUT_STATE``)."""

    OK = 0
    BLOCKED = 1  # messages wait, nothing delivered for BLOCKED_AFTER (broker down or hung)
    RECOVERING = 2  # the producer was replaced; waiting for the broker and the topic check
    TOPIC_MISSING = 3  # a topic is missing and create_topics is off
    SPOOL_FULL = 4  # output is being dropped


STATE_TEXT = {
    OutputState.OK: "delivering",
    OutputState.BLOCKED: "broker not acknowledging",
    OutputState.RECOVERING: "reconnecting to the broker",
    OutputState.TOPIC_MISSING: "topic missing",
    OutputState.SPOOL_FULL: "spool full, output dropped",
}


class _RateLimitedLog:
    """At most one line per ``interval`` per kind; suppressed lines are counted and reported."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._suppressed.pop(kind, 0)
        if skipped:
            msg += " (%d similar suppressed)"
            args = (*args, skipped)
        log.log(level, msg, *args)


def producer_config(cfg: KafkaConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka configuration for ``cfg``: :func:`~fairfeed.kafka.client.client_config` and
    the producer's guarantees (a new dict; ``extra`` entries override)."""
    try:
        conf = client_config(cfg, "producer")
    except KafkaClientError as exc:
        raise KafkaSinkError(str(exc)) from None
    conf |= {
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": cfg.linger_ms,
        "queue.buffering.max.messages": cfg.queue_max_messages,
        # Retry forever: the sink, not a timeout, decides when a producer is beyond repair, and
        # a timed-out message would have to be resent out of order.
        "message.timeout.ms": 0,
        # Topics are created by the sink's topic check with the configured partitions, never
        # by a metadata request with the broker's defaults.
        "allow.auto.create.topics": False,
    }
    if extra:
        conf.update(extra)
    return conf


class _Overflow:
    """One topic's ongoing output-overflow episode."""

    __slots__ = ("announced", "messages", "records", "start_ns")

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.records = 0
        self.messages = 0
        self.announced = False


class KafkaSink:
    """A spool and one confluent-kafka ``Producer`` (see the module docstring).

    ``spool_dir`` is where the spool lives (None: a temporary directory removed at close, for
    tests and benchmarks); ``cfg.spool_max_bytes`` bounds it. ``extra`` is passed through to
    librdkafka and overrides the defaults. ``drop_slots`` maps a topic to the counter of
    records dropped for it (others count in ``Slot.DROPPED_OTHER``); ``reserve_topics`` may use
    the spool's reserve.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        counters: Counters,
        extra: Mapping[str, Any] | None = None,
        spool_dir: str | Path | None = None,
        drop_slots: Mapping[str, Slot] | None = None,
        reserve_topics: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.counters = counters
        self._config = producer_config(cfg, extra)  # validated now, used at first produce
        self._tmp = spool_dir is None
        path = Path(tempfile.mkdtemp(prefix="fairfeed-spool-")) if spool_dir is None else spool_dir
        self.spool = Spool(path, cfg.spool_max_bytes)
        self._clock = clock
        rng = rng if rng is not None else random.Random()
        self._recover_backoff = Backoff(*RECOVER_BACKOFF, rng=rng)
        self._topic_backoff = Backoff(*TOPIC_RETRY, rng=rng)
        self.drop_slots = dict(drop_slots or {})
        self.reserve_topics = reserve_topics
        self._producer: Producer | None = None
        self._log = _RateLimitedLog()
        # this pass's messages: (seq, topic, key, value, records, on_delivery)
        self._fresh: list[tuple[int, str, bytes | None, bytes, int, Any]] = []
        self._send = self.spool.low  # next sequence number to hand to the producer
        self._inflight = 0  # handed to the producer, report not served yet
        self._full = False  # the producer's queue refused a message: wait for reports
        self._delivered = self._errors = self._dropped = self._resent = self._retries = 0
        now = clock()
        self.last_delivery = now
        self._waiting_since: float | None = None  # since when messages wait (None: none do)
        self.fatal_error: KafkaError | None = None
        self.client_errors = 0
        self._broken = ""  # why the producer must be replaced ("" = it is fine)
        # The broker was unreachable: once a probe reaches it again, the producer has
        # REJOIN_GRACE to deliver (a broker restarted without its data hangs an idempotent one).
        self._unreachable = False
        self._back_at: float | None = None
        self._next_recover = 0.0
        self._topics: set[str] = set()  # topics seen in produce()
        self._verified: set[str] = set()  # topics the last check found
        self._missing: tuple[str, ...] = ()
        self._topic_error = ""
        self._next_topic_check = 0.0
        self.guard = TopicGuard(cfg)
        self.state = OutputState.OK
        self.state_since_ns = 0
        self._delivering_once = False  # the first start is no recovery worth a log line
        self.overflows: dict[str, _Overflow] = {}
        self._overflow_ended: list[tuple[str, _Overflow, int]] = []
        self.resent_at_open = self.spool.recovered
        if self.spool.recovered:
            log.warning(
                "kafka: %d messages (%d bytes) left in the spool %s by an earlier run are sent "
                "first; those delivered just before it stopped may reach Kafka twice",
                self.spool.recovered,
                self.spool.bytes,
                self.spool.dir,
            )
            self._resent += self.spool.recovered

    # -- client ------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """A copy of the librdkafka configuration (callbacks excluded)."""
        return dict(self._config)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            conf = dict(self._config)
            conf["error_cb"] = self._on_error
            try:
                self._producer = Producer(conf)
            except KafkaException as exc:
                raise KafkaSinkError(
                    f"cannot create Kafka producer: {scrub(str(exc.args[0]), conf)}"
                ) from None
            self.last_delivery = self._clock()
            self._inflight = 0
            self._full = False
        return self._producer

    def start(self) -> KafkaSink:
        """Create the client now and check the topics (otherwise the first pass does)."""
        _ = self.producer
        return self

    def idle(self) -> bool:
        """Nothing in flight or waiting, nothing broken: :meth:`poll` has nothing to serve
        and may wait (its caller still calls it now and then, for the topic checks)."""
        return not (
            self._inflight or self.spool.pending or self._fresh or self._broken or self.overflows
        )

    def __len__(self) -> int:
        """Messages handed to the producer and not yet reported."""
        return self._inflight

    # -- callbacks (run inside poll/flush, on this thread) -----------------------------------
    def _on_delivery(
        self, seq: int, records: int, callback: Any, err: KafkaError | None, msg: Message
    ) -> None:
        self._inflight -= 1
        if err is None:
            self.spool.ack(seq)
            self._delivered += 1
            if callback is not None:
                callback(err, msg)
            return
        code = err.code()
        if code in _PURGED:  # our own purge: resent from the spool
            if code == KafkaError._PURGE_INFLIGHT:
                self._resent += 1
            return
        if code in _PERMANENT:
            self.spool.ack(seq)  # no resend can cure it: given up, counted
            self._dropped += 1
            self._count_drop(msg.topic() or "", records)
            self._log("permanent:" + (msg.topic() or ""), logging.ERROR,
                      "kafka: message to %s rejected by the broker, dropped: %s",
                      msg.topic(), err)  # fmt: skip
            return
        self._errors += 1
        self._log("delivery:" + (msg.topic() or ""), logging.ERROR,
                  "kafka: delivery to topic %s failed: %s (resent from the spool)",
                  msg.topic(), err)  # fmt: skip
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            self._verified.discard(msg.topic() or "")
        self._break(f"delivery failed ({err.name()})")

    def _on_error(self, err: KafkaError) -> None:
        self.client_errors += 1
        if err.fatal():
            self.fatal_error = err
            self._break(f"failed fatally ({err})")
        elif err.code() in _UNREACHABLE:
            self._unreachable = True
            self._log("unreachable", logging.WARNING, "kafka: broker unreachable: %s", err)
        else:
            self._log(f"client:{err.code()}", logging.ERROR, "kafka: client error: %s", err)

    def _break(self, why: str) -> None:
        if not self._broken:
            self._broken = why

    def _push(self) -> None:
        c = self.counters
        if self._delivered:
            c.add(Slot.KAFKA_DELIVERED, self._delivered)
            self.last_delivery = self._clock()
            self._recover_backoff.reset()
            self._delivered = 0
        if self._errors:
            c.add(Slot.KAFKA_ERRORS, self._errors)
            self._errors = 0
        if self._dropped:
            c.add(Slot.KAFKA_DROPPED, self._dropped)
            self._dropped = 0
        if self._resent:
            c.add(Slot.SPOOL_RESENT, self._resent)
            self._resent = 0
        if self._retries:
            c.add(Slot.KAFKA_RETRIES, self._retries)
            self._retries = 0
        c.set(Slot.KAFKA_QUEUE, self._inflight)
        c.set(Slot.SPOOL_BYTES, self.spool.waiting_bytes)
        c.set(Slot.SPOOL_MESSAGES, self.spool.pending)
        c.set(Slot.OUTPUT_STATE, int(self.state))
        c.set(Slot.OUTPUT_SINCE, self.state_since_ns)

    # -- producing ---------------------------------------------------------------------------
    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: Any = None,
        records: int = 1,
    ) -> bool:
        """Spool one message carrying ``records`` records (sent at the next :meth:`commit`).
        False when the spool is full: the message is dropped and counted. ``on_delivery(err,
        msg)``, if given, is called when the broker acknowledges it (first send only)."""
        return self.produce_many(topic, [(key, value)], (records,), on_delivery)

    def produce_many(
        self,
        topic: str,
        messages: Sequence[tuple[bytes | None, bytes]],
        records: Sequence[int],
        on_last_delivery: Any = None,
    ) -> bool:
        """:meth:`produce` for several messages of one topic, in order, at once (one spool
        append: a pass's ticks cost one bounds check, not one per message); ``records[i]`` is
        what message ``i`` carries; ``on_last_delivery`` is the last message's ``on_delivery``.
        False when some did not fit in the spool (those are dropped and counted)."""
        if not messages:
            return True
        reserve = topic in self.reserve_topics
        seq = self.spool.append_many(topic, messages, records, reserve=reserve)
        if seq < 0:
            if len(messages) == 1:
                self._overflow(topic, records[0])
                return False
            # not all fit: one by one, so those that do are kept
            last = len(messages) - 1
            ok = [
                self.produce_many(
                    topic, [m], (records[i],), on_last_delivery if i == last else None
                )
                for i, m in enumerate(messages)
            ]
            return all(ok)
        self._topics.add(topic)
        fresh = self._fresh
        for (key, value), n in zip(messages, records, strict=True):
            fresh.append((seq, topic, key, value, n, None))
            seq += 1
        if on_last_delivery is not None:
            fresh[-1] = (*fresh[-1][:5], on_last_delivery)
        return True

    def _overflow(self, topic: str, records: int) -> None:
        self._dropped += 1
        self._count_drop(topic, records)
        ov = self.overflows.get(topic)
        if ov is None:
            ov = self.overflows[topic] = _Overflow(time.time_ns())
            self._set_state(OutputState.SPOOL_FULL)
        ov.records += records
        ov.messages += 1
        self._log("overflow:" + topic, logging.ERROR,
                  "kafka: spool full (%d of %d bytes): %d records (%d messages) to %s dropped "
                  "since %s", self.spool.bytes, self.spool.max_bytes, ov.records, ov.messages,
                  topic, time.strftime("%H:%M:%S", time.localtime(ov.start_ns / 1e9)))  # fmt: skip

    def _count_drop(self, topic: str, records: int) -> None:
        self.counters.add(self.drop_slots.get(topic, Slot.DROPPED_OTHER), records)

    def overflow_events(self) -> list[tuple[str, str, int, int, int, int]]:
        """Overflow episodes to announce, once each: ``(topic, phase, start_ns, end_ns,
        records, messages)`` with phase ``start`` (end 0) or ``end``."""
        out = []
        for topic, ov in self.overflows.items():
            if not ov.announced:
                ov.announced = True
                out.append((topic, "start", ov.start_ns, 0, ov.records, ov.messages))
        for topic, ov, end in self._overflow_ended:
            if not ov.announced:
                out.append((topic, "start", ov.start_ns, 0, ov.records, ov.messages))
            out.append((topic, "end", ov.start_ns, end, ov.records, ov.messages))
        self._overflow_ended.clear()
        return out

    def commit(self, prefix: bytes = b"", tails: Any = None) -> None:
        """End of a pass: write the spooled messages (and, with ``tails``, the caller's read
        positions) to disk, then hand what the producer can take to it."""
        if tails is not None and self._fresh:
            self.spool.mark(prefix, tails)
        self.spool.write()
        self._pump()

    def _sendable(self) -> bool:
        return (
            not self._broken
            and not self._full
            and not self.guard.busy
            and not self._missing
            and not self._topic_error
            and self._topics <= self._verified
        )

    def _pump(self) -> None:
        fresh, self._fresh = self._fresh, []
        if not self._sendable():
            if self._topics - self._verified:
                self._check_topics()
            return
        window = self.cfg.queue_max_messages
        # Messages of this pass are sent from memory once everything before them was sent.
        if fresh and fresh[0][0] == self._send:
            for i, (seq, topic, key, value, records, cb) in enumerate(fresh):
                if self._inflight >= window or not self._hand(seq, topic, key, value, records, cb):
                    return
                if i == len(fresh) - 1:
                    return
        while self._send < self.spool.next and self._inflight < window and self._sendable():
            entries = self.spool.read(self._send, min(CATCH_UP_BATCH, window - self._inflight))
            if not entries:
                self._send = self.spool.next
                return
            for e in entries:
                if not self._hand(e.seq, e.topic, e.key, e.value, e.records, None):
                    return
            if len(entries) < CATCH_UP_BATCH:
                return

    def _hand(
        self, seq: int, topic: str, key: bytes | None, value: bytes, records: int, cb: Any
    ) -> bool:
        """Give one message to the producer; False when it cannot take more now."""
        try:
            report = partial(self._on_delivery, seq, records, cb)
            self.producer.produce(topic, value, key, on_delivery=report)
        except BufferError:
            self._full = True  # it stays in the spool and is handed over again later
            self._retries += 1
            return False
        except KafkaException as exc:
            # Rejected before sending (e.g. larger than message.max.bytes): no resend can help.
            self.spool.ack(seq)
            self._errors += 1
            self._dropped += 1
            self._count_drop(topic, records)
            self._log("rejected:" + topic, logging.ERROR, "kafka: produce to %s rejected: %s",
                      topic, exc.args[0])  # fmt: skip
            self._send = seq + 1
            return True
        self._inflight += 1
        self._send = seq + 1
        return True

    # -- the loop ----------------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports, resend what waits in the spool, replace a broken producer,
        update the counters; call once per loop pass. Returns the reports served."""
        self.commit()
        n = 0
        if self._producer is not None:
            try:
                n = self._producer.poll(timeout)
            except KafkaException as exc:
                err = exc.args[0]
                if not err.fatal():
                    raise
                self.fatal_error = err
                self._break(f"failed fatally ({err})")
            self._full = self._full and self._inflight >= self.cfg.queue_max_messages // 2
        self.spool.advance()
        now = self._clock()
        if not self.spool.pending:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if not self._broken and self._inflight > 0 and self._silent(now) > self.cfg.stall_timeout:
            self._break(f"delivered nothing for {self.cfg.stall_timeout:.0f}s")
        if not self._broken and self._inflight > 0 and self._silent(now) > BLOCKED_AFTER:
            if self._unreachable and not self.guard.busy and now >= self._next_topic_check:
                self._check_topics()  # a probe: is the broker back?
            elif self._back_at is not None and now - max(self._back_at, self.last_delivery) > (
                REJOIN_GRACE
            ):
                self._break(f"delivered nothing for {REJOIN_GRACE:.0f}s after the broker came back")
        elif self._inflight == 0 or self._silent(now) == 0.0:
            self._back_at = None
        if self._broken and now >= self._next_recover:
            self._recover(now)
        check = self.guard.result()
        if check is not None:
            if self._unreachable and not check.error:
                self._unreachable, self._back_at = False, now
            self._topics_checked(check, now)
        elif (self._missing or self._topic_error) and now >= self._next_topic_check:
            self._check_topics()
        self._pump()
        if self.overflows and self.spool.bytes <= self.spool.max_bytes * ROOM_AGAIN:
            self._end_overflows()
        self._update_state(now)
        self._push()
        return n

    def _end_overflows(self) -> None:
        """The spool has room again: the overflow episodes end (also with no new output)."""
        end = time.time_ns()
        for topic, ov in self.overflows.items():
            self._overflow_ended.append((topic, ov, end))
            log.warning("kafka: the spool has room again; %d records (%d messages) to %s were "
                        "dropped", ov.records, ov.messages, topic)  # fmt: skip
        self.overflows.clear()

    def _recover(self, now: float) -> None:
        p = self._producer
        log.error("kafka: the producer %s with %d messages in flight and %d waiting in the "
                  "spool: replacing it and resending from the spool", self._broken,
                  self._inflight, self.spool.pending - self._inflight)  # fmt: skip
        if p is not None:
            p.purge(in_queue=True, in_flight=True, blocking=False)
            p.flush(0)  # serves the purge reports: counted as resent when they were in flight
            self._producer = None
        self._inflight = 0
        self._full = False
        self._send = self.spool.low
        self._broken = ""
        self.fatal_error = None
        self._unreachable, self._back_at = False, None
        self._verified.clear()
        self._next_recover = now + self._recover_backoff.next_delay()
        self._set_state(OutputState.RECOVERING)
        self._check_topics()

    def _check_topics(self) -> None:
        if not self.guard.busy:
            self.guard.request(self._topics)

    def _topics_checked(self, check: TopicCheck, now: float) -> None:
        if check.created:
            log.warning("kafka: created missing topics %s (%d partitions)",
                        ", ".join(check.created), self.cfg.topic_partitions)  # fmt: skip
        if check.ok:
            self._verified |= self._topics
            self._missing, self._topic_error = (), ""
            self._topic_backoff.reset()
            return
        self._missing, self._topic_error = check.missing, check.error
        self._next_topic_check = now + self._topic_backoff.next_delay()
        if check.error:
            self._log("topics", logging.ERROR, "kafka: cannot check the topics: %s; output "
                      "is kept in the spool (%d messages)", check.error,
                      self.spool.pending)  # fmt: skip
        else:
            self._log("topics", logging.ERROR,
                      "kafka: topic(s) %s missing on %s and kafka.create_topics is false: "
                      "output is kept in the spool (%d messages, %d bytes) until they exist",
                      ", ".join(check.missing), self.cfg.bootstrap, self.spool.pending,
                      self.spool.bytes)  # fmt: skip

    def _update_state(self, now: float) -> None:
        if self.overflows:
            state = OutputState.SPOOL_FULL
        elif self._missing and not self._topic_error:
            state = OutputState.TOPIC_MISSING
        elif self._broken or self._topic_error or (self._topics - self._verified):
            state = OutputState.RECOVERING
        elif self._silent(now) > BLOCKED_AFTER:
            state = OutputState.BLOCKED
        else:
            state = OutputState.OK
        self._set_state(state)

    def _silent(self, now: float) -> float:
        """Seconds without a delivery while messages wait (0 when nothing waits)."""
        if self._waiting_since is None:
            return 0.0
        return now - max(self.last_delivery, self._waiting_since)

    def _set_state(self, state: OutputState) -> None:
        if state == self.state:
            return
        if state == OutputState.OK:
            if self._delivering_once:
                took = (time.time_ns() - self.state_since_ns) / 1e9
                log.info("kafka: delivering again (%s; %.1fs after the problem began)",
                         STATE_TEXT[self.state], took)  # fmt: skip
            self.state_since_ns = 0
        elif self.state == OutputState.OK:
            self.state_since_ns = time.time_ns()  # kept while the problem changes shape
        if state == OutputState.OK:
            self._delivering_once = True
        self.state = state

    def flush(self, timeout: float | None = None) -> int:
        """Send and wait up to ``timeout`` seconds (default ``cfg.flush_timeout``) until every
        spooled message is acknowledged; returns how many are still waiting."""
        end = self._clock() + (self.cfg.flush_timeout if timeout is None else timeout)
        while True:
            self.poll(0.0 if self._inflight == 0 else min(0.05, max(0.0, end - self._clock())))
            if not self.spool.pending or self._clock() >= end:
                break
            if self._inflight == 0:
                time.sleep(0.01)  # a producer replacement or topic check is under way
        return self.spool.pending

    def close(self, timeout: float | None = None) -> int:
        """Flush (bounded), then release the client; what is not delivered stays in the spool
        for the next start (a temporary spool is removed: counted as dropped). Idempotent.
        Returns how many messages were left undelivered."""
        if self.spool is None:
            return 0
        remaining = self.flush(timeout) if (self._producer is not None or self.spool.pending) else 0
        p, self._producer = self._producer, None
        if p is not None:
            p.purge(in_queue=True, in_flight=True, blocking=False)
            p.poll(0)
            p.flush(0)
        self.guard.close()
        if remaining:
            if self._tmp:
                log.error("kafka: %d messages undelivered at close: dropped", remaining)
                self._dropped += remaining
            else:
                log.warning("kafka: %d messages undelivered at close: kept in the spool %s for "
                            "the next start", remaining, self.spool.dir)  # fmt: skip
        self._inflight = 0
        self._push()
        self.counters.set(Slot.KAFKA_QUEUE, 0)
        self.spool.close()
        if self._tmp:
            shutil.rmtree(self.spool.dir, ignore_errors=True)
        self.spool = None  # type: ignore[assignment]
        return remaining

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
