"""Shared fixtures. Kafka: one real local broker (Tansu) per session, no mocks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from fairfeed.kafka.broker import LocalBroker, read_topic

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
    """Every message of ``topic`` as ``(partition, key, value)``, in partition then offset order
    (:func:`~fairfeed.kafka.broker.read_topic`). Call it after the producer's flush."""
    out: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {}
    for msg in read_topic(bootstrap, topic, group=group, timeout=timeout):
        out.setdefault(msg.partition(), []).append((msg.partition(), msg.key(), msg.value()))
    return [m for p in sorted(out) for m in out[p]]


@pytest.fixture
def consume_topic(kafka_broker: LocalBroker):
    """``consume_topic(topic, timeout=10.0)`` → :func:`consume_all` on the session broker."""

    def consume(topic: str, timeout: float = 10.0):
        return consume_all(kafka_broker.bootstrap, topic, timeout)

    return consume
