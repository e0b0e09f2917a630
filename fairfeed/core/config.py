"""Configuration: TOML validated once at load into frozen dataclasses.

Every setting is declared once below, with its type and default; the loader rejects unknown
keys and wrong types with a message naming the file and the dotted key, so a typo stops the
daemon at start instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fairfeed.core import librdkafka
from fairfeed.core import options as adapter_options
from fairfeed.core.names import name_problem
from fairfeed.core.options import OPTIONS, AdapterOptions
from fairfeed.core.ranges import DAY, HOUR, WEEK, Range
from fairfeed.core.records import CLASS_CODES
from fairfeed.core.subscriptions import Stream


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class DaemonConfig:
    workers: int = 2
    heartbeat_interval: float = 0.2  # seconds between a child's beats
    heartbeat_timeout: float = 5.0  # a child silent this long is killed and restarted
    stop_timeout: float = 15.0  # graceful-stop deadline, seconds
    max_boot_failures: int = 5  # consecutive failures before the supervisor halts
    restart_backoff_base: float = 0.05
    restart_backoff_cap: float = 5.0
    shm_prefix: str = "fairfeed"
    live_view: str = "auto"  # auto (when stdout is a terminal) | on | off
    log_level: str = "INFO"
    max_instruments: int = 4096  # registry capacity (state arrays are sized once for it)
    max_sources: int = 128  # (provider, venue) pairs the registry can hold
    control_socket: str = ""  # unix socket path; "" = $RUNTIME_DIRECTORY or $XDG_RUNTIME_DIR
    control_group: str = ""  # group owning the socket (mode 0660); "" = the daemon's group
    control_max_clients: int = 32
    control_idle_timeout: float = 10.0  # a client silent (or mid-request) this long is dropped
    control_max_output: int = 1 << 20  # bytes of unsent answers per client before it is dropped
    state_file: str = ""  # live subscriptions; "" = $STATE_DIRECTORY or ~/.local/state/fairfeed


@dataclass(frozen=True)
class RingConfig:
    capacity: int = 1 << 16  # records per ingest worker ring, power of two
    # A full ring: the worker holds records back and pauses reading its sockets (pings too) at
    # most this long, then drops them (counted). <= MAX_BLOCK_TIMEOUT_MS; 0 drops at once.
    block_timeout_ms: float = 50.0
    # Records a worker may hold back while its ring is full: what its connections had already
    # read when reading paused (picows' read buffer grows to MBs under a flood: ~22k records
    # of 50-trade frames were seen), 8 MiB per worker.
    pending_records: int = 1 << 17
    read_batch: int = 4096  # compute reads at most this many records per ring per pass
    # Records wait at most this long in a connection's buffer before they are published to the
    # ring (and gap-checked), and in the rings before compute reads them: each stage's work is
    # paid per batch, not per frame. 0 = publish every socket read, read as soon as woken.
    # <= MAX_FLUSH_DELAY_MS.
    flush_delay_ms: float = 2.0
    dead_letter_bytes: int = 1 << 20  # per worker ring of malformed frames (power of two)


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = ""  # empty: start a local broker (Tansu) for this run
    ticks_topic: str = "fairfeed.ticks"
    fair_topic: str = "fairfeed.fair"
    dead_letter_topic: str = "fairfeed.deadletter"  # malformed provider messages, with errors
    anomalies_topic: str = "fairfeed.anomalies"  # anomaly episodes (start and end events)
    # mark / index prices, funding, open interest, liquidations (kinds 4-8 of the record)
    derivatives_topic: str = "fairfeed.derivatives"
    linger_ms: float = 5.0
    queue_max_messages: int = 100_000
    flush_timeout: float = 10.0  # seconds to flush at stop (the rest stays in the spool)
    stall_timeout: float = 30.0  # nothing delivered this long with messages waiting: new producer
    client_id: str = "fairfeed"
    # Output waits here while the broker cannot take it ("" = "spool" next to the state file).
    spool_dir: str = ""
    spool_max_bytes: int = 1 << 30  # beyond this, output is dropped (counted, announced)
    # Create missing topics (at start, after a broker restart). None (unset): true only for
    # the embedded local broker (no bootstrap); a real cluster's topics are its operators'.
    create_topics: bool | None = None
    topic_partitions: int = 3  # partitions of the topics fairfeed creates
    replication_factor: int = -1  # of the topics fairfeed creates; -1 = the broker's default
    # Security (docs/kafka-security.md). Secrets are never in the file: *_env name the
    # environment variables holding them, read when a client is created.
    security_protocol: str = "PLAINTEXT"  # one of SECURITY_PROTOCOLS
    sasl_mechanism: str = ""  # one of SASL_MECHANISMS, with a SASL_* protocol
    sasl_username: str = ""  # OAUTHBEARER: the OIDC client id
    sasl_password_env: str = ""  # OAUTHBEARER: the OIDC client secret
    ssl_ca_file: str = ""  # CA bundle (PEM) to verify the brokers; "" = the system's
    ssl_certificate_file: str = ""  # client certificate (PEM), for TLS client authentication
    ssl_key_file: str = ""  # its private key (PEM)
    ssl_key_password_env: str = ""  # the key's passphrase, if it has one
    # `[kafka.librdkafka]`: other client settings, checked against fairfeed/core/librdkafka.py
    librdkafka: dict[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.create_topics is None:  # frozen: resolved once, here
            object.__setattr__(self, "create_topics", not self.bootstrap)


@dataclass(frozen=True)
class FairConfig:
    """Fair-price methodology (definitions: ``fairfeed/hotpath/fairmethods.py``)."""

    method: str = "two_level"  # one of FAIR_METHODS
    inputs: str = "trades"  # trades | quotes | both
    stale_after: float = 10.0  # seconds; older sources are left out of the fair price
    min_interval: float = 0.05  # seconds between two fair prices of one instrument
    heartbeat_interval: float = 5.0  # re-emit an unchanged (or stale) instrument; 0 = never
    outlier_exclude: float = 0.05  # gate: exclude a source this far from the median; 0 = off
    outlier_readmit: float = 0.025  # ... readmit it once closer than this (hysteresis)
    volume_halflife: float = 60.0  # seconds, half-life of the volume EWMA (and variance)
    freshness_tau: float = 5.0  # seconds, venue weight × exp(-age / freshness_tau)
    venue_cap: float = 0.5  # largest share of one venue in the two-level weighted median
    min_venues: int = 2  # fewer venues used: status "degraded"
    window_bucket: float = 5.0  # seconds per bucket of the windowed volume-weighted median
    window_buckets: int = 12  # buckets in its window
    trim: float = 0.2  # trimmed mean: share of prices dropped at each end
    # perpetuals and dated futures: their mark prices are inputs too, one per source next to
    # its trades / quotes (never a spot or option instrument's)
    mark_inputs: bool = False


@dataclass(frozen=True)
class AnomalyThresholds:
    """Per data class or per instrument overrides of `[anomalies]` (unset = inherited)."""

    no_data_after: float | None = None
    no_data_adaptive: bool | None = None
    no_data_factor: float | None = None
    no_data_floor: float | None = None
    no_data_cap: float | None = None
    first_data_timeout: float | None = None
    divergence: float | None = None
    divergence_for: float | None = None
    divergence_clear: float | None = None
    latency_exchange_provider_ms: float | None = None
    latency_provider_local_ms: float | None = None
    clock_skew_ms: float | None = None
    latency_for: float | None = None
    rate_drop_ratio: float | None = None
    rate_drop_clear: float | None = None
    rate_floor: float | None = None
    rate_drop_for: float | None = None


@dataclass(frozen=True)
class AnomalyConfig:
    """Anomaly detection (`[anomalies]`, docs/anomalies.md); durations in seconds."""

    enabled: bool = True
    evaluate_interval: float = 0.25  # seconds between two evaluations
    no_data_after: float = 30.0  # a subscription silent this long (with its provider alive)
    # ... or, adaptive: factor x its longest recent inter-arrival time, within [floor, cap]
    no_data_adaptive: bool = False
    no_data_factor: float = 4.0
    no_data_floor: float = 5.0
    no_data_cap: float = 600.0
    first_data_timeout: float = 30.0  # a subscription without any data this long after start
    heartbeat_timeout: float = 10.0  # a provider that heartbeats, silent this long: disconnect
    divergence: float = 0.06  # |source price / fair - 1| beyond this ...
    divergence_for: float = 30.0  # ... for this long opens; ...
    divergence_clear: float = 0.04  # ... back within this closes (hysteresis)
    latency_exchange_provider_ms: float = 2000.0
    latency_provider_local_ms: float = 1000.0
    clock_skew_ms: float = 100.0  # a latency below minus this is clock skew
    latency_for: float = 10.0  # latencies / skew beyond their threshold this long opens
    latency_clear: float = 0.8  # latency / skew episodes close below threshold x this
    rate_drop_ratio: float = 0.2  # update rate below baseline x this ...
    rate_drop_clear: float = 0.5  # ... closes above baseline x this
    rate_floor: float = 1.0  # msgs/s: a baseline below this never alarms (illiquid)
    rate_drop_for: float = 60.0
    rate_drop_alpha: float = 1e-5  # significance of the Poisson tests that open and close a drop
    rate_fast: float = 10.0  # unused (the rate tests replaced the fast EWMA); old files still load
    rate_baseline: float = 600.0  # EWMA time constant of the baseline rate
    gap_quiet: float = 10.0  # a gap / ring-overflow episode ends after this long without more
    max_events: int = 4096  # event rows per evaluation (more transitions wait for the next)
    classes: dict[str, AnomalyThresholds] = field(default_factory=dict)
    instruments: dict[str, AnomalyThresholds] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus endpoint (`[metrics]`, docs/metrics.md)."""

    listen: str = "127.0.0.1:9464"  # host:port of /metrics, /healthz, /readyz; "" = no metrics
    public: bool = False  # allow a `listen` address that is not loopback (reachable from outside)
    max_series: int = 10000  # label sets per per-stream family; beyond: instrument="__overflow__"
    max_clients: int = 16  # HTTP connections served at once
    idle_timeout: float = 30.0  # seconds before an idle HTTP connection is closed
    header_timeout: float = 5.0  # seconds from a request's first byte to the end of its head


@dataclass(frozen=True)
class SimulatorConfig:
    """A local simulated provider server started by the daemon (`[providers.serve]`)."""

    prices: dict[str, float] = field(default_factory=dict)  # instrument -> start price
    rate: float = 1000.0  # events per second over all instruments, 0 = as fast as possible
    batch: int = 1  # events per frame
    quote_ratio: float = 0.5  # share of events that are quotes
    price_offset_bps: float = 0.0  # this provider's prices sit this far from the others
    volatility_bps: float = 1.0  # random-walk step, basis points
    heartbeat_interval: float = 1.0
    max_events: int = 0  # stop emitting after this many events (0 = never)
    seed: int = 0


@dataclass(frozen=True)
class ReplayConfig:
    """Recorded traffic played by a local server started by the daemon (`[providers.replay]`)."""

    capture: str  # a capture file (formats: docs/providers/replay.md)
    speed: float = 1.0  # 1 = original timing, 2 = twice as fast, 0 = as fast as possible
    connection: str = ""  # which recorded connection to play ("" = the first)
    keep_open: bool = True  # after the last frame keep the socket open (silent) or close it


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str  # one of PROVIDER_KINDS
    venue: str = ""  # default venue of its subscriptions (exchanges: the exchange itself)
    url: str = ""  # endpoint; empty when `serve` starts a local server
    serve: SimulatorConfig | None = None  # start a local server of this kind's protocol
    replay: ReplayConfig | None = None  # start a local server replaying a capture
    data_class: str = "spot"  # default data class of its subscriptions
    feed: str = ""  # protocol variant, e.g. coinbase "exchange" | "advanced"; "" = default
    api_key_env: str = ""  # environment variable holding the API key (never the key itself)
    tls: bool = True  # gRPC: TLS channel (real endpoints); false for local plaintext servers
    stale_after: float = 0.0  # no data and no heartbeat this long: reconnect (0 = protocol default)
    max_streams_per_connection: int = 0  # 0 = protocol limit (e.g. Binance 1024)
    subscribe_batch: int = 0  # streams per subscribe request (0 = protocol default)
    subscribe_interval: float = 0.25  # seconds between two subscribe requests (staggering)
    max_connection_age: float = 0.0  # reconnect proactively after this long (0 = protocol default)
    # largest WebSocket message accepted, bytes (0 = the adapter's default, sized to the
    # provider's biggest legitimate message); a bigger one is dropped and dead-lettered
    max_message_bytes: int = 0
    # `[providers.options]`: the adapter's own settings (fairfeed/core/options.py); None only
    # for a kind without an adapter (rejected at load)
    options: AdapterOptions | None = None

    def __post_init__(self) -> None:
        cls = OPTIONS.get(self.kind)
        if self.options is None and cls is not None:
            object.__setattr__(self, "options", cls())  # frozen: set once, here
        elif self.options is not None and type(self.options) is not cls:
            raise TypeError(
                f"provider {self.name!r}: kind {self.kind!r} takes "
                f"{cls.__name__ if cls else 'no options'}, not {type(self.options).__name__}"
            )


@dataclass(frozen=True)
class SubscriptionConfig:
    provider: str
    instruments: tuple[str, ...]
    venue: str = ""  # default: the provider's venue (vendors carry many venues)
    data_class: str = ""  # default: the provider's data class


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = DaemonConfig()
    ring: RingConfig = RingConfig()
    kafka: KafkaConfig = KafkaConfig()
    fair: FairConfig = FairConfig()
    anomalies: AnomalyConfig = AnomalyConfig()
    metrics: MetricsConfig = MetricsConfig()
    providers: tuple[ProviderConfig, ...] = ()
    subscriptions: tuple[SubscriptionConfig, ...] = ()
    source: str = "<embedded default>"  # where this configuration was read from

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def streams(self) -> tuple[Stream, ...]:
        """Every subscribed stream, defaults applied, without duplicates, in configuration
        order."""
        out: dict[Stream, None] = {}
        for sub in self.subscriptions:
            p = self.provider(sub.provider)
            venue = sub.venue or p.venue
            dclass = sub.data_class or p.data_class
            for inst in sub.instruments:
                out[Stream(p.name, venue, inst, dclass)] = None
        return tuple(out)


PROVIDER_KINDS = tuple(OPTIONS)  # every kind has an adapter, and so its options
FAIR_METHODS = ("two_level", "median", "inverse_variance", "windowed_vwm", "trimmed_mean")
FAIR_INPUTS = ("trades", "quotes", "both")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# While its ring is full a worker reads no socket, so pings go unanswered: a pause must stay
# well under the shortest ping deadline we run with, our own client's pong timeout (>= 1 s).
MAX_BLOCK_TIMEOUT_MS = 500.0
# providers.max_message_bytes: below 4 KiB a subscription answer may not fit; above 64 MiB one
# hostile message costs a worker more memory than every ring of a large daemon together.
MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES = 1 << 12, 1 << 26
MIN_CONTROL_OUTPUT, MAX_CONTROL_OUTPUT = 1 << 16, 1 << 28  # daemon.control_max_output, bytes
# A record may wait flush_delay_ms in ingest and again in compute. The default (2 ms) keeps the
# sum inside a 5 ms receive -> produce() budget; longer delays trade latency for CPU (fewer,
# larger Kafka messages: docs/latency.md), up to where a stage's timers (pings, heartbeats,
# commands) would wait noticeably.
MAX_FLUSH_DELAY_MS = 50.0


# Instrument x source cells of the shared state (stream board, last ids, metrics, fair state):
# 8 x the default capacity, a few GiB of shared memory and compute state at most.
MAX_STATE_CELLS = 1 << 22

_R = Range
_SECONDS = _R(0, DAY, lo_open=True)  # a duration that must be positive
_SECONDS_OR_OFF = _R(0, DAY)  # a duration where 0 means off / the protocol default
_SHARE = _R(0, 1)  # a fraction
_THRESHOLDS = {
    "no_data_after": _R(0, WEEK),
    "no_data_factor": _R(0, 1000),
    "no_data_floor": _R(0, WEEK),
    "no_data_cap": _R(0, WEEK),
    "first_data_timeout": _R(0, WEEK),
    "divergence": _R(0, 10),
    "divergence_for": _SECONDS_OR_OFF,
    "divergence_clear": _R(0, 10),
    "latency_exchange_provider_ms": _R(0, HOUR * 1000),
    "latency_provider_local_ms": _R(0, HOUR * 1000),
    "clock_skew_ms": _R(0, HOUR * 1000),
    "latency_for": _SECONDS_OR_OFF,
    "rate_drop_ratio": _SHARE,
    "rate_drop_clear": _SHARE,
    "rate_floor": _R(0, 1e9),
    "rate_drop_for": _SECONDS_OR_OFF,
}
# The allowed range of every numeric setting, per configuration class (and its subclasses).
RANGES: dict[type, dict[str, Range]] = {
    DaemonConfig: {
        "workers": _R(1, 256),
        "heartbeat_interval": _R(0, 60, lo_open=True),
        "heartbeat_timeout": _R(0, HOUR, lo_open=True),
        "stop_timeout": _R(0, HOUR, lo_open=True),
        "max_boot_failures": _R(1, 1000),
        "restart_backoff_base": _R(0, HOUR, lo_open=True),
        "restart_backoff_cap": _R(0, DAY, lo_open=True),
        "max_instruments": _R(1, 1 << 20),
        "max_sources": _R(1, 1 << 12),
        "control_max_clients": _R(1, 1024),
        "control_idle_timeout": _R(0, HOUR, lo_open=True),
        "control_max_output": _R(MIN_CONTROL_OUTPUT, MAX_CONTROL_OUTPUT),
    },
    RingConfig: {
        "capacity": _R(64, 1 << 24, power_of_two=True),
        "block_timeout_ms": _R(
            0,
            MAX_BLOCK_TIMEOUT_MS,
            why="reading (pings included) is paused that long when the ring is full, and the "
            "WebSocket client's pong deadline is 1 s",
        ),
        "pending_records": _R(1, 1 << 22),
        "read_batch": _R(1, 1 << 20),
        "flush_delay_ms": _R(
            0,
            MAX_FLUSH_DELAY_MS,
            why="a record waits up to this long in ingest and again in compute before it is "
            "produced",
        ),
        "dead_letter_bytes": _R(1 << 12, 1 << 30, power_of_two=True),
    },
    KafkaConfig: {
        "linger_ms": _R(0, 1000),
        "queue_max_messages": _R(1, 10_000_000),
        "flush_timeout": _R(0, HOUR, lo_open=True),
        "stall_timeout": _R(1, HOUR),
        "spool_max_bytes": _R(1 << 20, 1 << 40),
        "topic_partitions": _R(1, 10_000),
        "replication_factor": _R(1, 32, off=-1),
    },
    FairConfig: {
        "stale_after": _SECONDS,
        "min_interval": _R(0, HOUR),
        "heartbeat_interval": _R(0, HOUR),
        "outlier_exclude": _SHARE,
        "outlier_readmit": _SHARE,
        "volume_halflife": _R(0, WEEK, lo_open=True),
        "freshness_tau": _SECONDS,
        "venue_cap": _R(0, 1, lo_open=True),
        "min_venues": _R(1, 1 << 12),
        "window_bucket": _R(0, HOUR, lo_open=True),
        "window_buckets": _R(1, 256),
        "trim": _R(0, 0.49),
    },
    AnomalyThresholds: _THRESHOLDS,
    AnomalyConfig: {
        **_THRESHOLDS,
        "evaluate_interval": _R(0, 60, lo_open=True),
        "heartbeat_timeout": _R(0, HOUR, lo_open=True),
        "latency_clear": _R(0, 1, lo_open=True),
        "rate_drop_alpha": _R(0, 0.49, lo_open=True),
        "rate_fast": _SECONDS,
        "rate_baseline": _R(0, WEEK, lo_open=True),
        "gap_quiet": _SECONDS,
        "max_events": _R(16, 1 << 20),
    },
    MetricsConfig: {
        "max_series": _R(1, 1_000_000),
        "max_clients": _R(1, 1024),
        "idle_timeout": _R(0, HOUR, lo_open=True),
        "header_timeout": _R(0, HOUR, lo_open=True),
    },
    SimulatorConfig: {
        "prices": _R(0, 1e12, lo_open=True),  # each start price
        "rate": _R(0, 1e7),
        "batch": _R(1, 10_000),
        "quote_ratio": _SHARE,
        "price_offset_bps": _R(-10_000, 10_000),
        "volatility_bps": _R(0, 10_000),
        "heartbeat_interval": _R(0, HOUR, lo_open=True),
        "max_events": _R(0, 1e15),
        "seed": _R(0, 2**32 - 1),
    },
    ReplayConfig: {"speed": _R(0, 1e6)},
    ProviderConfig: {
        "stale_after": _SECONDS_OR_OFF,
        "max_streams_per_connection": _R(0, 100_000),
        "subscribe_batch": _R(0, 100_000),
        "subscribe_interval": _R(0, HOUR),
        "max_connection_age": _R(0, 30 * DAY),
        "max_message_bytes": _R(MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES, off=0),
    },
    **adapter_options.RANGES,
}


def range_of(cls: type, key: str) -> Range | None:
    """The range of setting ``key`` of configuration class ``cls`` (or of a base class)."""
    for klass in cls.__mro__:
        r = RANGES.get(klass, {}).get(key)
        if r is not None:
            return r
    return None


def ranges_markdown() -> str:
    """The table of every numeric setting's range that docs/configuration.md carries."""
    sections = [
        ("daemon", DaemonConfig), ("ring", RingConfig), ("kafka", KafkaConfig),
        ("fair", FairConfig), ("anomalies", AnomalyConfig), ("metrics", MetricsConfig),
        ("providers", ProviderConfig), ("providers.serve", SimulatorConfig),
        ("providers.replay", ReplayConfig),
    ] + [(f"providers.options ({kind})", cls) for kind, cls in OPTIONS.items()]  # fmt: skip
    rows = ["| setting | allowed |", "|---|---|"]
    for where, cls in sections:
        for f in dataclasses.fields(cls):
            r = range_of(cls, f.name)
            if r is not None:
                rows.append(f"| `{where}.{f.name}` | {r.text()} |")
    return "\n".join(rows) + "\n"


def load(path: str | Path | None = None) -> Config:
    """Load and validate ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        text = resources.files("fairfeed.core").joinpath("default.toml").read_text()
        return loads(text, "<embedded default>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text
        raise ConfigError(
            f"{p}: not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        ) from None
    return loads(text, str(p))


def loads(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    data["source"] = source
    cfg = _build(Config, data, source, "")
    _check(cfg)
    return cfg


def _build(cls: type, data: Any, source: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a table")
    if cls is ProviderConfig and "options" in data:
        return _build_provider(data, source, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            allowed = ", ".join(sorted(n for n in names if n != "source"))
            raise ConfigError(
                f"{source}: unknown key {_join(where, key)!r} (allowed here: {allowed})"
            )
    kwargs = {
        key: _value(hints[key], value, source, _join(where, key)) for key, value in data.items()
    }
    for key, value in kwargs.items():
        _check_range(cls, key, value, source, _join(where, key))
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        raise ConfigError(
            f"{source}: {where or 'top level'}: missing required key(s) {', '.join(missing)}"
        ) from exc


def _build_provider(data: dict, source: str, where: str) -> ProviderConfig:
    """A provider whose `[providers.options]` table is checked against its kind's options."""
    data = dict(data)
    raw = data.pop("options")
    p = _build(ProviderConfig, data, source, where)
    cls = OPTIONS.get(p.kind)
    if cls is None:
        return p  # the unknown kind is reported by _check
    try:
        opts = _build(cls, raw, source, f"{where}.options")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (provider {p.name!r}, kind {p.kind})") from None
    return dataclasses.replace(p, options=opts)


def _check_range(cls: type, key: str, value: Any, source: str, where: str) -> None:
    r = range_of(cls, key)
    if r is None or value is None:
        return
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for name, v in items:
        if isinstance(v, int | float) and (problem := r.problem(v)):
            key = where if name is None else f"{where}.{name}"
            raise ConfigError(f"{source}: {key}: {problem}")


def _value(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        for a in args[:-1]:  # the first type that accepts the value; the last one reports
            try:
                return _value(a, value, source, key)
            except ConfigError:
                pass
        return _value(args[-1], value, source, key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected an array, got {_tname(value)}")
        return tuple(_value(item, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        kt, vt = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a table, got {_tname(value)}")
        return {
            _value(kt, k, source, key): _value(vt, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key}: expected a number, got {_tname(value)}")
        if not math.isfinite(value):  # TOML has nan and inf; no setting means either
            raise ConfigError(f"{source}: {key}: must be a finite number, got {value}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {_tname(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {_tname(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {_tname(value)}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported setting type {hint}")  # pragma: no cover


def _check(cfg: Config) -> None:
    """Cross-field rules that a type alone cannot express."""
    src = cfg.source

    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{src}: {key}: {msg}")

    d = cfg.daemon
    if d.heartbeat_timeout <= 2 * d.heartbeat_interval:
        fail("daemon.heartbeat_timeout", "must exceed twice daemon.heartbeat_interval")
    if d.restart_backoff_cap < d.restart_backoff_base:
        fail("daemon.restart_backoff_cap", "must be at least daemon.restart_backoff_base")
    if d.max_instruments * d.max_sources > MAX_STATE_CELLS:
        fail(
            "daemon.max_instruments",
            f"max_instruments x max_sources ({d.max_instruments} x {d.max_sources}) must be at "
            f"most {MAX_STATE_CELLS}: the shared state is sized for every pair at start",
        )
    if d.control_group:
        try:
            grp.getgrnam(d.control_group)
        except KeyError:
            fail("daemon.control_group", f"no group {d.control_group!r} on this machine")
    if d.live_view not in ("auto", "on", "off"):
        fail("daemon.live_view", f"must be auto, on or off, got {d.live_view!r}")
    if d.log_level.upper() not in LOG_LEVELS:
        fail("daemon.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    bt = cfg.ring.block_timeout_ms
    if cfg.fair.method not in FAIR_METHODS:
        fail("fair.method", f"must be one of {', '.join(FAIR_METHODS)}, got {cfg.fair.method!r}")
    if cfg.fair.inputs not in FAIR_INPUTS:
        fail("fair.inputs", f"must be one of {', '.join(FAIR_INPUTS)}, got {cfg.fair.inputs!r}")
    _check_fair(cfg.fair, d, fail)
    _check_anomalies(cfg, fail)
    _check_metrics(cfg.metrics, fail)
    if not (cfg.kafka.ticks_topic and cfg.kafka.fair_topic and cfg.kafka.dead_letter_topic
            and cfg.kafka.anomalies_topic and cfg.kafka.derivatives_topic):  # fmt: skip
        fail("kafka", "topic names must not be empty")
    _check_kafka(cfg.kafka, fail)
    seen: set[str] = set()
    for i, p in enumerate(cfg.providers):
        key = f"providers[{i}]"
        if problem := name_problem("provider", p.name):
            fail(f"{key}.name", problem)
        if p.venue and (problem := name_problem("venue", p.venue)):
            fail(f"{key}.venue", problem)
        if p.name in seen:
            fail(f"{key}.name", f"duplicate provider name {p.name!r}")
        seen.add(p.name)
        if p.kind == "replay":
            fail(
                f"{key}.kind",
                '"replay" is not a provider kind: give the provider the kind of the recorded '
                "protocol and a [providers.replay] table (docs/providers/replay.md)",
            )
        if p.kind not in PROVIDER_KINDS:
            fail(
                f"{key}.kind",
                f"unknown provider kind {p.kind!r} (known: {', '.join(PROVIDER_KINDS)})",
            )
        for option, problem in adapter_options.check(p.options):  # type: ignore[arg-type]
            fail(f"{key}.options.{option}", f"{problem} (provider {p.name!r})")
        if p.data_class not in CLASS_CODES:
            fail(f"{key}.data_class", f"must be one of {', '.join(CLASS_CODES)}")
        _check_kind_rules(key, p, fail)
        if p.kind == "simulator" and not p.venue:
            fail(f"{key}.venue", "must name the venue this provider's data comes from")
        if p.stale_after and bt / 1000 > p.stale_after / 2:
            fail(
                f"{key}.stale_after",
                f"{p.stale_after:g} s is less than twice ring.block_timeout_ms ({bt:g} ms): "
                f"a connection paused by a full ring would be judged dead (provider {p.name!r})",
            )
        if p.serve is not None and p.replay is not None:
            fail(key, "[providers.serve] and [providers.replay] exclude each other")
        if not p.url and p.serve is None and p.replay is None:
            fail(
                f"{key}.url",
                "is required unless [providers.serve] or [providers.replay] starts a local server",
            )
        if p.replay is not None and not Path(p.replay.capture).is_file():
            fail(f"{key}.replay.capture", f"no such file: {p.replay.capture}")
        if p.serve is not None and not p.serve.prices:
            fail(f"{key}.serve.prices", "must give a start price for at least one instrument")
    classes: dict[str, tuple[str, str]] = {}  # instrument -> (data class, where it was set)
    for i, s in enumerate(cfg.subscriptions):
        key = f"subscriptions[{i}]"
        if s.provider not in seen:
            fail(f"{key}.provider", f"unknown provider {s.provider!r}")
        if not s.instruments:
            fail(f"{key}.instruments", "must list at least one instrument")
        if s.venue and (problem := name_problem("venue", s.venue)):
            fail(f"{key}.venue", problem)
        for inst in s.instruments:
            if problem := name_problem("instrument", inst):
                fail(f"{key}.instruments", problem)
        p = cfg.provider(s.provider)
        if not (s.venue or p.venue):
            fail(f"{key}.venue", f"is required: provider {p.name!r} has no default venue")
        if s.data_class and s.data_class not in CLASS_CODES:
            fail(f"{key}.data_class", f"must be one of {', '.join(CLASS_CODES)}")
        dclass = s.data_class or p.data_class
        allowed = p.options.data_classes()  # type: ignore[union-attr]
        if dclass not in allowed:
            fail(
                f"{key}.data_class",
                f"{dclass} cannot be subscribed from provider {p.name!r} (kind {p.kind}"
                f"{_market(p)}: {', '.join(allowed)})",
            )
        for inst in s.instruments:
            first = classes.setdefault(inst, (dclass, key))
            if first[0] != dclass:
                fail(
                    f"{key}.instruments",
                    f"{inst!r} is {dclass} here but {first[0]} in {first[1]}: an instrument "
                    "name has one data class (name the other one differently, e.g. BTC-USD-PERP)",
                )
        served = p.serve
        if served is not None and p.kind == "simulator":  # other servers name symbols their way
            for inst in s.instruments:
                if inst not in served.prices:
                    fail(f"{key}.instruments", f"{inst!r} has no start price in the simulator")
        if isinstance(p.options, adapter_options.KaikoOptions):
            _check_kaiko_codes(cfg.providers.index(p), p, s, fail)
        if isinstance(p.options, adapter_options.KrakenFuturesOptions):
            _check_kraken_futures(i, p, s, fail)


def _check_kraken_futures(index: int, p: ProviderConfig, s: SubscriptionConfig, fail: Any) -> None:
    """Every Kraken Futures subscription names a product (by rule or the `products` option)
    of its own data class (the product id says perpetual or future)."""
    dclass = s.data_class or p.data_class
    products = p.options.products  # type: ignore[union-attr]
    for inst in s.instruments:
        if problem := adapter_options.kraken_futures_problem(inst, dclass, products):
            fail(f"subscriptions[{index}].instruments", f"{problem} (provider {p.name!r})")


def _check_kind_rules(key: str, p: ProviderConfig, fail: Any) -> None:
    """The provider's feed and url fit its kind (its data classes are checked per
    subscription: a default class no subscription uses is harmless)."""
    opts = p.options
    assert opts is not None  # an unknown kind was reported before
    if p.feed not in opts.FEEDS:
        known = ", ".join(repr(f) for f in opts.FEEDS)
        fail(f"{key}.feed", f"kind {p.kind} has no feed {p.feed!r} (known: {known})")
    if p.url:
        scheme = p.url.split("://", 1)[0] if "://" in p.url else ""
        try:
            parts = urlsplit(p.url if scheme else f"//{p.url}")
            host, _ = parts.hostname, parts.port  # .port raises on a bad port
        except ValueError as exc:
            fail(f"{key}.url", f"not a valid URL ({exc}): {p.url!r}")
        schemes = ", ".join(f"{s}://" if s else "host:port" for s in opts.URL_SCHEMES)
        if scheme not in opts.URL_SCHEMES:
            fail(f"{key}.url", f"kind {p.kind} connects to {schemes}, not {p.url!r}")
        if not host:
            fail(f"{key}.url", f"has no host: {p.url!r}")


def _market(p: ProviderConfig) -> str:
    market = getattr(p.options, "market", "")
    return f", market {market}" if market else ""


def _check_kaiko_codes(index: int, p: ProviderConfig, s: SubscriptionConfig, fail: Any) -> None:
    """Every Kaiko subscription whose code does not follow from its name has a `codes` entry
    (else the adapter would subscribe a code Kaiko does not have and hear nothing)."""
    venue, dclass = s.venue or p.venue, s.data_class or p.data_class
    codes = p.options.codes  # type: ignore[union-attr]
    for inst in s.instruments:
        key = f"{venue}:{dclass}:{inst}"
        if key not in codes and not adapter_options.kaiko_code_rule_applies(dclass, inst):
            fail(
                f"providers[{index}].options.codes",
                f'no Kaiko code for {key!r}: add "{key}" = "<kaiko code>" from Kaiko\'s '
                "reference data ("
                + (
                    "option codes differ by exchange"
                    if dclass == "option"
                    else "only futures named BASE-QUOTE-YYMMDD get a code by rule"
                )
                + f"; provider {p.name!r})",
            )


def _check_kafka(k: KafkaConfig, fail: typing.Callable[[str, str], None]) -> None:
    if k.topic_partitions < 1:
        fail("kafka.topic_partitions", "must be >= 1")
    if k.replication_factor != -1 and k.replication_factor < 1:
        fail("kafka.replication_factor", "must be >= 1, or -1 for the broker's default")
    proto = k.security_protocol
    if proto not in SECURITY_PROTOCOLS:
        fail("kafka.security_protocol", f"must be one of {', '.join(SECURITY_PROTOCOLS)}, "
             f"got {proto!r}")  # fmt: skip
    if not k.bootstrap and proto != "PLAINTEXT":
        fail("kafka.security_protocol", "the embedded local broker (kafka.bootstrap empty) "
             "speaks PLAINTEXT only: set kafka.bootstrap to a secured cluster")  # fmt: skip
    sasl, tls = proto.startswith("SASL_"), proto.endswith("SSL")
    _check_sasl(k, sasl, fail)
    files = ("ssl_ca_file", "ssl_certificate_file", "ssl_key_file")
    for key in files:
        path = getattr(k, key)
        if not path:
            continue
        if not tls:
            fail(f"kafka.{key}", f"is only used with security_protocol SSL or SASL_SSL, "
                 f"not {proto}")  # fmt: skip
        if not Path(path).is_file():
            fail(f"kafka.{key}", f"no such file: {path}")
        if not os.access(path, os.R_OK):
            fail(f"kafka.{key}", f"{path} is not readable by this user (uid {os.getuid()})")
    if bool(k.ssl_certificate_file) != bool(k.ssl_key_file):
        fail("kafka.ssl_key_file" if k.ssl_certificate_file else "kafka.ssl_certificate_file",
             "a client certificate and its key go together: set both or neither")  # fmt: skip
    if k.ssl_key_password_env:
        if not k.ssl_key_file:
            fail(
                "kafka.ssl_key_password_env",
                "is the passphrase of kafka.ssl_key_file, which is not set",
            )
        _check_env("kafka.ssl_key_password_env", k.ssl_key_password_env, fail)
    for key, value in k.librdkafka.items():
        problem = librdkafka.check(key)
        if problem:
            fail(f"kafka.librdkafka.{key!r}", problem)
        if key.startswith("ssl.") and not tls:
            fail(f"kafka.librdkafka.{key!r}", f"a TLS setting, but security_protocol is {proto}")
        if key.startswith("sasl.") and not sasl:
            fail(f"kafka.librdkafka.{key!r}", f"a SASL setting, but security_protocol is {proto}")
        if isinstance(value, str) and not value:
            fail(f"kafka.librdkafka.{key!r}", "must not be empty (leave the key out instead)")


def _check_sasl(k: KafkaConfig, sasl: bool, fail: typing.Callable[[str, str], None]) -> None:
    given = [key for key in ("sasl_mechanism", "sasl_username", "sasl_password_env")
             if getattr(k, key)]  # fmt: skip
    if not sasl:
        if given:
            fail(f"kafka.{given[0]}", "is only used with security_protocol SASL_PLAINTEXT or "
                 f"SASL_SSL, not {k.security_protocol}")  # fmt: skip
        return
    if k.sasl_mechanism not in SASL_MECHANISMS:
        fail("kafka.sasl_mechanism", f"must be one of {', '.join(SASL_MECHANISMS)} with "
             f"security_protocol {k.security_protocol}, got {k.sasl_mechanism!r}")  # fmt: skip
    if k.sasl_mechanism == "OAUTHBEARER":
        # fairfeed has no token callback of its own: librdkafka fetches tokens itself (OIDC).
        extra = k.librdkafka
        if extra.get("sasl.oauthbearer.method") != "oidc" and not extra.get(
            "enable.sasl.oauthbearer.unsecure.jwt"
        ):
            fail("kafka.librdkafka", 'OAUTHBEARER needs "sasl.oauthbearer.method" = "oidc" '
                 'and "sasl.oauthbearer.token.endpoint.url" in [kafka.librdkafka]')  # fmt: skip
        if extra.get("sasl.oauthbearer.method") == "oidc":
            if not extra.get("sasl.oauthbearer.token.endpoint.url"):
                fail("kafka.librdkafka", 'OIDC needs "sasl.oauthbearer.token.endpoint.url"')
            if not (k.sasl_username and k.sasl_password_env):
                fail("kafka.sasl_username", "OIDC needs the client id (sasl_username) and the "
                     "variable holding its secret (sasl_password_env)")  # fmt: skip
    elif not k.sasl_username:
        fail("kafka.sasl_username", f"is required with sasl_mechanism {k.sasl_mechanism}")
    elif not k.sasl_password_env:
        fail("kafka.sasl_password_env", f"is required with sasl_mechanism {k.sasl_mechanism}: "
             "the name of the environment variable holding the password")  # fmt: skip
    if k.sasl_password_env:
        _check_env("kafka.sasl_password_env", k.sasl_password_env, fail)


def _check_env(key: str, name: str, fail: typing.Callable[[str, str], None]) -> None:
    """The variable ``name`` must be set and not empty (its value is never shown)."""
    if not _ENV_NAME.fullmatch(name):
        # Not echoed: it may be the secret itself, put in the file by mistake.
        fail(key, "must name an environment variable (upper case letters, digits and _, e.g. "
             "FAIRFEED_KAFKA_PASSWORD); the value given is not shown in case it is the secret "
             "itself, which never goes in the file")  # fmt: skip
    if not os.environ.get(name):
        fail(key, f"environment variable {name} is not set (or empty)")


def _check_metrics(m: MetricsConfig, fail: Any) -> None:
    if m.listen:
        host, sep, port = m.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            fail("metrics.listen", f"must be host:port (port 0 = any free port), got {m.listen!r}")
        if not m.public and not _loopback(host.strip("[]")):
            fail(
                "metrics.listen",
                f"{host} is not a loopback address: /metrics and the health checks would be "
                "reachable from the network; set metrics.public = true to mean it",
            )
    if m.header_timeout > m.idle_timeout:
        fail(
            "metrics.header_timeout",
            f"must be > 0 and <= metrics.idle_timeout ({m.idle_timeout:g}), "
            f"got {m.header_timeout:g}",
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _check_anomalies(cfg: Config, fail: Any) -> None:
    an = cfg.anomalies
    for c in an.classes:
        if c not in CLASS_CODES:
            fail(f"anomalies.classes.{c}", f"unknown data class (known: {', '.join(CLASS_CODES)})")
    scopes = [(f"anomalies.classes.{c}", c, "") for c in an.classes]
    scopes += [(f"anomalies.instruments.{i}", "", i) for i in an.instruments]
    for where, dclass, inst in [("anomalies", "", ""), *scopes]:
        t = anomaly_thresholds(an, dclass, inst)
        if t["divergence_clear"] > t["divergence"]:
            fail(f"{where}.divergence_clear", "must not exceed divergence (hysteresis)")
        if t["rate_drop_clear"] < t["rate_drop_ratio"]:
            fail(f"{where}.rate_drop_clear", "must not be below rate_drop_ratio (hysteresis)")
        floor, cap = t["no_data_floor"], t["no_data_cap"]
        if t["no_data_adaptive"] and not (t["no_data_factor"] > 0 and 0 < floor <= cap):
            fail(f"{where}.no_data_floor", "adaptive no data: factor > 0, 0 < floor <= cap")


def anomaly_thresholds(an: AnomalyConfig, data_class: str, instrument: str) -> dict[str, float]:
    """The thresholds that apply to one instrument: instrument over class over `[anomalies]`.

    A scope that sets ``divergence`` (or ``rate_drop_ratio``) without its clear level gets the
    clear level scaled by the same factor as the global pair, so hysteresis is kept.
    """
    out = {f.name: getattr(an, f.name) for f in dataclasses.fields(AnomalyThresholds)}
    for scope in (an.classes.get(data_class), an.instruments.get(instrument)):
        if scope is None:
            continue
        for f in dataclasses.fields(AnomalyThresholds):
            v = getattr(scope, f.name)
            if v is not None:
                out[f.name] = v
        if scope.divergence is not None and scope.divergence_clear is None and an.divergence > 0:
            out["divergence_clear"] = scope.divergence * an.divergence_clear / an.divergence
        if (scope.rate_drop_ratio is not None and scope.rate_drop_clear is None
                and an.rate_drop_ratio > 0):  # fmt: skip
            out["rate_drop_clear"] = scope.rate_drop_ratio * an.rate_drop_clear / an.rate_drop_ratio
    return out


def _check_fair(f: FairConfig, d: DaemonConfig, fail: typing.Callable[[str, str], None]) -> None:
    if f.mark_inputs and 2 * d.max_instruments * d.max_sources > MAX_STATE_CELLS:
        fail(
            "fair.mark_inputs",
            f"needs 2 x max_instruments x max_sources (2 x {d.max_instruments} x "
            f"{d.max_sources}) at most {MAX_STATE_CELLS}: the fair-price state holds a mark "
            "slot next to every source",
        )
    if 0 < f.heartbeat_interval < f.min_interval:
        fail("fair.heartbeat_interval", "must be 0 (off) or >= fair.min_interval")
    if f.outlier_readmit > f.outlier_exclude:
        fail("fair.outlier_readmit", "must be between 0 and fair.outlier_exclude")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _tname(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
