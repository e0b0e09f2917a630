"""KafkaSink against a real local broker: exact round trip, counting, overflow and errors."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from fairfeed.core.config import KafkaConfig
from fairfeed.core.counters import DictCounters, Slot
from fairfeed.core.records import CLASS_SPOT, KIND_ASK, KIND_BID, KIND_TRADE, empty_records
from fairfeed.core.registry import Registry
from fairfeed.kafka.broker import LocalBroker, ensure_topics
from fairfeed.kafka.encode import TickEncoder, decode_fair, decode_ticks_records
from fairfeed.kafka.sink import KafkaSink, KafkaSinkError, OutputState, producer_config
from tests.conftest import consume_all
from tests.waiting import wait_for

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
    kw.setdefault("create_topics", True)  # the tests' broker is a development broker
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
    assert conf["allow.auto.create.topics"] is False
    conf["acks"] = "0"
    extra["message.timeout.ms"] = 5
    assert sink.config["acks"] == "all"
    assert sink.config["message.timeout.ms"] == 1000
    assert len(sink) == 0 and sink.close() == 0  # nothing produced: nothing to do
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
    assert sink.flush(20) == 0
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


def test_broker_restart_without_data_loses_nothing(tmp_path, caplog) -> None:
    """A broker killed and replaced by an empty one: everything produced before, during and
    after the outage is in the new broker exactly once, its topic recreated with the configured
    partitions; the spool's waiting bytes rise during the outage and fall back to zero."""
    caplog.set_level(logging.INFO, logger="fairfeed.sink")
    topic = "sink-restart"
    first = LocalBroker().start()
    counters = DictCounters()
    sink = KafkaSink(cfg_for(first.bootstrap, topic_partitions=2), counters,
                     spool_dir=tmp_path / "spool")  # fmt: skip
    second = None

    def send(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            assert sink.produce(topic, b"k%d" % (i % 5), b"%d" % i)
            if i % 50 == 0:
                sink.commit()
                sink.poll()
        sink.commit()

    try:
        send(0, 500)
        assert sink.flush(20) == 0
        first.kill()  # the first 500 are gone with it (memory storage)
        send(500, 1500)
        wait_for(lambda: sink.poll() >= 0 and sink.state == OutputState.BLOCKED, 20,
                 "output reported blocked")  # fmt: skip
        assert counters[Slot.SPOOL_BYTES] > 0 and counters[Slot.SPOOL_MESSAGES] == 1000
        assert counters[Slot.OUTPUT_SINCE] > 0
        second = LocalBroker(port=first.port).start()
        send(1500, 2000)
        assert sink.flush(60) == 0, caplog.text[-3000:]
        assert sink.state == OutputState.OK
        assert counters[Slot.SPOOL_BYTES] == 0 and counters[Slot.SPOOL_MESSAGES] == 0
        assert counters[Slot.KAFKA_DROPPED] == 0
        got = consume_all(second.bootstrap, topic)
        values = [int(v) for _, _, v in got]
        assert sorted(values) == list(range(500, 2000))  # each once
        for part in {p for p, _, _ in got}:  # per key (one partition each): the order produced
            seq = [int(v) for p, _, v in got if p == part]
            assert seq == sorted(seq)
        parts = AdminClient({"bootstrap.servers": second.bootstrap}).list_topics(timeout=5)
        assert len(parts.topics[topic].partitions) == 2
        assert "created missing topics sink-restart" in caplog.text
    finally:
        sink.close(timeout=1)
        first.stop(grace=0.1)
        if second is not None:
            second.stop(grace=0.1)


def test_spool_full_drops_counted_and_announced(tmp_path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="fairfeed.sink")
    counters = DictCounters()
    cfg = cfg_for("127.0.0.1:1", spool_max_bytes=64 << 10)  # no broker listens
    sink = KafkaSink(cfg, counters, spool_dir=tmp_path, drop_slots={"ticks": Slot.DROPPED_TICKS},
                     reserve_topics=frozenset({"anomalies"}))  # fmt: skip
    value = b"x" * 1000
    accepted = 0
    while sink.produce("ticks", b"k", value, records=10):
        accepted += 1
    assert 40 <= accepted <= 64
    for _ in range(5):
        assert not sink.produce("ticks", b"k", value, records=10)
    sink.commit()
    sink.poll()
    assert counters[Slot.DROPPED_TICKS] == 60  # records, not messages
    assert counters[Slot.KAFKA_DROPPED] == 6
    assert sink.state == OutputState.SPOOL_FULL
    assert counters[Slot.OUTPUT_STATE] == OutputState.SPOOL_FULL
    assert (
        "spool full" in caplog.text and "records (1 messages) to ticks dropped since" in caplog.text
    )
    events = sink.overflow_events()
    assert [(t, ph, rec) for t, ph, _s, _e, rec, _m in events] == [("ticks", "start", 60)]
    assert sink.overflow_events() == []  # announced once
    assert sink.produce("anomalies", b"k", b"announcement")  # the reserve
    assert sink.spool.bytes <= cfg.spool_max_bytes + sink.spool.reserve_bytes
    sink.close(timeout=0.1)


def test_a_restart_sends_the_spool_first(tmp_path, kafka_broker: LocalBroker) -> None:
    topic = "sink-leftover"
    down = KafkaSink(cfg_for("127.0.0.1:1"), DictCounters(), spool_dir=tmp_path)
    for i in range(300):
        down.produce(topic, b"k%d" % (i % 3), b"%d" % i)
    assert down.close(timeout=0.2) == 300  # kept for the next start
    counters = DictCounters()
    up = KafkaSink(cfg_for(kafka_broker.bootstrap), counters, spool_dir=tmp_path)
    assert up.resent_at_open == 300 and counters[Slot.SPOOL_RESENT] == 0
    for i in range(300, 400):
        up.produce(topic, b"k%d" % (i % 3), b"%d" % i)
    assert up.flush(20) == 0
    assert counters[Slot.SPOOL_RESENT] == 300  # counted as possibly duplicated
    got = consume_all(kafka_broker.bootstrap, topic)
    assert sorted(int(v) for _, _, v in got) == list(range(400))
    for part in {p for p, _, _ in got}:
        seq = [int(v) for p, _, v in got if p == part]
        assert seq == sorted(seq)  # the leftovers before the new output, per key
    up.close()


def test_missing_topic_is_named_and_output_kept(tmp_path, kafka_broker: LocalBroker,
                                                caplog) -> None:  # fmt: skip
    caplog.set_level(logging.ERROR, logger="fairfeed.sink")
    topic = "sink-not-created"
    counters = DictCounters()
    sink = KafkaSink(cfg_for(kafka_broker.bootstrap, create_topics=False), counters,
                     spool_dir=tmp_path)  # fmt: skip
    for i in range(50):
        sink.produce(topic, b"k", b"%d" % i)
    wait_for(lambda: sink.poll() >= 0 and sink.state == OutputState.TOPIC_MISSING, 20,
             "the missing topic reported")  # fmt: skip
    assert f"topic(s) {topic} missing" in caplog.text and "create_topics is false" in caplog.text
    assert sink.spool.pending == 50 and counters[Slot.KAFKA_DELIVERED] == 0
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=1)  # the operator creates it
    assert sink.flush(30) == 0
    assert [int(v) for _, _, v in consume_all(kafka_broker.bootstrap, topic)] == list(range(50))
    sink.close()


def test_rejected_message_is_counted(kafka_broker: LocalBroker, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="fairfeed.sink")
    counters = DictCounters()
    sink = KafkaSink(cfg_for(kafka_broker.bootstrap), counters, extra={"message.max.bytes": 1000})
    assert sink.produce("sink-big", b"k", b"x" * 5000)  # spooled; refused when handed over
    assert sink.flush(10) == 0
    assert counters[Slot.KAFKA_ERRORS] == 1
    assert counters[Slot.KAFKA_DROPPED] == 1
    assert counters[Slot.DROPPED_OTHER] == 1
    assert "rejected" in caplog.text
    sink.close(timeout=1)


def test_hung_broker_keeps_the_producer_and_loses_nothing(tmp_path) -> None:
    """SIGSTOP: the broker hangs with connections open. The producer keeps what it holds (no
    replacement within stall_timeout), newer output waits in the spool, and after SIGCONT
    everything arrives once, in order per key."""
    topic = "sink-hung"
    with LocalBroker() as broker:
        counters = DictCounters()
        sink = KafkaSink(cfg_for(broker.bootstrap, queue_max_messages=200), counters,
                         spool_dir=tmp_path)  # fmt: skip
        n = 0

        def send(k: int) -> None:
            nonlocal n
            for _ in range(k):
                assert sink.produce(topic, b"k%d" % (n % 4), b"%d" % n)
                n += 1
            sink.commit()
            sink.poll()

        send(100)
        assert sink.flush(20) == 0
        os.killpg(broker.pid, signal.SIGSTOP)
        wait_for(lambda: _state(broker.pid) == "T", 10, "the broker stopped")  # signals are async
        try:
            for _ in range(20):
                send(50)
            wait_for(lambda: sink.poll() >= 0 and sink.state == OutputState.BLOCKED, 20,
                     "output reported blocked")  # fmt: skip
            assert len(sink) == 200  # the producer's window is full, the rest waits on disk
            assert sink.spool.pending == 1000
        finally:
            os.killpg(broker.pid, signal.SIGCONT)
        assert sink.flush(30) == 0
        assert counters[Slot.SPOOL_RESENT] == 0  # the same producer went on: no copies
        got = consume_all(broker.bootstrap, topic)
        assert sorted(int(v) for _, _, v in got) == list(range(1100))
        for part in {p for p, _, _ in got}:
            seq = [int(v) for p, _, v in got if p == part]
            assert seq == sorted(seq)
        sink.close()


def _state(pid: int | None) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0]
