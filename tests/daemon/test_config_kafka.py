"""`[kafka]` security keys, `[kafka.librdkafka]` and topic keys: checked at load, named in errors,
secrets never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fairfeed.core import config, librdkafka
from fairfeed.core.config import ConfigError

SECRET = "s3cr3t-Pa55word"
SCRAM = (
    '[kafka]\nbootstrap = "k1:9093"\nsecurity_protocol = "SASL_SSL"\n'
    'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "fairfeed"\n'
    'sasl_password_env = "FF_TEST_KAFKA_PASSWORD"\n'
)


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_TEST_KAFKA_PASSWORD", SECRET)


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file standing in for a PEM file (only existence and readability are checked)."""
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_a_secured_configuration_loads_without_its_secret(pem: Path) -> None:
    text = SCRAM + f'ssl_ca_file = "{pem}"\n[kafka.librdkafka]\n"socket.keepalive.enable" = true\n'
    k = config.loads(text).kafka
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-512", "fairfeed",
    )  # fmt: skip
    assert k.ssl_ca_file == str(pem)
    assert k.librdkafka == {"socket.keepalive.enable": True}
    assert SECRET not in repr(config.loads(text))  # only the variable's name is kept


def test_create_topics_defaults_to_the_embedded_broker_only() -> None:
    assert config.loads("").kafka.create_topics is True
    assert config.load().kafka.create_topics is True
    assert config.loads('[kafka]\nbootstrap = "k:9092"\n').kafka.create_topics is False
    on = config.loads('[kafka]\nbootstrap = "k:9092"\ncreate_topics = true\n').kafka
    assert on.create_topics is True
    off = config.loads("[kafka]\ncreate_topics = false\n").kafka
    assert off.create_topics is False
    assert config.loads("").kafka.replication_factor == -1
    assert config.loads("[kafka]\nreplication_factor = 3\n").kafka.replication_factor == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[kafka]\nreplication_factor = 0\n",
            "kafka.replication_factor: must be -1 or between 1 and 32, got 0",
        ),
        (
            "[kafka]\ntopic_partitions = 0\n",
            "kafka.topic_partitions: must be between 1 and 10000, got 0",
        ),
        (
            '[kafka]\nbootstrap = "k:1"\nsecurity_protocol = "TLS"\n',
            "kafka.security_protocol: must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, "
            "got 'TLS'",
        ),
        (
            '[kafka]\nsecurity_protocol = "SSL"\n',
            "kafka.security_protocol: the embedded local broker (kafka.bootstrap empty) speaks "
            "PLAINTEXT only",
        ),
        (
            '[kafka]\nbootstrap = "k:1"\nsecurity_protocol = "SASL_SSL"\n',
            "kafka.sasl_mechanism: must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, "
            "OAUTHBEARER with security_protocol SASL_SSL, got ''",
        ),
        (
            SCRAM.replace("SCRAM-SHA-512", "GSSAPI"),
            "kafka.sasl_mechanism: must be one of PLAIN, SCRAM-SHA-256",
        ),
        (
            SCRAM.replace('sasl_username = "fairfeed"\n', ""),
            "kafka.sasl_username: is required with sasl_mechanism SCRAM-SHA-512",
        ),
        (
            SCRAM.replace('sasl_password_env = "FF_TEST_KAFKA_PASSWORD"\n', ""),
            "kafka.sasl_password_env: is required with sasl_mechanism SCRAM-SHA-512: the name of "
            "the environment variable",
        ),
        (
            SCRAM.replace("FF_TEST_KAFKA_PASSWORD", "FF_TEST_NOT_SET"),
            "kafka.sasl_password_env: environment variable FF_TEST_NOT_SET is not set (or empty)",
        ),
        (
            '[kafka]\nbootstrap = "k:1"\nsasl_username = "u"\n',
            "kafka.sasl_username: is only used with security_protocol SASL_PLAINTEXT or SASL_SSL, "
            "not PLAINTEXT",
        ),
        (
            '[kafka]\nbootstrap = "k:1"\nsecurity_protocol = "SSL"\nssl_ca_file = "/nonexistent"\n',
            "kafka.ssl_ca_file: no such file: /nonexistent",
        ),
        (
            SCRAM + '[kafka.librdkafka]\n"enable.idempotence" = false\n',
            "kafka.librdkafka.'enable.idempotence': refused: fairfeed requires the idempotent "
            "producer",
        ),
        (
            SCRAM + "[kafka.librdkafka]\nacks = 1\n",
            "kafka.librdkafka.'acks': refused: fairfeed requires acks=all",
        ),
        (
            SCRAM + '[kafka.librdkafka]\n"message.timeout.ms" = 30000\n',
            "kafka.librdkafka.'message.timeout.ms': refused: fairfeed retries forever",
        ),
        (
            SCRAM + '[kafka.librdkafka]\n"sasl.password" = "x"\n',
            "kafka.librdkafka.'sasl.password': refused: a secret: never in the file; give the "
            "name of an environment variable in kafka.sasl_password_env",
        ),
        (
            SCRAM + '[kafka.librdkafka]\n"socket.keepalive.enabel" = true\n',
            "kafka.librdkafka.'socket.keepalive.enabel': unknown or unsupported librdkafka key "
            "(did you mean 'socket.keepalive.enable'?)",
        ),
        (
            '[kafka]\nbootstrap = "k:1"\n[kafka.librdkafka]\n"ssl.cipher.suites" = "X"\n',
            "kafka.librdkafka.'ssl.cipher.suites': a TLS setting, but security_protocol is "
            "PLAINTEXT",
        ),
        (
            SCRAM + '[kafka.librdkafka]\n"socket.timeout.ms" = [1]\n',
            "kafka.librdkafka.socket.timeout.ms: expected true or false, got an array",
        ),
        (
            SCRAM.replace("SCRAM-SHA-512", "OAUTHBEARER"),
            'kafka.librdkafka: OAUTHBEARER needs "sasl.oauthbearer.method" = "oidc"',
        ),
    ],
)
def test_bad_kafka_settings_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.loads(text, "f.toml")
    assert f"f.toml: {message}" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_a_certificate_needs_its_key(pem: Path) -> None:
    text = (
        f'[kafka]\nbootstrap = "k:1"\nsecurity_protocol = "SSL"\nssl_certificate_file = "{pem}"\n'
    )
    with pytest.raises(ConfigError, match=r"kafka\.ssl_key_file: a client certificate and its key"):
        config.loads(text)
    with pytest.raises(
        ConfigError, match=r"kafka\.ssl_ca_file: is only used with security_protocol"
    ):
        config.loads(f'[kafka]\nbootstrap = "k:1"\nssl_ca_file = "{pem}"\n')
    with pytest.raises(ConfigError, match=r"kafka\.ssl_ca_file: no such file"):
        config.loads(SCRAM + f'ssl_ca_file = "{pem.parent}"\n')  # a directory is no PEM file


def test_a_password_put_in_the_file_is_not_echoed() -> None:
    text = SCRAM.replace('"FF_TEST_KAFKA_PASSWORD"', '"hunter2!"')
    with pytest.raises(ConfigError) as exc:
        config.loads(text)
    assert "kafka.sasl_password_env: must name an environment variable" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_check_config_exits_2_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(SCRAM.replace("FF_TEST_KAFKA_PASSWORD", "FF_TEST_ABSENT"))
    res = subprocess.run(
        [sys.executable, "-m", "fairfeed", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "kafka.sasl_password_env: environment variable FF_TEST_ABSENT is not set" in res.stderr


def test_every_key_of_the_lists_is_a_librdkafka_key() -> None:
    """The allow-list and the refusals name real properties: librdkafka answers a bad value
    for each, never "No such configuration property" (a typo in the lists would be)."""
    from confluent_kafka import KafkaException, Producer

    for key in sorted(librdkafka.GLOBAL | librdkafka.PRODUCER | set(librdkafka.REFUSED)):
        try:
            Producer({key: "\x01not a value\x01", "log_level": 0})
        except KafkaException as exc:
            assert "No such configuration property" not in str(exc), key
        except (ValueError, TypeError) as exc:  # rejected by the Python wrapper: it knows it
            assert "No such configuration property" not in str(exc), key


def test_every_kafka_key_is_documented() -> None:
    import dataclasses

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(config.KafkaConfig):
        name = "[kafka.librdkafka]" if f.name == "librdkafka" else f.name
        assert f"`{name}`" in doc, f.name
    for key in librdkafka.GLOBAL | librdkafka.PRODUCER:
        assert f"`{key}`" in doc, key
