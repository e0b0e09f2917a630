"""A provider that needs an API key, started without one, stops the daemon at start with a
message naming the environment variable (it would only loop on authentication errors)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.daemon.daemon_process import DaemonProcess

MISSING = "FAIRFEED_TEST_NO_SUCH_KEY"
URLS = {"kaiko": "grpc://127.0.0.1:9", "coinapi": "ws://127.0.0.1:9/v1/"}


@pytest.mark.parametrize("kind", ["kaiko", "coinapi"])
def test_a_missing_api_key_stops_the_start_naming_the_variable(
    tmp_path: Path, kafka_broker, kind: str
) -> None:
    assert MISSING not in os.environ
    config = tmp_path / "fairfeed.toml"
    config.write_text(
        f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\n'
        f'[[providers]]\nname = "p"\nkind = "{kind}"\nvenue = "COINBASE"\n'
        f'url = "{URLS[kind]}"\napi_key_env = "{MISSING}"\n'
        '[[subscriptions]]\nprovider = "p"\ninstruments = ["BTC-USD"]\n'
    )
    daemon = DaemonProcess(tmp_path, config)
    code = daemon.exits()
    err = daemon.stderr()
    assert code == 2, err  # a configuration error, found before anything started
    assert f"environment variable {MISSING} is not set" in err
    assert "Traceback" not in err and "started" not in err
