"""The venue's messages → records, following the parser protocol of
:mod:`fairfeed.providers.parsing` (it never raises for bad input)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import numpy as np

from fairfeed.core.records import KIND_TRADE, SIDE_BUY, SIDE_SELL
from fairfeed.core.subscriptions import Subscription
from fairfeed.providers.parsing import (
    CONTROL,
    HEARTBEAT,
    NEED_SPACE,
    PARSE_ERROR,
    RECORD_STRUCT,
    RecordParser,
)

from .symbols import to_symbol
from .wire import DECODER

_SIDES = {"buy": SIDE_BUY, "sell": SIDE_SELL}


class TemplateParser(RecordParser):
    """``symbols`` maps the venue's symbols to instrument ids (one venue and class)."""

    __slots__ = ("symbols",)

    def __init__(
        self, symbols: Mapping[str, int], provider: int, venue: int, data_class: int
    ) -> None:
        super().__init__(provider, venue, data_class)
        self.symbols = dict(symbols)

    @staticmethod
    def wire_symbol(sub: Subscription) -> str:
        return to_symbol(sub.instrument)

    def parse(self, data: bytes | memoryview, out: np.ndarray, start: int, ts_receive: int) -> int:
        try:
            m = DECODER.decode(data)
        except msgspec.DecodeError as exc:
            self.error = str(exc)
            return PARSE_ERROR
        if m.type == "heartbeat":
            return HEARTBEAT
        if m.type in ("subscribed", "error"):
            self.control = m
            return CONTROL
        if m.type != "trade":
            return 0  # not ours
        if start + 1 > len(out):
            self.needed = 1
            return NEED_SPACE
        inst = self.symbols.get(m.symbol)
        side = _SIDES.get(m.side)
        if inst is None or side is None or not m.price > 0 or not m.size >= 0 or m.id < 0:
            self.error = f"trade: bad symbol, side, price, size or id in {m!r}"
            return PARSE_ERROR
        RECORD_STRUCT.pack_into(self._buffer(out), start << 6, m.time, 0, ts_receive, m.price,
                                m.size, m.id, inst, self.provider, self.venue, KIND_TRADE,
                                self.data_class, side, 0, 0)  # fmt: skip
        return 1
