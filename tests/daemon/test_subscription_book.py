"""The supervisor's subscription book: validation, changes and the state file rule."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fairfeed.core import config
from fairfeed.core.subscriptions import Stream
from fairfeed.daemon.run import build_registry
from fairfeed.daemon.subscriptions import SubscriptionBook, SubscriptionError

CONFIG = """
[[providers]]
name = "sim"
kind = "simulator"
venue = "SIMX"
url = "ws://127.0.0.1:9"

[[subscriptions]]
provider = "sim"
instruments = ["BTC-USD", "ETH-USD"]
"""


def _book(text: str = CONFIG) -> SubscriptionBook:
    cfg = config.loads(text, "<test>")
    return SubscriptionBook(cfg, build_registry(cfg), 2)


def test_resolve_validates_and_fills_defaults() -> None:
    book = _book()
    assert book.resolve("sim", ["SOL-USD", "SOL-USD"]) == [Stream("sim", "SIMX", "SOL-USD", "spot")]
    assert book.resolve("sim", ["X-PERP"], "OTHER", "perpetual") == [
        Stream("sim", "OTHER", "X-PERP", "perpetual")
    ]
    for args, match in (
        (("nope", ["BTC-USD"]), "unknown provider 'nope' \\(known: sim\\)"),
        (("sim", ["BTC-USD"], "", "swap"), "unknown data class 'swap'"),
        (("sim", []), "no instruments"),
        (("sim", ["btc-usd"]), "invalid instrument 'btc-usd'"),
        (("sim", ["B" * 49]), "invalid instrument 'B{40}'… \\(49 characters\\): at most 48"),
        (("sim", ["BTC-USD"], "V" * 60_000), "invalid venue 'V{40}'… \\(60000 characters\\)"),
        (("sim", ["BTC-USD"], "A B"), "invalid venue 'A B': use letters"),
        (("p" * 60_000, ["BTC-USD"]), "unknown provider 'p{40}'… \\(60000 characters\\)"),
        (("sim", ["BTC-USD"], "", "perpetual"), "already known with another data class"),
    ):
        with pytest.raises(SubscriptionError, match=match):
            book.resolve(*args)


def test_add_registers_ids_and_remove_returns_the_streams() -> None:
    book = _book()
    sol = Stream("sim", "SIMY", "SOL-USD", "spot")
    change = book.add([sol, Stream("sim", "SIMX", "BTC-USD", "spot")])
    assert change.changed == (sol,) and change.unchanged == (("sim", "SIMX", "BTC-USD"),)
    assert book.registry.instrument_id("SOL-USD") == 2
    assert book.registry.source_id("sim", "SIMY") == 1
    change = book.remove([sol.key, ("sim", "SIMX", "NOPE")])
    assert change.changed == (sol,) and change.unchanged == (("sim", "SIMX", "NOPE"),)
    parts = book.partition()
    assert sorted(s.key for p in parts for s in p) == sorted(s.key for s in book.live)


def test_state_file_restores_live_changes_until_the_configuration_changes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "subscriptions.json"
    book = _book()
    assert book.restore(path).startswith("no state file")
    book.add([Stream("sim", "SIMX", "SOL-USD", "spot")])
    book.remove([("sim", "SIMX", "ETH-USD")])
    book.save(path)

    again = _book()
    assert again.restore(path).startswith("restored 2 subscriptions")
    assert [s.instrument for s in again.live] == ["BTC-USD", "SOL-USD"]

    edited = _book(CONFIG.replace('"ETH-USD"]', '"ETH-USD", "LTC-USD"]'))
    assert "the configuration wins" in edited.restore(path)
    assert [s.instrument for s in edited.live] == ["BTC-USD", "ETH-USD", "LTC-USD"]

    state = orjson.loads(path.read_bytes())
    state["subscriptions"] += [{"provider": "gone", "venue": "V", "instrument": "X",
                                "data_class": "spot"}, {"provider": "sim"},
                               {"provider": "sim", "venue": "V" * 65, "instrument": "X",
                                "data_class": "spot"},  # names by the configuration's rule
                               {"provider": "sim", "venue": "V", "instrument": "x\n",
                                "data_class": "spot"}]  # fmt: skip
    path.write_bytes(orjson.dumps(state))
    third = _book()
    assert third.restore(path).endswith("4 invalid entries dropped")
    assert [s.instrument for s in third.live] == ["BTC-USD", "SOL-USD"]

    path.write_text("{not json")
    assert "unreadable" in _book().restore(path)
