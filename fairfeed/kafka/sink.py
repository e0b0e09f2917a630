"""The compute process's one Kafka producer: a thin wrapper over confluent-kafka.

Modelled on Quix Streams' producer wrapper: the librdkafka client is created lazily (the compute
process builds the sink after fork, and nothing touches librdkafka before the first produce or
:meth:`KafkaSink.start`), its configuration is a copy built once and never mutated, client errors
are classified in one error callback, and the backpressure policy is explicit:

- ``produce`` on a full local queue (``BufferError``) serves callbacks with a short ``poll`` and
  retries, counting ``KAFKA_RETRIES``, for at most ``buffer_full_timeout_ms``; past that bound the
  message is dropped, counted in ``KAFKA_DROPPED`` and logged (rate-limited).
- After such a drop the sink is *saturated*: further produces try once (after a ``poll(0)``) and
  drop at once if the queue is still full, so a dead broker costs one bounded wait, not one per
  message. The first produce that fits clears the state.
- Every delivery report is counted: ``KAFKA_DELIVERED`` or ``KAFKA_ERRORS`` (errors logged with
  the topic and the error at a bounded rate, with a count of suppressed lines). Messages purged at
  close are counted in ``KAFKA_DROPPED``.

Delivery counts are accumulated in the callback and pushed to the :class:`Counters` once per
``poll``/``produce``/``flush``, not once per message.

Note (FIELD-NOTES): after a broker restart an idempotent producer can stall forever without a
fatal error; :meth:`KafkaSink.stalled` reports it so the owner can recreate the sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fairfeed.core.config import KafkaConfig
from fairfeed.core.counters import Counters, Slot

log = logging.getLogger("fairfeed.sink")

RETRY_POLL = 0.005  # seconds per poll while waiting for room in a full local queue
LOG_INTERVAL = 5.0  # seconds between two log lines of one kind (others are counted)

_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_UNREACHABLE = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
    }
)


class KafkaSinkError(RuntimeError):
    """The sink cannot be used (bad configuration, or a fatal producer error)."""


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
    """librdkafka configuration for ``cfg`` (a new dict; ``extra`` entries override)."""
    if not cfg.bootstrap:
        raise KafkaSinkError("kafka.bootstrap is empty: start a local broker or set it")
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap,
        "client.id": cfg.client_id,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "lz4",
        "linger.ms": cfg.linger_ms,
        "queue.buffering.max.messages": cfg.queue_max_messages,
    }
    if extra:
        conf.update(extra)
    return conf


class KafkaSink:
    """One confluent-kafka ``Producer`` with counted delivery and a bounded full-queue policy.

    ``extra`` is passed through to librdkafka (tests use it for e.g. ``message.timeout.ms``);
    it overrides the defaults above.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        counters: Counters,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.counters = counters
        self._config = producer_config(cfg, extra)  # validated now, used at first produce
        self._producer: Producer | None = None
        self._buffer_timeout = max(0.0, cfg.buffer_full_timeout_ms / 1000.0)
        self._saturated = False
        self._log = _RateLimitedLog()
        # accumulated in callbacks, pushed to counters by _push()
        self._delivered = 0
        self._errors = 0
        self._dropped = 0
        self._retries = 0
        # Messages produced and not yet reported. Not len(producer): librdkafka counts its
        # queued error events there too (e.g. "brokers down" while nothing is waiting).
        self._awaiting = 0
        self.last_delivery = time.monotonic()  # last successful delivery (or start)
        self.fatal_error: KafkaError | None = None
        self.client_errors = 0  # error_cb calls

    # -- client ------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """A copy of the librdkafka configuration (callbacks excluded)."""
        return dict(self._config)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            if self.fatal_error is not None:
                raise KafkaSinkError(f"producer failed fatally: {self.fatal_error}")
            conf = dict(self._config)
            conf["error_cb"] = self._on_error
            conf["on_delivery"] = self._on_delivery
            try:
                self._producer = Producer(conf)
            except KafkaException as exc:
                raise KafkaSinkError(f"cannot create Kafka producer: {exc.args[0]}") from exc
            self.last_delivery = time.monotonic()
            self._awaiting = 0
        return self._producer

    def start(self) -> KafkaSink:
        """Create the client now (otherwise the first produce does)."""
        _ = self.producer
        return self

    def __len__(self) -> int:
        """Messages waiting in librdkafka (queued or in flight)."""
        return len(self._producer) if self._producer is not None else 0

    # -- callbacks (run inside poll/flush, on this thread) -----------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self._awaiting -= 1
        if err is None:
            self._delivered += 1
            return
        if err.code() in _PURGED:
            self._dropped += 1
            self._log("purged", logging.WARNING, "kafka: message to %s purged unsent", msg.topic())
            return
        self._errors += 1
        self._log(
            "delivery:" + (msg.topic() or ""),
            logging.ERROR,
            "kafka: delivery to topic %s failed: %s",
            msg.topic(),
            err,
        )

    def _chained(self, callback: Any) -> Any:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._on_delivery(err, msg)
            callback(err, msg)

        return on_delivery

    def _on_error(self, err: KafkaError) -> None:
        self.client_errors += 1
        if err.fatal():
            self.fatal_error = err
            log.critical("kafka: fatal producer error, the sink must be recreated: %s", err)
        elif err.code() in _UNREACHABLE:
            self._log("unreachable", logging.WARNING, "kafka: broker unreachable: %s", err)
        else:
            self._log(f"client:{err.code()}", logging.ERROR, "kafka: client error: %s", err)

    def _push(self) -> None:
        c = self.counters
        if self._delivered:
            c.add(Slot.KAFKA_DELIVERED, self._delivered)
            self.last_delivery = time.monotonic()
            self._delivered = 0
        if self._errors:
            c.add(Slot.KAFKA_ERRORS, self._errors)
            self._errors = 0
        if self._dropped:
            c.add(Slot.KAFKA_DROPPED, self._dropped)
            self._dropped = 0
        if self._retries:
            c.add(Slot.KAFKA_RETRIES, self._retries)
            self._retries = 0

    # -- producing ---------------------------------------------------------------------------
    def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Any = None) -> bool:
        """Queue one message. False if it was dropped (full queue past the bound, or rejected);
        every drop is counted and logged. ``on_delivery(err, msg)``, if given, is called after
        the sink's own accounting when this message's delivery report is served."""
        p = self.producer
        kw = {} if on_delivery is None else {"on_delivery": self._chained(on_delivery)}
        deadline: float | None = None  # set by the first full queue
        try:
            while True:
                try:
                    p.produce(topic, value, key, **kw)
                except BufferError:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + (0.0 if self._saturated else self._buffer_timeout)
                    elif now >= deadline:
                        break
                    self._retries += 1
                    p.poll(min(RETRY_POLL, max(0.0, deadline - now)))
                    continue
                except KafkaException as exc:
                    return self._rejected(topic, exc)
                self._awaiting += 1
                self._saturated = False
                return True
            self._saturated = True
            self._dropped += 1
            self._log(
                "dropped:" + topic,
                logging.ERROR,
                "kafka: local queue full (%d messages) for %.0f ms: message to %s dropped",
                len(p),
                self._buffer_timeout * 1000,
                topic,
            )
            return False
        finally:
            if deadline is not None:  # the queue was full: publish the retry counts now
                self._push()

    def _rejected(self, topic: str, exc: KafkaException) -> bool:
        self._errors += 1
        self._log(
            "rejected:" + topic,
            logging.ERROR,
            "kafka: produce to %s rejected: %s",
            topic,
            exc.args[0],
        )
        self._push()
        return False

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery/error callbacks (non-blocking by default) and update the counters;
        call once per loop pass. Returns the number of events served."""
        if self._producer is None:
            self.counters.set(Slot.KAFKA_QUEUE, 0)
            return 0
        try:
            n = self._producer.poll(timeout)
        except KafkaException as exc:
            # A fatal producer error (e.g. UNKNOWN_PRODUCER_ID after the broker lost its state)
            # surfaces here once; the owner sees it through stalled() and recreates the sink.
            err = exc.args[0]
            if not err.fatal():
                raise
            self.fatal_error = err
            log.critical("kafka: fatal producer error, the sink must be recreated: %s", err)
            n = 0
        self._push()
        self.counters.set(Slot.KAFKA_QUEUE, len(self._producer))
        return n

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (default ``cfg.flush_timeout``) for every queued
        message to be delivered; returns how many are still waiting."""
        if self._producer is None:
            return 0
        remaining = self._producer.flush(self.cfg.flush_timeout if timeout is None else timeout)
        self._push()
        self.counters.set(Slot.KAFKA_QUEUE, remaining)
        return remaining

    def stalled(self, after: float) -> bool:
        """True when messages are waiting but nothing was delivered for ``after`` seconds, or the
        producer failed fatally: the owner should close and recreate the sink."""
        if self.fatal_error is not None:
            return True
        return self._awaiting > 0 and time.monotonic() - self.last_delivery > after

    def close(self, timeout: float | None = None) -> int:
        """Flush (bounded), purge what is left (counted as dropped) and release the client.
        Idempotent. Returns how many messages were given up."""
        p = self._producer
        if p is None:
            return 0
        remaining = self.flush(timeout)
        if remaining:
            log.warning("kafka: %d messages undelivered at close, purging them", remaining)
            p.purge(in_queue=True, in_flight=True, blocking=True)
            p.poll(0)  # purged messages' reports: counted in _dropped
            lost = len(p)  # reports not served yet, if any
            self._dropped += lost
        self._push()
        self._producer = None
        p.close()
        self.counters.set(Slot.KAFKA_QUEUE, 0)
        return remaining

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
