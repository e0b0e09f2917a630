"""The one place a Kafka client's connection and security settings are made.

Every client fairfeed creates — the sink's producer, the admin client of the topic check, the
consumers of tools and tests — starts from :func:`client_config`, so a secured cluster is
reached the same way by all of them. Secrets are read from the environment here, when a client
is created (never stored in the configuration object), and :func:`scrub` removes them from any
text that is about to be logged or raised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from fairfeed.core import librdkafka
from fairfeed.core.config import KafkaConfig

Role = Literal["producer", "admin", "consumer"]

# librdkafka properties whose values are secrets (librdkafka itself logs them as [redacted]).
SECRET_KEYS = ("sasl.password", "sasl.oauthbearer.client.secret", "ssl.key.password")


class KafkaClientError(RuntimeError):
    """A client cannot be configured (e.g. a secret's variable vanished since the load)."""


def client_config(cfg: KafkaConfig, role: Role) -> dict[str, Any]:
    """librdkafka settings shared by every client of ``role``: address, client id, security,
    and the `[kafka.librdkafka]` pass-through (producer-only keys for the producer alone).
    A new dict; the caller adds what its role needs."""
    if not cfg.bootstrap:
        raise KafkaClientError("kafka.bootstrap is empty: start a local broker or set it")
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap,
        "client.id": cfg.client_id,
        "security.protocol": cfg.security_protocol,
    }
    if cfg.security_protocol.startswith("SASL_"):
        conf["sasl.mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_mechanism == "OAUTHBEARER":
            if cfg.sasl_username:
                conf["sasl.oauthbearer.client.id"] = cfg.sasl_username
            if cfg.sasl_password_env:
                conf["sasl.oauthbearer.client.secret"] = _secret(cfg, "sasl_password_env")
        else:
            conf["sasl.username"] = cfg.sasl_username
            conf["sasl.password"] = _secret(cfg, "sasl_password_env")
    for key, prop in (
        ("ssl_ca_file", "ssl.ca.location"),
        ("ssl_certificate_file", "ssl.certificate.location"),
        ("ssl_key_file", "ssl.key.location"),
    ):
        if getattr(cfg, key):
            conf[prop] = getattr(cfg, key)
    if cfg.ssl_key_password_env:
        conf["ssl.key.password"] = _secret(cfg, "ssl_key_password_env")
    for key, value in cfg.librdkafka.items():
        if key in librdkafka.GLOBAL or (role == "producer" and key in librdkafka.PRODUCER):
            conf[key] = value
    return conf


def _secret(cfg: KafkaConfig, key: str) -> str:
    name = getattr(cfg, key)
    value = os.environ.get(name, "")
    if not value:  # checked at load; a child's environment may still differ
        raise KafkaClientError(f"kafka.{key}: environment variable {name} is not set (or empty)")
    return value


def scrub(text: str, conf: Mapping[str, Any]) -> str:
    """``text`` with the secret values of ``conf`` replaced by ``[redacted]``."""
    for key in SECRET_KEYS:
        value = conf.get(key)
        if value:
            text = text.replace(str(value), "[redacted]")
    return text


def describe(cfg: KafkaConfig) -> str:
    """How the brokers are reached, for logs and ``ctl status`` (no secret)."""
    proto = cfg.security_protocol
    if proto.startswith("SASL_"):
        who = f" as {cfg.sasl_username}" if cfg.sasl_username else ""
        return f"{proto} {cfg.sasl_mechanism}{who}"
    if proto == "SSL" and cfg.ssl_certificate_file:
        return "SSL with a client certificate"
    return proto
