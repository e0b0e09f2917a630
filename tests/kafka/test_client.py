"""One client configuration for every Kafka client: what reaches librdkafka is what the file
says, secrets stay out of logs and errors, and security failures against a real broker are
reported with their reason.

Tansu 0.6 (the broker we can run here) cannot complete a SASL or TLS login: its ``--cert`` and
``--key`` flags exclude each other and ``--cert`` alone leaves the listener in plaintext, and
with ``--authentication`` PLAIN is refused at the handshake while SCRAM users can only be made
through a broker that does not require authentication (memory storage does not outlive a
restart). So the tests check the configuration librdkafka reports it was given, and real
connections that fail for the right, named reason: SCRAM against Tansu's ``--authentication``
(unknown user) and TLS against a plaintext listener.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Producer

from fairfeed.core import config
from fairfeed.core.config import KafkaConfig
from fairfeed.core.counters import DictCounters
from fairfeed.kafka.broker import LocalBroker, read_topic
from fairfeed.kafka.client import client_config, describe, scrub
from fairfeed.kafka.sink import KafkaSink, producer_config
from fairfeed.kafka.topics import admin_config, check_topics
from tests.waiting import wait_for

TLS = Path(__file__).parent.parent / "data" / "tls"
SECRET = "pa55-Word-of-the-test"
KEY_PASS = "test-key-passphrase"


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch) -> KafkaConfig:
    """A SASL_SSL / SCRAM-SHA-512 configuration with a CA, a client certificate, an encrypted
    key and pass-through keys, loaded from TOML as the daemon does."""
    monkeypatch.setenv("FF_TEST_KAFKA_PASSWORD", SECRET)
    monkeypatch.setenv("FF_TEST_KEY_PASSWORD", KEY_PASS)
    return config.loads(f"""
[kafka]
bootstrap = "broker-1:9093,broker-2:9093"
client_id = "ff-test"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "fairfeed"
sasl_password_env = "FF_TEST_KAFKA_PASSWORD"
ssl_ca_file = "{TLS / "ca.pem"}"
ssl_certificate_file = "{TLS / "client.pem"}"
ssl_key_file = "{TLS / "client-encrypted.key"}"
ssl_key_password_env = "FF_TEST_KEY_PASSWORD"
[kafka.librdkafka]
"socket.keepalive.enable" = true
"ssl.endpoint.identification.algorithm" = "none"
"batch.size" = 65536
""").kafka


def test_client_config_is_the_file(secured: KafkaConfig) -> None:
    security = {
        "bootstrap.servers": "broker-1:9093,broker-2:9093",
        "client.id": "ff-test",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "fairfeed",
        "sasl.password": SECRET,
        "ssl.ca.location": str(TLS / "ca.pem"),
        "ssl.certificate.location": str(TLS / "client.pem"),
        "ssl.key.location": str(TLS / "client-encrypted.key"),
        "ssl.key.password": KEY_PASS,
        "socket.keepalive.enable": True,
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert client_config(secured, "producer") == security | {"batch.size": 65536}
    assert client_config(secured, "admin") == security  # producer-only keys stay out
    assert client_config(secured, "consumer") == security
    # Every client the daemon makes starts from it: the sink's producer, the topic check.
    producer = producer_config(secured)
    assert producer.items() >= (security | {"batch.size": 65536}).items()
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    admin = admin_config(secured, 2.0)
    assert admin.items() >= security.items() and "batch.size" not in admin
    assert describe(secured) == "SASL_SSL SCRAM-SHA-512 as fairfeed"
    assert scrub(f"x {SECRET} y {KEY_PASS}", producer) == "x [redacted] y [redacted]"


class _Conf(logging.Handler):
    """librdkafka's configuration dump (debug context ``conf``) as {property: value}."""

    def __init__(self) -> None:
        super().__init__()
        self.props: dict[str, str] = {}
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        _fac, _, text = line.partition("]: ")
        name, eq, value = text.strip().partition(" = ")
        if eq:
            self.props[name] = value


def test_librdkafka_is_given_exactly_the_file(secured: KafkaConfig) -> None:
    """What the producer's librdkafka instance reports as its configuration: the file's values
    (and fairfeed's guarantees), the secrets redacted by librdkafka itself."""
    cfg = KafkaConfig(**{**secured.__dict__, "librdkafka": {**secured.librdkafka, "debug": "conf"}})
    handler = _Conf()
    logger = logging.getLogger("test.librdkafka.conf")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        p = Producer(producer_config(cfg) | {"logger": logger})
        wait_for(lambda: (p.poll(0.05), "message.timeout.ms" in handler.props)[1], 10, "conf dump")
    finally:
        logger.removeHandler(handler)
    got = handler.props
    assert got["metadata.broker.list"] == "broker-1:9093,broker-2:9093"  # its alias
    assert got["client.id"] == "ff-test"
    assert got["security.protocol"] == "sasl_ssl"
    assert got["sasl.mechanisms"] == "SCRAM-SHA-512"
    # librdkafka shows the username and the key's path as redacted too: set, not shown.
    for key in ("sasl.username", "sasl.password", "ssl.key.password", "ssl.key.location"):
        assert got[key] == "[redacted]", key
    assert got["ssl.ca.location"] == str(TLS / "ca.pem")
    assert got["ssl.certificate.location"] == str(TLS / "client.pem")
    assert got["ssl.endpoint.identification.algorithm"] == "none"
    assert got["socket.keepalive.enable"] == "true"
    assert got["batch.size"] == "65536"
    assert got["enable.idempotence"] == "true" and got["message.timeout.ms"] == "0"
    assert got["request.required.acks"] == "-1" and got["compression.codec"] == "lz4"
    assert not any(SECRET in line or KEY_PASS in line for line in handler.lines)


def test_tls_to_a_plaintext_listener_fails_with_its_reason(kafka_broker: LocalBroker) -> None:
    cfg = KafkaConfig(
        bootstrap=kafka_broker.bootstrap,
        security_protocol="SSL",
        ssl_ca_file=str(TLS / "ca.pem"),
    )
    check = check_topics(cfg, ["fairfeed.ticks"], timeout=2.0)
    assert not check.ok and check.missing == ("fairfeed.ticks",)
    assert check.error.startswith("cannot list topics: ")
    assert "SSL_HANDSHAKE" in check.error, check.error
    # The same listener answers a PLAINTEXT client: it is the protocol that failed.
    plain = check_topics(KafkaConfig(bootstrap=kafka_broker.bootstrap), ["fairfeed.ticks"], 5.0)
    assert not plain.error


def test_scram_reaches_the_brokers_login(
    auth_broker: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """fairfeed logs in with SCRAM as the file says: the broker answers the SCRAM exchange
    (unknown user: none can be made on this broker), the check names that, and the password
    appears nowhere; a client without SASL is just disconnected."""
    monkeypatch.setenv("FF_TEST_KAFKA_PASSWORD", SECRET)
    cfg = config.loads(f"""
[kafka]
bootstrap = "{auth_broker}"
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "SCRAM-SHA-256"
sasl_username = "fairfeed"
sasl_password_env = "FF_TEST_KAFKA_PASSWORD"
""").kafka
    caplog.set_level(logging.DEBUG)
    check = check_topics(cfg, ["fairfeed.ticks"], timeout=2.0)
    scram = "SASL SCRAM authentication failed: broker responded with unknown-user"
    assert f"SASL authentication error: {scram}" in check.error, check.error
    plain = check_topics(KafkaConfig(bootstrap=auth_broker), ["fairfeed.ticks"], timeout=2.0)
    assert "SASL" not in plain.error and "Disconnected" in plain.error, plain.error
    # The sink's producer (created at start, before any topic check) logs in the same way.
    sink = KafkaSink(cfg, DictCounters()).start()
    try:

        def producer_failed() -> bool:
            sink.poll(0.05)
            return any(
                r.getMessage().startswith("kafka: client error:") and scram in r.getMessage()
                for r in caplog.records
            )

        wait_for(producer_failed, 15, "the producer's authentication error")
    finally:
        sink.close(timeout=0)
    assert SECRET not in caplog.text and SECRET not in check.error


def test_consumers_of_tools_use_the_same_settings(kafka_broker: LocalBroker) -> None:
    """read_topic given a configuration connects with its security settings: plaintext reads,
    TLS to the same plaintext listener cannot."""
    from confluent_kafka import KafkaException

    from fairfeed.kafka.broker import ensure_topics

    topic = "client-read-topic"
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=1)
    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    p.produce(topic, b"v", b"k")
    assert p.flush(10) == 0
    plain = KafkaConfig(bootstrap=kafka_broker.bootstrap, client_id="reader")
    assert [m.value() for m in read_topic(plain, topic, group="g")] == [b"v"]
    tls = KafkaConfig(
        bootstrap=kafka_broker.bootstrap, security_protocol="SSL", ssl_ca_file=str(TLS / "ca.pem")
    )
    with pytest.raises(KafkaException):
        list(read_topic(tls, topic, group="g", timeout=2.0))
