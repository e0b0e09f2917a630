"""The provider template (fairfeed/providers/_template) imports and its parser keeps the
parser protocol, so a copy starts from working code."""

from __future__ import annotations

import json

import numpy as np

from fairfeed.core.records import CLASS_SPOT, KIND_TRADE, RECORD_DTYPE, SIDE_SELL
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers._template.adapter import TemplateAdapter
from fairfeed.providers._template.parse import TemplateParser
from fairfeed.providers._template.wire import subscribe
from fairfeed.providers.parsing import CONTROL, HEARTBEAT, NEED_SPACE, PARSE_ERROR
from fairfeed.providers.wsbase import WsAdapter


def test_template_parser_follows_the_protocol() -> None:
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
