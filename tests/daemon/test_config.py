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
KAIKO_KEY_ENV = "FAIRFEED_TEST_KAIKO_CFG"
KAIKO = (
    '[[providers]]\nname = "k"\nkind = "kaiko"\nurl = "grpc://x:1"\n'
    f'api_key_env = "{KAIKO_KEY_ENV}"\n'
)
KAIKO_SUB = (
    '[[subscriptions]]\nprovider = "k"\nvenue = "OKX"\ndata_class = "{cls}"\n'
    'instruments = ["{inst}"]\n'
)


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
        (
            "[ring]\npending_records = 0\n",
            "ring.pending_records: must be between 1 and 4194304, got 0",
        ),
        ("[ring]\nflush_delay_ms = 60\n", "ring.flush_delay_ms: must be between 0 and 50, got 60"),
        ("[ring]\nflush_delay_ms = -1\n", "ring.flush_delay_ms: must be between 0 and 50"),
        (
            "[ring]\nblock_timeout_ms = 300\n" + PROVIDER + "stale_after = 0.5\n",
            "providers[0].stale_after: 0.5 s is less than twice ring.block_timeout_ms (300 ms)",
        ),
        (
            PROVIDER + "max_message_bytes = -1\n",
            "providers[0].max_message_bytes: must be 0 or between 4096",
        ),
        (PROVIDER + "max_message_bytes = 100\n", "between 4096 and 67108864, got 100"),
        (
            PROVIDER + "max_message_bytes = 67108865\n",
            "providers[0].max_message_bytes: must be 0 or between 4096 and 67108864, got 67108865",
        ),
        (PROVIDER + "max_message_bytes = 1.5\n", "max_message_bytes: expected an integer"),
        ("[daemon]\nworkers = 0\n", "daemon.workers: must be between 1 and 256, got 0"),
        ("[fair]\nmethod = 'mean'\n", "fair.method: must be one of two_level, median"),
        ("[fair]\noutlier_readmit = 0.06\n", "fair.outlier_readmit: must be between 0 and"),
        ("[fair]\nvenue_cap = 0\n", "fair.venue_cap: must be > 0 and <= 1, got 0"),
        ("[fair]\ntrim = 0.5\n", "fair.trim: must be between 0 and 0.49, got 0.5"),
        ("[fair]\nheartbeat_interval = 0.01\n", "fair.heartbeat_interval: must be 0 (off)"),
        ("[fair]\nwindow_buckets = 0\n", "fair.window_buckets: must be between 1 and 256"),
        ("[fair]\nfreshness_tau = 0\n", "fair.freshness_tau: must be > 0"),
        ("[fair]\nmin_venues = 0\n", "fair.min_venues: must be between 1 and 4096, got 0"),
        ("[fair]\nmark_inputs = 1\n", "fair.mark_inputs: expected true or false, got an integer"),
        ("[fair]\nmark_inputs = 'yes'\n", "fair.mark_inputs: expected true or false, got a string"),
        (
            "[daemon]\nmax_instruments = 65536\nmax_sources = 64\n[fair]\nmark_inputs = true\n",
            "fair.mark_inputs: needs 2 x max_instruments x max_sources (2 x 65536 x 64) at most "
            "4194304",
        ),
        ('[[providers]]\nname = "a"\n', "providers[0]: missing required key(s) kind"),
        (PROVIDER.replace("simulator", "carrier-pigeon"), "unknown provider kind"),
        (PROVIDER + PROVIDER, "duplicate provider name 'a'"),
        ('[[subscriptions]]\nprovider = "zz"\ninstruments = ["X"]\n', "unknown provider 'zz'"),
        ("[daemon\n", "invalid TOML"),
        (
            BINANCE + "[providers.options]\nurl_stream = true\n",
            "unknown key 'providers[0].options.url_stream' (allowed here: backoff_base, "
            "backoff_cap, derivatives, market, rate_limit_pause, subscribe_timeout, url_streams) "
            "(provider 'b', kind binance)",
        ),
        (
            BINANCE + "[providers.options]\nderivatives = true\n",
            "providers[0].options.derivatives: needs market = 'usdm' (spot has no derivatives "
            "streams)",
        ),
        ("[kafka]\nderivatives_topic = ''\n", "kafka: topic names must not be empty"),
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
            "providers[0].options.rate_limit_pause: must be between 0 and 3600, got -1 "
            "(provider 'b'",
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
            KAIKO
            + '[providers.options]\namount_units = {"OKX:future:BTC-USD-250328" = "100 coins"}\n',
            "providers[0].options.amount_units.OKX:future:BTC-USD-250328: must be 'base', 'quote'",
        ),
        (
            KAIKO + '[providers.options]\ncodes = {"OKX:option:BTC-X" = "btc-usd,eth-usd"}\n',
            "providers[0].options.codes.OKX:option:BTC-X: 'btc-usd,eth-usd' is not a Kaiko code",
        ),
        (
            KAIKO + '[providers.options]\ncodes = {"OKX:future:BTC-X" = "BTCUSD250328"}\n',
            "providers[0].options.codes.OKX:future:BTC-X: 'BTCUSD250328' is not a Kaiko code",
        ),
        (
            KAIKO + KAIKO_SUB.format(cls="option", inst="BTC-USD-250328-60000-C"),
            "providers[0].options.codes: no Kaiko code for 'OKX:option:BTC-USD-250328-60000-C': "
            'add "OKX:option:BTC-USD-250328-60000-C" = "<kaiko code>"',
        ),
        (
            KAIKO + KAIKO_SUB.format(cls="future", inst="BTC-USD-THIS-WEEK"),
            "providers[0].options.codes: no Kaiko code for 'OKX:future:BTC-USD-THIS-WEEK'",
        ),
        (
            KAIKO + "[providers.options]\nderivatives = 'yes'\n",
            "providers[0].options.derivatives: expected true or false, got a string",
        ),
        (
            KAIKO + "[providers.options]\ntrades = false\nquotes = false\n",
            "providers[0].options.trades: trades, quotes and derivatives are all off: nothing to "
            "stream (provider 'k')",
        ),
        (  # the derivatives metrics alone stream perpetuals and futures only
            KAIKO
            + "[providers.options]\ntrades = false\nquotes = false\nderivatives = true\n"
            + KAIKO_SUB.format(cls="spot", inst="BTC-USD"),
            "subscriptions[0].data_class: spot cannot be subscribed from provider 'k' (kind kaiko: "
            "perpetual, future)",
        ),
        # names follow one rule (fairfeed/core/names.py), the control socket's too
        (
            PROVIDER.replace('venue = "V"', f'venue = "{"V" * 60_000}"'),
            "providers[0].venue: invalid venue 'VVVV",
        ),
        (
            PROVIDER.replace('name = "a"', 'name = "a b"'),
            "providers[0].name: invalid provider 'a b'",
        ),
        (PROVIDER.replace('name = "a"', 'name = ""'), "providers[0].name: invalid provider ''"),
        (
            PROVIDER + '[[subscriptions]]\nprovider = "a"\nvenue = "X\\n"\ninstruments = ["A"]\n',
            "subscriptions[0].venue: invalid venue 'X\\n'",
        ),
        (
            PROVIDER + '[[subscriptions]]\nprovider = "a"\ninstruments = ["btc-usd"]\n',
            "subscriptions[0].instruments: invalid instrument 'btc-usd': use upper-case",
        ),
        ("[daemon]\ncontrol_max_output = 1000\n", "daemon.control_max_output: must be between"),
        ("[metrics]\nheader_timeout = 60\n", "metrics.header_timeout: must be > 0 and <="),
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


def test_mark_inputs_is_off_unless_asked_for() -> None:
    assert config.load().fair.mark_inputs is False
    assert config.loads("[fair]\nmark_inputs = true\n").fair.mark_inputs is True
    # the same capacity without mark inputs is valid (the limit is the mark slots')
    text = "[daemon]\nmax_instruments = 65536\nmax_sources = 64\n"
    assert config.loads(text).fair.mark_inputs is False


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


def test_provider_options_reach_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
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
    monkeypatch.setenv(KAIKO_KEY_ENV, "key")  # a Kaiko adapter needs its key
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
    assert "?streams=" in binance.url_for(binance.connections[0])
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
    path.write_text(KAIKO + KAIKO_SUB.format(cls="option", inst="BTC-USD-250328-60000-C"))
    proc = subprocess.run(
        [sys.executable, "-m", "fairfeed", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}: providers[0].options.codes: no Kaiko code for" in proc.stderr


def test_kaiko_codes_and_units_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dated future is named by rule, an option by the `codes` table; the daemon's adapter
    and a served provider's local server both name instruments with the table."""
    from fairfeed.core.registry import Registry
    from fairfeed.core.subscriptions import Subscription
    from fairfeed.local.catalog import local_server
    from fairfeed.providers.base import IngestContext
    from fairfeed.providers.catalog import adapter_class

    text = (
        KAIKO + "[providers.options]\n"
        'codes = {"OKX:option:BTC-USD-250328-60000-C" = "btc28mar2560000c"}\n'
        'amount_units = {"OKX:future:BTC-USD-250328" = "100 quote"}\n'
        + KAIKO_SUB.format(cls="option", inst="BTC-USD-250328-60000-C")
        + KAIKO_SUB.format(cls="future", inst="BTC-USD-250328")
    )
    cfg = config.loads(text)
    (k,) = cfg.providers
    reg = Registry.build([("BTC-USD-250328-60000-C", 4), ("BTC-USD-250328", 2)], [("k", "OKX")])
    subs = tuple(Subscription.resolve(reg, "k", s.venue, s.instrument, s.data_class)
                 for s in cfg.streams())  # fmt: skip
    ctx = IngestContext(k, k.url, subs, reg, lambda r: None, None)  # type: ignore[arg-type]
    monkeypatch.setenv(KAIKO_KEY_ENV, "key")
    adapter = adapter_class("kaiko")(ctx)
    codes = {c.request.instrument_criteria.code for c in adapter.calls}
    assert codes == {"btc28mar2560000c", "btcusd250328"}
    assert adapter.symbols.amount_unit("OKX", "future", "BTC-USD-250328")[1] == 100.0
    served = config.loads(
        '[[providers]]\nname = "k"\nkind = "kaiko"\nvenue = "OKX"\n'
        '[providers.serve]\nprices = {"BTC-USDT-PERP" = 1.0}\n'
        '[providers.options]\ncodes = {"OKX:perpetual:BTC-USDT-PERP" = "btcusdt_perp"}\n'
    )
    server = local_server(served, served.providers[0], 0)
    assert [i.key for i in server.instruments] == ["okex:perpetual-future:btcusdt_perp"]


def test_kaiko_derivatives_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """`derivatives = true` (default false) gives each perpetual and future subscription a
    metrics call of its own, next to the trades and top-of-book calls; alone it is valid for
    derivatives subscriptions."""
    from fairfeed.core.options import KaikoOptions
    from fairfeed.core.registry import Registry
    from fairfeed.core.subscriptions import Subscription
    from fairfeed.providers.base import IngestContext
    from fairfeed.providers.catalog import adapter_class
    from fairfeed.providers.kaiko.adapter import METRICS_METHOD

    assert KaikoOptions().derivatives is False
    monkeypatch.setenv(KAIKO_KEY_ENV, "key")
    reg = Registry.build([("BTC-USD", 1), ("BTC-USD-250328", 2), ("BTC-USDT-PERP", 3)],
                         [("k", "OKX")])  # fmt: skip
    spot = KAIKO_SUB.format(cls="spot", inst="BTC-USD")
    derivatives = KAIKO_SUB.format(cls="future", inst="BTC-USD-250328") + KAIKO_SUB.format(
        cls="perpetual", inst="BTC-USDT-PERP"
    )
    for options, subscriptions, calls in (
        ("derivatives = true\n", spot + derivatives, ["trades", "tob"] * 3 + ["metrics"] * 2),
        ("derivatives = true\ntrades = false\nquotes = false\n", derivatives, ["metrics"] * 2),
        ("", spot + derivatives, ["trades", "tob"] * 3),
    ):
        cfg = config.loads(KAIKO + "[providers.options]\n" + options + subscriptions)
        (k,) = cfg.providers
        subs = tuple(Subscription.resolve(reg, "k", s.venue, s.instrument, s.data_class)
                     for s in cfg.streams())  # fmt: skip
        ctx = IngestContext(k, k.url, subs, reg, lambda r: None, None)  # type: ignore[arg-type]
        adapter = adapter_class("kaiko")(ctx)
        assert [c.name.rsplit("-", 1)[1] for c in adapter.calls] == calls
        metrics = [c.request.instrument_criteria for c in adapter.calls
                   if c.method == METRICS_METHOD]  # fmt: skip
        assert sorted((m.instrument_class, m.code) for m in metrics) == (
            [("future", "btcusd250328"), ("perpetual-future", "btc-usdt")] if metrics else []
        )
