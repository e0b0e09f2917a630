"""Every numeric setting has a range, checked at load and documented; configuration files made
up by hypothesis either load with every value in range or stop with a message naming a key."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairfeed.core import config
from fairfeed.core.config import ConfigError, range_of
from fairfeed.core.options import OPTIONS
from fairfeed.core.ranges import Range

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"
SECTIONS = {
    "daemon": config.DaemonConfig,
    "ring": config.RingConfig,
    "kafka": config.KafkaConfig,
    "fair": config.FairConfig,
    "anomalies": config.AnomalyConfig,
    "metrics": config.MetricsConfig,
}
CLASSES = [
    *SECTIONS.values(),
    config.AnomalyThresholds,
    config.ProviderConfig,
    config.SimulatorConfig,
    config.ReplayConfig,
    *OPTIONS.values(),
]


def _numeric(hint: typing.Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_numeric(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is dict:  # e.g. serve.prices: each value is checked
        return _numeric(typing.get_args(hint)[1]) and typing.get_args(hint)[1] is not str
    return hint in (int, float)


def _numeric_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    # amount_units (Kaiko) and contracts (Kraken Futures) mix numbers and words: checked by
    # their own parser (options.amount_unit)
    skip = {"librdkafka", "amount_units", "contracts"}
    return [
        f.name for f in dataclasses.fields(cls) if f.name not in skip and _numeric(hints[f.name])
    ]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_setting_has_a_range(cls: type) -> None:
    missing = [name for name in _numeric_fields(cls) if range_of(cls, name) is None]
    assert not missing, f"{cls.__name__}: no Range for {missing} (fairfeed/core/config.py RANGES)"


def test_the_documentation_lists_every_range() -> None:
    table = config.ranges_markdown()
    assert table in DOC.read_text(), (
        "docs/configuration.md must carry the table of ranges as "
        "fairfeed.core.config.ranges_markdown() prints it"
    )
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    for section, cls in SECTIONS.items():
        for name in _numeric_fields(cls):
            assert f"{section}.{name}" in documented


def test_defaults_are_inside_their_ranges() -> None:
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            r = range_of(cls, f.name)
            if r is None or f.default is dataclasses.MISSING or f.default is None:
                continue
            assert r.problem(f.default) is None, (cls.__name__, f.name, f.default)


@pytest.mark.parametrize(
    ("r", "value", "ok"),
    [
        (Range(0, 1), 0, True),
        (Range(0, 1, lo_open=True), 0, False),
        (Range(0, 1), 1.0000001, False),
        (Range(0, 1), math.nan, False),
        (Range(1, 8, off=0), 0, True),
        (Range(1, 8, off=0), 9, False),
        (Range(64, 1 << 20, power_of_two=True), 96, False),
        (Range(64, 1 << 20, power_of_two=True), 128, True),
    ],
)
def test_range_rules(r: Range, value: float, ok: bool) -> None:
    assert (r.problem(value) is None) is ok


# -- hypothesis: made-up configuration files ---------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 1e12, -5, 0.5, 2**31, 100_000]),
)
URLS = ["ws://x:1", "grpc://x:1", "http://x", "ws://x:99999", "x:1", ""]
VALUES = st.one_of(NUMBERS, st.booleans(), st.text(max_size=12), st.just([1, 2]))


def _toml_value(v: typing.Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@st.composite
def config_files(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for section, cls in SECTIONS.items():
        names = [
            f.name for f in dataclasses.fields(cls) if f.name not in ("classes", "instruments")
        ]
        keys = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
        if not keys:
            continue
        lines.append(f"[{section}]")
        for key in keys:
            lines.append(f"{key} = {_toml_value(draw(VALUES))}")
    if draw(st.booleans()):
        kind = draw(st.sampled_from(sorted(OPTIONS)))
        lines += [
            "[[providers]]",
            'name = "p"',
            f'kind = "{kind}"',
            'venue = "V"',
            f"url = {_toml_value(draw(st.sampled_from(URLS)))}",
        ]
        names = [f.name for f in dataclasses.fields(config.ProviderConfig)]
        for key in draw(
            st.lists(st.sampled_from(names[4:8] + names[10:]), unique=True, max_size=3)
        ):
            if key != "options":
                lines.append(f"{key} = {_toml_value(draw(VALUES))}")
        opts = [f.name for f in dataclasses.fields(OPTIONS[kind])]
        okeys = draw(st.lists(st.sampled_from(opts), unique=True, max_size=3))
        if okeys:
            lines.append("[providers.options]")
            lines += [f"{k} = {_toml_value(draw(VALUES))}" for k in okeys]
    return "\n".join(lines) + "\n"


def _in_range(obj: typing.Any, where: str) -> None:
    """Every numeric value of a loaded configuration is inside its declared range."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        r = range_of(type(obj), f.name)
        if r is not None and isinstance(value, int | float) and not isinstance(value, bool):
            assert r.problem(value) is None, f"{where}.{f.name} = {value} accepted"
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                _in_range(item, f"{where}.{f.name}[{i}]")
        else:
            _in_range(value, f"{where}.{f.name}")


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(config_files())
def test_made_up_files_load_in_range_or_name_a_key(text: str) -> None:
    try:
        cfg = config.loads(text, "/etc/fairfeed/fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("/etc/fairfeed/fuzz.toml: "), message
        assert "\n" not in message, message
        named = message.split(": ", 2)[1]
        assert re.match(
            r"(daemon|ring|kafka|fair|anomalies|metrics|providers|subscriptions)\b", named
        ) or ("invalid TOML" in named), message
        return
    _in_range(cfg, "")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "[daemon]\nheartbeat_interval = nan\n",
            "daemon.heartbeat_interval: must be a finite number",
        ),
        ("[daemon]\nworkers = 100000\n", "daemon.workers: must be between 1 and 256"),
        ("[ring]\nread_batch = 1000000000000\n", "ring.read_batch: must be between 1 and 1048576"),
        ("[kafka]\nlinger_ms = -5\n", "kafka.linger_ms: must be between 0 and 1000"),
        ("[kafka]\nstall_timeout = 0\n", "kafka.stall_timeout: must be between 1 and 3600"),
        ("[fair]\nstale_after = inf\n", "fair.stale_after: must be a finite number, got inf"),
        ("[anomalies]\ndivergence_for = -1\n", "anomalies.divergence_for: must be between 0"),
        ('[metrics]\nlisten = "0.0.0.0:0"\n', "metrics.listen: 0.0.0.0 is not a loopback address"),
        ('[metrics]\nlisten = "[::]:9464"\n', "metrics.listen: [::] is not a loopback address"),
        (
            "[daemon]\nmax_instruments = 1048576\nmax_sources = 4096\n",
            "daemon.max_instruments: max_instruments x max_sources (1048576 x 4096) must be",
        ),
        (
            '[[providers]]\nname = "c"\nkind = "coinbase"\nvenue = "COINBASE"\nurl = "wss://x"\n'
            'feed = "bogus"\n',
            "providers[0].feed: kind coinbase has no feed 'bogus' (known: '', 'exchange', "
            "'advanced')",
        ),
        (
            '[[providers]]\nname = "k"\nkind = "kraken"\nvenue = "KRAKEN"\nurl = "https://x"\n',
            "providers[0].url: kind kraken connects to ws://, wss://, not 'https://x'",
        ),
        (
            '[[providers]]\nname = "k"\nkind = "kraken"\nvenue = "KRAKEN"\nurl = "ws://x:99999"\n',
            "providers[0].url: not a valid URL",
        ),
        (
            '[[providers]]\nname = "k"\nkind = "kraken"\nvenue = "KRAKEN"\nurl = "ws://"\n',
            "providers[0].url: has no host",
        ),
        (
            '[[providers]]\nname = "b"\nkind = "binance"\nvenue = "BINANCE"\nurl = "wss://x"\n'
            '[[subscriptions]]\nprovider = "b"\ndata_class = "perpetual"\n'
            'instruments = ["BTC-USDT"]\n',
            "subscriptions[0].data_class: perpetual cannot be subscribed from provider 'b' "
            "(kind binance, market spot: spot)",
        ),
        (
            '[[providers]]\nname = "b"\nkind = "binance"\nvenue = "BINANCE"\nurl = "wss://x"\n'
            '[providers.options]\nmarket = "usdm"\n'
            '[[subscriptions]]\nprovider = "b"\ninstruments = ["BTC-USDT-PERP"]\n',
            "subscriptions[0].data_class: spot cannot be subscribed from provider 'b' "
            "(kind binance, market usdm: perpetual, future)",
        ),
        (
            '[[providers]]\nname = "s"\nkind = "simulator"\nvenue = "V"\nurl = "ws://x"\n'
            '[[subscriptions]]\nprovider = "s"\ninstruments = ["BTC-USD"]\n'
            '[[subscriptions]]\nprovider = "s"\ndata_class = "perpetual"\n'
            'instruments = ["BTC-USD"]\n',
            "subscriptions[1].instruments: 'BTC-USD' is perpetual here but spot in "
            "subscriptions[0]",
        ),
    ],
)
def test_values_the_daemon_used_to_accept_are_refused(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.loads(text, "f.toml")
    assert f"f.toml: {key}" in str(err.value)


def test_a_public_listen_address_needs_public() -> None:
    cfg = config.loads('[metrics]\nlisten = "0.0.0.0:9464"\npublic = true\n')
    assert cfg.metrics.listen == "0.0.0.0:9464"
    for listen in ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.2:1"):
        assert config.loads(f'[metrics]\nlisten = "{listen}"\n').metrics.listen == listen


def test_kaiko_url_may_be_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRFEED_TEST_KAIKO_RANGES", "k")
    text = (
        '[[providers]]\nname = "k"\nkind = "kaiko"\nurl = "gateway-v0-grpc.kaiko.ovh:443"\n'
        'api_key_env = "FAIRFEED_TEST_KAIKO_RANGES"\n'
    )
    assert config.loads(text).providers[0].url.endswith(":443")


def test_check_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nheartbeat_interval = nan\n[kafka]\nlinger_ms = -5\n")
    out = subprocess.run(
        [sys.executable, "-m", "fairfeed", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "daemon.heartbeat_interval: must be a finite number" in lines[0]
