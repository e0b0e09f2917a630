"""KafkaSink against a real local broker: exact round trip, counting, overflow and errors."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from fairfeed.core.config import KafkaConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.records import CLASS_SPOT, KIND_ASK, KIND_BID, KIND_TRADE, empty_records
from fairfeed.core.registry import Registry
from fairfeed.kafka.broker import LocalBroker, ensure_topics
from fairfeed.kafka.encode import TickEncoder, decode_fair, decode_ticks_records
from fairfeed.kafka.sink import KafkaSink, KafkaSinkError, producer_config

REGISTRY = Registry.build(
    [("BTC-USD", CLASS_SPOT), ("ETH-USD", CLASS_SPOT), ("SOL-USD", CLASS_SPOT)],
    [("sim-a", "ALPHAX"), ("sim-b", "BETAX"), ("sim-c", "ALPHAX")],
)


def make_batch(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rec = empty_records(n)
    rec["instrument"] = rng.integers(0, 3, n)
    src = rng.integers(0, 3, n)
    rec["provider"] = [REGISTRY.sources[s][0] for s in src]
    rec["venue"] = [REGISTRY.sources[s][1] for s in src]
    rec["data_class"] = CLASS_SPOT
    rec["kind"] = rng.choice([KIND_TRADE, KIND_BID, KIND_ASK], n)
    rec["side"] = np.where(rec["kind"] == KIND_TRADE, rng.integers(1, 3, n), 0)
    rec["price"] = rng.uniform(100, 70_000, n)
    rec["size"] = rng.exponential(0.5, n)
    rec["sequence"] = np.arange(n) + seed * 1_000_000
    t = 1_780_000_000_000_000_000 + np.arange(n) * 1000 + seed * 10**9
    rec["ts_exchange"], rec["ts_provider"], rec["ts_receive"] = t, t + 5, t + 250_000
    return rec


def cfg_for(bootstrap: str, **kw) -> KafkaConfig:
    return KafkaConfig(bootstrap=bootstrap, linger_ms=kw.pop("linger_ms", 2.0), **kw)


def test_config_is_copied_and_complete() -> None:
    cfg = KafkaConfig(bootstrap="127.0.0.1:1", linger_ms=7, queue_max_messages=123)
    extra = {"message.timeout.ms": 1000}
    sink = KafkaSink(cfg, DictCounters(), extra=extra)
    conf = sink.config
    assert conf["acks"] == "all"
    assert conf["enable.idempotence"] is True
    assert conf["compression.type"] == "lz4"
    assert conf["linger.ms"] == 7
    assert conf["queue.buffering.max.messages"] == 123
    assert conf["message.timeout.ms"] == 1000
    conf["acks"] = "0"
    extra["message.timeout.ms"] = 5
    assert sink.config["acks"] == "all"
    assert sink.config["message.timeout.ms"] == 1000
    assert len(sink) == 0 and sink.close() == 0  # never created: nothing to do
    with pytest.raises(KafkaSinkError, match="bootstrap"):
        producer_config(KafkaConfig(bootstrap=""))


def test_round_trip_exact_and_delivery_counted(kafka_broker: LocalBroker, consume_topic) -> None:
    topic = "sink-roundtrip"
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=3)
    counters = DictCounters()
    sink = KafkaSink(cfg_for(kafka_broker.bootstrap), counters)
    enc = TickEncoder(REGISTRY)
    batches = [make_batch(n, seed) for seed, n in enumerate([500, 1, 4096, 37])]
    produced = 0
    for batch in batches:
        for key, value in enc.ticks(batch):
            assert sink.produce(topic, key, value)
            produced += 1
        sink.poll()
    assert sink.flush(10) == 0
    assert counters[Slot.KAFKA_DELIVERED] == produced
    assert counters[Slot.KAFKA_ERRORS] == 0
    assert counters[Slot.KAFKA_DROPPED] == 0
    assert counters[Slot.KAFKA_QUEUE] == 0
    sink.close()

    got = consume_topic(topic)
    assert len(got) == produced
    # one instrument → one partition, and within it the order produced
    parts: dict[bytes, set[int]] = {}
    records = []
    for part, key, value in got:
        parts.setdefault(key, set()).add(part)
        rec = decode_ticks_records(value, REGISTRY)
        assert key == REGISTRY.instruments[int(rec["instrument"][0])].encode()
        records.append(rec)
    assert all(len(p) == 1 for p in parts.values())
    out = np.concatenate(records)
    expected = np.concatenate(batches)
    assert len(out) == len(expected)

    # per (instrument, provider, venue) the sequence of records is exactly the input's
    def by_source(rec: np.ndarray) -> dict[tuple[int, int, int], bytes]:
        groups: dict[tuple[int, int, int], list[np.ndarray]] = {}
        for r in rec:
            groups.setdefault(
                (int(r["instrument"]), int(r["provider"]), int(r["venue"])), []
            ).append(r)
        return {k: np.array(v, dtype=rec.dtype).tobytes() for k, v in groups.items()}

    assert by_source(out) == by_source(expected)


def test_fair_messages_round_trip(kafka_broker: LocalBroker, consume_topic) -> None:
    topic = "sink-fair"
    counters = DictCounters()
    with KafkaSink(cfg_for(kafka_broker.bootstrap), counters) as sink:
        msgs = TickEncoder(REGISTRY).fair([0, 1, 2], [65000.5, 3000.25, 150.0], [3, 2, 1],
                                          [10, 20, 30], 1_780_000_000_000_000_000)  # fmt: skip
        for key, value in msgs:
            sink.produce(topic, key, value)
        assert sink.flush(10) == 0
    assert counters[Slot.KAFKA_DELIVERED] == 3
    got = sorted((k, decode_fair(v)["price"]) for _, k, v in consume_topic(topic))
    assert got == [(b"BTC-USD", 65000.5), (b"ETH-USD", 3000.25), (b"SOL-USD", 150.0)]


def test_full_queue_retries_then_drops(caplog) -> None:
    # No broker listens: the queued message can never be delivered (flush ignores linger.ms,
    # so with a live broker close's bounded flush could deliver it).
    cfg = cfg_for("127.0.0.1:1", linger_ms=60_000, queue_max_messages=1, buffer_full_timeout_ms=200)
    counters = DictCounters()
    sink = KafkaSink(cfg, counters)
    caplog.set_level(logging.ERROR, logger="fairfeed.sink")
    assert sink.produce("sink-full", b"k", b"first")  # sits in the queue (long linger)
    t0 = time.monotonic()
    assert not sink.produce("sink-full", b"k", b"second")
    waited = time.monotonic() - t0
    assert 0.19 <= waited < 2.0
    assert counters[Slot.KAFKA_RETRIES] >= 2
    assert counters[Slot.KAFKA_DROPPED] == 1
    assert "local queue full" in caplog.text and "sink-full" in caplog.text
    # saturated: the next drop is immediate instead of one more bounded wait
    t0 = time.monotonic()
    assert not sink.produce("sink-full", b"k", b"third")
    assert time.monotonic() - t0 < 0.1
    assert counters[Slot.KAFKA_DROPPED] == 2
    sink.poll()
    assert counters[Slot.KAFKA_QUEUE] == 1
    # close: flush fails inside the bound (linger), the rest is purged and counted as dropped
    assert sink.close(timeout=0.1) == 1
    assert counters[Slot.KAFKA_DROPPED] == 3
    assert counters[Slot.KAFKA_DELIVERED] == 0


def test_delivery_error_counted_when_broker_dies(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="fairfeed.sink")
    counters = DictCounters()
    with LocalBroker() as broker:
        sink = KafkaSink(
            cfg_for(broker.bootstrap),
            counters,
            extra={"message.timeout.ms": 1500, "reconnect.backoff.max.ms": 200},
        )
        assert sink.produce("sink-dying", b"k", b"before")
        assert sink.flush(10) == 0
        assert counters[Slot.KAFKA_DELIVERED] == 1
        broker.kill()
        for i in range(5):
            assert sink.produce("sink-dying", b"k", b"after %d" % i)
        deadline = time.monotonic() + 10
        while counters[Slot.KAFKA_ERRORS] < 5 and time.monotonic() < deadline:
            sink.poll(0.1)
        # The broker stays down: librdkafka may queue error events (len(producer) counts them),
        # which are no waiting messages.
        assert sink.stalled(0.0) is False  # nothing left waiting
    assert counters[Slot.KAFKA_ERRORS] == 5
    assert counters[Slot.KAFKA_DELIVERED] == 1
    assert "delivery to topic sink-dying failed" in caplog.text
    assert sink.stalled(0.0) is False  # nothing left waiting
    sink.close(timeout=0.1)


def test_rejected_message_is_counted(kafka_broker: LocalBroker, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="fairfeed.sink")
    counters = DictCounters()
    sink = KafkaSink(cfg_for(kafka_broker.bootstrap), counters, extra={"message.max.bytes": 1000})
    assert not sink.produce("sink-big", b"k", b"x" * 5000)
    assert counters[Slot.KAFKA_ERRORS] == 1
    assert "rejected" in caplog.text
    sink.close(timeout=1)
