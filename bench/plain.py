"""The broker's own latency floor: a plain producer at a fixed message rate, and a consumer that
sees what is produced.

- :func:`run_plain` runs a plain confluent-kafka producer in a spawned process of its own (so its
  GIL and its CPU are not the harness's): ``rate`` messages/s of ``size`` bytes for ``seconds``,
  written every millisecond as they come due, keys cycling over 8 instruments as the daemon's
  do, with the daemon's producer settings (``fairfeed.kafka.sink.producer_config``: acks=all,
  idempotence, lz4, linger 5 ms) unless ``overrides`` say otherwise. Each message's first 8
  bytes are its send time (ns, wall clock). Returns the per-message ``produce()`` → ack
  latencies (librdkafka's ``msg.latency()``) and create times (ms).
- :class:`VisibleProbe` is a consumer in a thread of the harness, assigned to a topic's end:
  for every message fetched it records fetch time − send time, the send time read from the
  message by a function given to it (the plain producer's first 8 bytes; the load server's
  provider time in the daemon's ticks messages).

Used by ``bench/steady.py`` (the floor beside the daemon, same broker, same run) and
``bench/broker_tail.py`` (broker settings against the floor).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from fairfeed.core.config import KafkaConfig
from fairfeed.kafka.client import client_config
from fairfeed.kafka.sink import producer_config

KEYS = tuple(f"INST-{i}".encode() for i in range(8))
_STAMP = struct.Struct("<q")


def percentiles(ms: np.ndarray) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of ``ms`` (empty: {})."""
    if len(ms) == 0:
        return {}
    pct = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99, 99.9)}
    return pct | {"max": float(ms.max())}


@dataclass
class PlainResult:
    rate: float  # asked, messages/s
    size: int  # bytes per message value
    sent: int = 0
    acked: int = 0
    errors: int = 0
    seconds: float = 0.0  # producing, wall
    cpu_s: float = 0.0  # the producer process
    ack_ms: dict[str, float] = field(default_factory=dict)
    visible_ms: dict[str, float] = field(default_factory=dict)  # filled by the caller's probe
    overrides: dict[str, Any] = field(default_factory=dict)


def _produce(
    bootstrap: str, topic: str, rate: float, seconds: float, size: int, overrides: dict[str, Any]
) -> tuple[PlainResult, np.ndarray, np.ndarray]:  # pragma: no cover - in the spawned process
    from confluent_kafka import Producer

    res = PlainResult(rate, size, overrides=dict(overrides))
    lat: list[float] = []
    created: list[int] = []

    def on_delivery(err, msg) -> None:
        if err is None:
            res.acked += 1
            lat.append(msg.latency())
            created.append(msg.timestamp()[1])
        else:
            res.errors += 1

    conf = producer_config(KafkaConfig(bootstrap=bootstrap, client_id="bench-plain"), overrides)
    conf["on_delivery"] = on_delivery
    p = Producer(conf)
    pad = b"x" * max(0, size - _STAMP.size)
    # connection, metadata and the idempotent producer id first: not the broker's steady latency
    for key in KEYS:
        p.produce(topic, _STAMP.pack(0) + pad, key)
    p.flush(30)
    lat.clear()
    created.clear()
    res.acked = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    end = t0 + seconds
    n = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate) - n
        for _ in range(due):
            p.produce(topic, _STAMP.pack(time.time_ns()) + pad, KEYS[n % len(KEYS)])
            n += 1
        p.poll(0)
        time.sleep(0.001)  # what is due is written every millisecond, as the load server does
    res.seconds = time.monotonic() - t0
    res.sent = n
    left = p.flush(30)
    if left:
        res.errors += left
    res.cpu_s = time.process_time() - cpu0
    ms = np.asarray(lat) * 1e3
    res.ack_ms = percentiles(ms)
    return res, ms, np.asarray(created, np.int64)


def run_plain(
    bootstrap: str,
    topic: str,
    rate: float,
    seconds: float,
    size: int,
    overrides: dict[str, Any] | None = None,
) -> tuple[PlainResult, np.ndarray, np.ndarray]:
    """The plain producer in a process of its own: its result, and per acknowledged message its
    ack latency (ms) and its create time (ms since the epoch)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as ex:
        return ex.submit(_produce, bootstrap, topic, rate, seconds, size, overrides or {}).result()


def plain_stamp(value: bytes) -> np.ndarray:
    """The send time (ns) the plain producer put in front of ``value``."""
    return np.array(_STAMP.unpack_from(value), np.int64)


class VisibleProbe:
    """A consumer of ``topic`` from its end, in a thread: fetch time − send time per item, the
    send times (ns) of each message given by ``stamps(value)``."""

    def __init__(
        self, bootstrap: str, topic: str, stamps: Callable[[bytes], np.ndarray], partitions: int
    ) -> None:
        self._stamps = stamps
        conf = client_config(KafkaConfig(bootstrap=bootstrap, client_id="bench-probe"), "consumer")
        self._consumer = Consumer(
            conf
            | {
                "group.id": f"bench-probe-{topic}",
                "enable.auto.commit": False,
                # the broker answers a fetch as soon as it has data, at most 5 ms later
                "fetch.wait.max.ms": 5,
                "fetch.queue.backoff.ms": 1,
                "fetch.min.bytes": 1,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
        self._stop = threading.Event()
        self._sent: list[np.ndarray] = []
        self._seen: list[np.ndarray] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="visible-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = self._consumer
        try:
            while not self._stop.is_set():
                msgs = c.consume(1000, 0.05)
                now = time.time_ns()
                for m in msgs:
                    if m.error() is not None:
                        raise KafkaException(m.error())
                    sent = self._stamps(m.value())
                    self._sent.append(sent)
                    self._seen.append(np.full(len(sent), now, np.int64))
        except BaseException as exc:  # reported by stop(): a thread cannot raise to the harness
            self.error = exc

    def stop(self, since_ns: int = 0, until_ns: int = 2**62) -> np.ndarray:
        """Stop; the latencies (ms) of the items sent in [since_ns, until_ns)."""
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()
        if self.error is not None:
            raise RuntimeError(f"visible probe failed: {self.error!r}") from self.error
        if not self._sent:
            return np.empty(0)
        sent, seen = np.concatenate(self._sent), np.concatenate(self._seen)
        keep = (sent >= since_ns) & (sent < until_ns)
        return (seen[keep] - sent[keep]) / 1e6
