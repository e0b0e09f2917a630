"""Topics on a real broker: created only when allowed, with the configured partitions and
replication; otherwise each missing topic is named at start, with its key."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka.admin import AdminClient

from fairfeed.core import config
from fairfeed.daemon.run import check_output_topics
from fairfeed.kafka.broker import LocalBroker
from fairfeed.kafka.topics import check_topics


def _partitions(bootstrap: str, topic: str) -> int:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return len(md.topics[topic].partitions)


def test_created_with_the_configured_partitions_and_replicas(
    kafka_broker: LocalBroker, kafka_topic: str
) -> None:
    cfg = config.loads(
        f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\ncreate_topics = true\n'
        "topic_partitions = 5\nreplication_factor = 1\n"
    ).kafka
    check = check_topics(cfg, [kafka_topic])
    assert check.ok and check.created == (kafka_topic,)
    assert _partitions(kafka_broker.bootstrap, kafka_topic) == 5
    again = check_topics(cfg, [kafka_topic])  # exists now: nothing to do
    assert again.ok and again.created == ()


def test_a_configured_cluster_gets_no_topics_and_each_missing_one_is_named(
    kafka_broker: LocalBroker, kafka_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config.loads(
        f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\nticks_topic = "{kafka_topic}.ticks"\n'
        f'fair_topic = "{kafka_topic}.fair"\n'
    )
    assert cfg.kafka.create_topics is False  # the default for a configured bootstrap
    check_topics(cfg.kafka.__class__(bootstrap=kafka_broker.bootstrap, create_topics=True),
                 ["fairfeed.anomalies", "fairfeed.deadletter",
                  "fairfeed.derivatives"])  # fmt: skip
    caplog.set_level(logging.INFO)
    check_output_topics(cfg)
    assert (
        f"topic(s) missing on {kafka_broker.bootstrap}: {kafka_topic}.fair (kafka.fair_topic), "
        f"{kafka_topic}.ticks (kafka.ticks_topic); kafka.create_topics is false"
    ) in caplog.text
    assert "create them (3 partitions each" in caplog.text
    md = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert f"{kafka_topic}.ticks" not in md.topics and f"{kafka_topic}.fair" not in md.topics
