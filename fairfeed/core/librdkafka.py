"""Which librdkafka settings `[kafka.librdkafka]` may pass through to the Kafka clients.

The table is for what fairfeed has no key of its own for (socket and TLS tuning, OAuth token
endpoints, debug contexts). It is checked at load against these lists: a key fairfeed sets
itself, or one that would break a delivery guarantee, is refused with the reason; any other
key not listed is reported as unknown (a typo must not be passed on and ignored).

``GLOBAL`` keys go to every client (producer, admin, consumer); ``PRODUCER`` keys only to the
producer (librdkafka warns about producer keys given to other clients).
"""

from __future__ import annotations

import difflib

GLOBAL = frozenset(
    {
        "api.version.request",
        "api.version.request.timeout.ms",
        "broker.address.family",
        "broker.address.ttl",
        "client.dns.lookup",
        "client.rack",
        "connections.max.idle.ms",
        "debug",
        "enable.sasl.oauthbearer.unsecure.jwt",
        "enable.ssl.certificate.verification",
        "log.connection.close",
        "log_level",
        "message.max.bytes",
        "metadata.max.age.ms",
        "receive.message.max.bytes",
        "reconnect.backoff.max.ms",
        "reconnect.backoff.ms",
        "retry.backoff.max.ms",
        "retry.backoff.ms",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.extensions",
        "sasl.oauthbearer.method",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.token.endpoint.url",
        "socket.connection.setup.timeout.ms",
        "socket.keepalive.enable",
        "socket.max.fails",
        "socket.nagle.disable",
        "socket.receive.buffer.bytes",
        "socket.send.buffer.bytes",
        "socket.timeout.ms",
        "ssl.ca.certificate.stores",
        "ssl.cipher.suites",
        "ssl.crl.location",
        "ssl.curves.list",
        "ssl.endpoint.identification.algorithm",
        "ssl.sigalgs.list",
        "topic.metadata.propagation.max.ms",
        "topic.metadata.refresh.fast.interval.ms",
        "topic.metadata.refresh.interval.ms",
        "topic.metadata.refresh.sparse",
    }
)

PRODUCER = frozenset(
    {
        "batch.num.messages",
        "batch.size",
        "compression.level",
        "queue.buffering.max.kbytes",
        "sticky.partitioning.linger.ms",
    }
)

_OWN = "set by fairfeed from kafka.{}"
_SECRET = "a secret: never in the file; give the name of an environment variable in kafka.{}"
_ORDER = "per-instrument order and no loss rely on fairfeed's value"

REFUSED: dict[str, str] = {
    "bootstrap.servers": _OWN.format("bootstrap"),
    "metadata.broker.list": _OWN.format("bootstrap"),
    "client.id": _OWN.format("client_id"),
    "security.protocol": _OWN.format("security_protocol"),
    "sasl.mechanism": _OWN.format("sasl_mechanism"),
    "sasl.mechanisms": _OWN.format("sasl_mechanism"),
    "sasl.username": _OWN.format("sasl_username"),
    "sasl.password": _SECRET.format("sasl_password_env"),
    "sasl.oauthbearer.client.id": _OWN.format("sasl_username (OAUTHBEARER)"),
    "sasl.oauthbearer.client.secret": _SECRET.format("sasl_password_env (OAUTHBEARER)"),
    "ssl.ca.location": _OWN.format("ssl_ca_file"),
    "ssl.certificate.location": _OWN.format("ssl_certificate_file"),
    "ssl.key.location": _OWN.format("ssl_key_file"),
    "ssl.key.password": _SECRET.format("ssl_key_password_env"),
    "ssl.key.pem": _SECRET.format("ssl_key_file (a file path)"),
    "ssl.keystore.password": _SECRET.format("ssl_key_password_env"),
    "linger.ms": _OWN.format("linger_ms"),
    "queue.buffering.max.ms": _OWN.format("linger_ms"),
    "queue.buffering.max.messages": _OWN.format("queue_max_messages"),
    "acks": f"fairfeed requires acks=all (a message is acknowledged once every in-sync replica "
    f"has it); {_ORDER}",
    "request.required.acks": "fairfeed requires acks=all; " + _ORDER,
    "enable.idempotence": "fairfeed requires the idempotent producer: retries must neither "
    "duplicate nor reorder a key's messages",
    "enable.gapless.guarantee": "the sink's spool replaces a failed producer itself; " + _ORDER,
    "max.in.flight.requests.per.connection": "bounded by the idempotent producer; " + _ORDER,
    "max.in.flight": "bounded by the idempotent producer; " + _ORDER,
    "message.timeout.ms": "fairfeed retries forever (0): a message that timed out would be "
    "resent out of order; the sink replaces a stalled producer after kafka.stall_timeout",
    "delivery.timeout.ms": "same as message.timeout.ms: fairfeed retries forever; use "
    "kafka.stall_timeout",
    "retries": "fairfeed retries forever; " + _ORDER,
    "message.send.max.retries": "fairfeed retries forever; " + _ORDER,
    "compression.type": "fairfeed sets lz4",
    "compression.codec": "fairfeed sets lz4",
    "allow.auto.create.topics": "topics are created by fairfeed's own check (kafka.create_topics, "
    "kafka.topic_partitions, kafka.replication_factor), never with the broker's defaults",
    "partitioner": "a key's partition must not change between runs (per-instrument order); "
    "fairfeed keeps librdkafka's default",
    "transactional.id": "fairfeed does not use transactions (the spool gives at-least-once)",
    "queuing.strategy": _ORDER,
}


def check(key: str) -> str:
    """Why ``key`` cannot be passed through ("" when it can)."""
    if key in GLOBAL or key in PRODUCER:
        return ""
    if key in REFUSED:
        return f"refused: {REFUSED[key]}"
    near = difflib.get_close_matches(key, [*GLOBAL, *PRODUCER, *REFUSED], n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return (
        f"unknown or unsupported librdkafka key{hint}; the keys that may be passed through "
        "are listed in docs/configuration.md"
    )
