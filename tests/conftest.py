"""Shared fixtures. Kafka: one real local broker (Tansu) per session, no mocks."""

from __future__ import annotations

import itertools
import socket
import subprocess
from collections.abc import Iterator

import pytest

from fairfeed.kafka.broker import LocalBroker, free_port, read_topic
from tests.waiting import wait_for

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
def auth_broker() -> Iterator[str]:
    """Tansu with ``--authentication``: every client must log in with SASL first. SCRAM is
    answered, but no user can exist on it (Tansu 0.6 creates users only through a broker that
    does not require a login; docs/kafka-security.md)."""
    broker = LocalBroker(port=free_port())
    proc = subprocess.Popen(
        [*broker.command(), "--authentication"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def accepts() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_for(accepts, 10, "the authenticating broker's port")
        yield broker.bootstrap
    finally:
        proc.kill()
        proc.wait(10)


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
