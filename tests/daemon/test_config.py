"""Configuration: validated once at load, precise errors naming the file and the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fairfeed.core import config
from fairfeed.core.config import ConfigError

PROVIDER = '[[providers]]\nname = "a"\nkind = "simulator"\nvenue = "V"\nurl = "ws://x"\n'
BINANCE = '[[providers]]\nname = "b"\nkind = "binance"\nvenue = "BINANCE"\nurl = "ws://x"\n'
KAIKO = '[[providers]]\nname = "k"\nkind = "kaiko"\nurl = "grpc://x:1"\n'


def test_embedded_default_is_valid_and_frozen() -> None:
    cfg = config.load()
    assert cfg.source == "<embedded default>"
    assert len(cfg.providers) >= 2 and all(p.serve for p in cfg.providers)
    assert cfg.kafka.bootstrap == ""  # so the daemon starts its own broker
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daemon.workers = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nworkerz = 2\n", "unknown key 'daemon.workerz'"),
        ("colour = 1\n", "unknown key 'colour'"),
        (PROVIDER + "speed = 3\n", "unknown key 'providers[0].speed'"),
        ("[daemon]\nworkers = '2'\n", "daemon.workers: expected an integer, got a string"),
        ("[fair]\nstale_after = true\n", "fair.stale_after: expected a number, got a boolean"),
        ("[kafka]\nbootstrap = 9092\n", "kafka.bootstrap: expected a string, got an integer"),
        ("providers = 1\n", "providers: expected an array"),
        ("[ring]\ncapacity = 1000\n", "ring.capacity: must be a power of two"),
        (
            "[ring]\nblock_timeout_ms = 600\n",
            "ring.block_timeout_ms: must be between 0 and 500, got 600: reading (pings included)",
        ),
        ("[ring]\nblock_timeout_ms = -1\n", "ring.block_timeout_ms: must be between 0 and 500"),
        ("[ring]\npending_records = 0\n", "ring.pending_records: must be >= 1, got 0"),
        ("[ring]\nflush_delay_ms = 3\n", "ring.flush_delay_ms: must be between 0 and 2, got 3"),
        ("[ring]\nflush_delay_ms = -1\n", "ring.flush_delay_ms: must be between 0 and 2"),
        (
            "[ring]\nblock_timeout_ms = 300\n" + PROVIDER + "stale_after = 0.5\n",
            "providers[0].stale_after: 0.5 s is less than twice ring.block_timeout_ms (300 ms)",
        ),
        ("[daemon]\nworkers = 0\n", "daemon.workers: must be >= 1"),
        ("[fair]\nmethod = 'mean'\n", "fair.method: must be one of two_level, median"),
        ("[fair]\noutlier_readmit = 0.06\n", "fair.outlier_readmit: must be between 0 and"),
        ("[fair]\nvenue_cap = 0\n", "fair.venue_cap: must be in (0, 1]"),
        ("[fair]\ntrim = 0.5\n", "fair.trim: must be in [0, 0.5)"),
        ("[fair]\nheartbeat_interval = 0.01\n", "fair.heartbeat_interval: must be 0 (off)"),
        ("[fair]\nwindow_buckets = 0\n", "fair.window_buckets: must be between 1 and 256"),
        ("[fair]\nfreshness_tau = 0\n", "fair.freshness_tau: must be > 0"),
        ("[fair]\nmin_venues = 0\n", "fair.min_venues: must be >= 1"),
        ('[[providers]]\nname = "a"\n', "providers[0]: missing required key(s) kind"),
        (PROVIDER.replace("simulator", "carrier-pigeon"), "unknown provider kind"),
        (PROVIDER + PROVIDER, "duplicate provider name 'a'"),
        ('[[subscriptions]]\nprovider = "zz"\ninstruments = ["X"]\n', "unknown provider 'zz'"),
        ("[daemon\n", "invalid TOML"),
        (
            BINANCE + "[providers.options]\nurl_stream = true\n",
            "unknown key 'providers[0].options.url_stream' (allowed here: backoff_base, "
            "backoff_cap, rate_limit_pause, subscribe_timeout, url_streams) "
            "(provider 'b', kind binance)",
        ),
        (
            BINANCE + "[providers.options]\nurl_streams = 1\n",
            "providers[0].options.url_streams: expected true or false, got an integer "
            "(provider 'b', kind binance)",
        ),
        (
            PROVIDER + "[providers.options]\nping_interval = 1\n",
            "unknown key 'providers[0].options.ping_interval'",  # a Kraken option
        ),
        (
            BINANCE + "[providers.options]\nrate_limit_pause = -1\n",
            "providers[0].options.rate_limit_pause: must be >= 0 (provider 'b')",
        ),
        (
            KAIKO + '[providers.options]\namount_units = {"BINANCE:spot:BTC-USD" = "coins"}\n',
            "providers[0].options.amount_units.BINANCE:spot:BTC-USD: must be 'base', 'quote'",
        ),
        (
            KAIKO + '[providers.options]\ncodes = {"BTC-USD" = "btc-usd"}\n',
            "providers[0].options.codes.BTC-USD: 'BTC-USD': expected VENUE:class:INSTRUMENT",
        ),
        (
            PROVIDER.replace("simulator", "replay"),
            'providers[0].kind: "replay" is not a provider kind: give the provider the kind of '
            "the recorded protocol and a [providers.replay] table",
        ),
    ],
)
def test_bad_configuration_names_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.loads(text, "/etc/fairfeed/site.toml")
    assert str(err.value).startswith("/etc/fairfeed/site.toml: ")
    assert message in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        config.load(tmp_path / "nope.toml")


def test_daemon_refuses_to_start_on_a_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[kafka]\nbootstrapp = 'x:1'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}: unknown key 'kafka.bootstrapp'" in proc.stderr


def test_check_config_accepts_the_shipped_default(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(config.resources.files("fairfeed.core").joinpath("default.toml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"ok ({len(config.load().providers)} providers)" in proc.stdout


def test_provider_options_reach_the_adapter() -> None:
    """`[providers.options]` is validated at load and the adapter the ingest worker builds
    (``adapter_class(kind)(ctx)``) takes its settings from it; absent options are defaults."""
    from fairfeed.core.options import BinanceOptions, KaikoOptions, KrakenOptions
    from fairfeed.core.registry import Registry
    from fairfeed.core.subscriptions import Subscription
    from fairfeed.providers.base import IngestContext
    from fairfeed.providers.catalog import adapter_class

    text = (
        BINANCE + "[providers.options]\nurl_streams = true\nrate_limit_pause = 2.5\n"
        '[[providers]]\nname = "kr"\nkind = "kraken"\nvenue = "KRAKEN"\nurl = "ws://y"\n'
        + KAIKO
        + "[providers.options]\nquotes = false\n"
        'codes = {"BINANCE:future:BTC-USD-250328" = "btcusd_250328"}\n'
        'amount_units = {"BINANCE:future:BTC-USD-250328" = 0.001, "BINANCE:spot:X" = "quote"}\n'
    )
    cfg = config.loads(text)
    b, kr, k = cfg.providers
    assert b.options == BinanceOptions(url_streams=True, rate_limit_pause=2.5)
    assert kr.options == KrakenOptions()
    assert k.options.quotes is False and k.options.trades is True
    assert k.options.amount_units == {"BINANCE:future:BTC-USD-250328": 0.001,
                                      "BINANCE:spot:X": "quote"}  # fmt: skip
    reg = Registry.build([("BTC-USD", 1), ("BTC-USD-250328", 3)],
                         [("b", "BINANCE"), ("kr", "KRAKEN"), ("k", "BINANCE")])  # fmt: skip

    def build(p: config.ProviderConfig, inst: str, dclass: str):
        sub = Subscription.resolve(reg, p.name, p.venue or "BINANCE", inst, dclass)
        ctx = IngestContext(p, p.url, (sub,), reg, lambda r: None, None)  # type: ignore[arg-type]
        return adapter_class(p.kind)(ctx)

    binance = build(b, "BTC-USD", "spot")
    assert binance.url_streams and binance.rate_limit_pause == 2.5
    assert "?streams=" in binance.url_for(binance.connections[0].subs)
    assert build(kr, "BTC-USD", "spot").ping_interval == KrakenOptions.ping_interval
    kaiko = build(k, "BTC-USD-250328", "future")
    assert [c.name.rsplit("-", 1)[1] for c in kaiko.calls] == ["trades"]  # quotes = false
    assert kaiko.calls[0].request.instrument_criteria.code == "btcusd_250328"
    assert kaiko.rate_limit_pause == KaikoOptions.rate_limit_pause
    with pytest.raises(TypeError, match="kind 'kraken' takes KrakenOptions"):
        config.ProviderConfig("x", "kraken", options=BinanceOptions())


def test_check_config_rejects_a_bad_provider_option(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BINANCE + "[providers.options]\nping_interval = 5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}: unknown key 'providers[0].options.ping_interval'" in proc.stderr
    assert "(provider 'b', kind binance)" in proc.stderr
