"""Shared fixtures. Kafka: one real local broker (Tansu) per session, no mocks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from fairfeed.daemon.broker import LocalBroker

_topic_ids = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalBroker]:
    """A started local broker for the whole session; SIGKILLed at the end (memory storage)."""
    broker = LocalBroker().start(timeout=15.0)
    try:
        yield broker
    finally:
        broker.stop(grace=0.2)


@pytest.fixture
def kafka_topic(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (auto-created by the broker on first produce)."""
    name = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:80]
    return f"t{next(_topic_ids)}-{name}"


def consume_all(
    bootstrap: str,
    topic: str,
    timeout: float = 10.0,
    group: str = "fairfeed-tests",
) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every message of ``topic`` as ``(partition, key, value)``, in partition then offset order.

    Uses ``assign()`` to all partitions from the beginning (no group join) and reads each
    partition until its end. The end is the partition-EOF event (the high watermark of the fetch
    response), not ``get_watermark_offsets``: Tansu 0.6 answers ListOffsets(latest) with the base
    offset of the last record batch + 1, which undercounts batched topics. Call it after the
    producer's flush; raises on timeout or a consumer error.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": 10,
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=timeout)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise KafkaException(tmd.error if tmd is not None else f"no topic {topic}")
        out: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {
            p: [] for p in sorted(tmd.partitions)
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in out])
        deadline = time.monotonic() + timeout
        pending = set(out)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consume_all({topic}): partitions {sorted(pending)} unfinished")
            for msg in consumer.consume(1000, timeout=0.1):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise KafkaException(err)
                out[msg.partition()].append((msg.partition(), msg.key(), msg.value()))
        return [m for p in sorted(out) for m in out[p]]
    finally:
        consumer.close()


@pytest.fixture
def consume_topic(kafka_broker: LocalBroker):
    """``consume_topic(topic, timeout=10.0)`` → :func:`consume_all` on the session broker."""

    def consume(topic: str, timeout: float = 10.0):
        return consume_all(kafka_broker.bootstrap, topic, timeout)

    return consume
