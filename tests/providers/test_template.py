"""The provider template (docs/providers/template/, copied to start a venue) imports and its
parser keeps the parser protocol, so a copy starts from working code."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from fairfeed.core.records import CLASS_SPOT, KIND_TRADE, RECORD_DTYPE, SIDE_SELL
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.parsing import CONTROL, HEARTBEAT, NEED_SPACE, PARSE_ERROR
from fairfeed.providers.wsbase import WsAdapter

TEMPLATE = Path(__file__).resolve().parents[2] / "docs" / "providers" / "template"


def _template(module: str):
    """A module of the template, loaded as the package ``provider_template`` (it is
    documentation, not part of fairfeed; its modules import each other relatively so a copy
    works wherever it lands)."""
    if "provider_template" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "provider_template",
            TEMPLATE / "__init__.py",
            submodule_search_locations=[str(TEMPLATE)],
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["provider_template"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"provider_template.{module}")


def test_template_parser_follows_the_protocol() -> None:
    TemplateAdapter = _template("adapter").TemplateAdapter
    TemplateParser = _template("parse").TemplateParser
    subscribe = _template("wire").subscribe
    sub = Subscription("p", "V", "BTC-USD", "spot", 2, 5, 7, CLASS_SPOT)
    p = TemplateParser.for_subscriptions((sub,))
    assert p.symbols == {"BTC_USD": 7} and (p.provider, p.venue) == (2, 5)
    out = np.zeros(2, RECORD_DTYPE)
    trade = {"type": "trade", "symbol": "BTC_USD", "price": 100.5, "size": 0.25,
             "side": "sell", "id": 41, "time": 1_000}  # fmt: skip
    assert p.parse(json.dumps(trade).encode(), out, 1, 9) == 1
    r = out[1]
    assert (r["kind"], r["instrument"], r["price"], r["sequence"]) == (KIND_TRADE, 7, 100.5, 41)
    assert (r["side"], r["ts_exchange"], r["ts_receive"]) == (SIDE_SELL, 1_000, 9)
    assert p.parse(json.dumps(trade).encode(), out, 2, 9) == NEED_SPACE and p.needed == 1
    assert p.parse(b'{"type":"heartbeat"}', out, 0, 9) == HEARTBEAT
    assert p.parse(b'{"type":"subscribed","req_id":1}', out, 0, 9) == CONTROL
    assert p.parse(b"{nope", out, 0, 9) == PARSE_ERROR and p.error
    assert (p.gaps, p.missed, p.heartbeats) == (0, 0, 0)  # the base tracks this venue's gaps
    assert json.loads(subscribe(["BTC_USD"], 3)) == {
        "op": "subscribe", "symbols": ["BTC_USD"], "req_id": 3,
    }  # fmt: skip
    assert issubclass(TemplateAdapter, WsAdapter) and TemplateAdapter.parser_class is TemplateParser
