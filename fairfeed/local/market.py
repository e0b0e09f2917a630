"""Vectorized random-walk market events shared by every local provider server.

A server asks for ``n`` events over its subscribed instruments and formats the arrays in its own
wire format. Prices, sequences and timestamps are per instrument and server-wide, so several
connections (or a reconnecting client) see one consistent market, as on a real venue.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import numpy as np

from fairfeed.core.config import SimulatorConfig

HALF_SPREAD = 0.5e-4  # half the bid/ask spread relative to the mid
EXCHANGE_LAG_NS = 2_000_000  # exchange time = generation time - 2 ms (+ injected delay)
PROVIDER_LAG_NS = 1_000_000  # provider time = generation time - 1 ms


@dataclass
class EventBatch:
    """``n`` events; index i of every array describes event i (in emission order)."""

    symbol: np.ndarray  # int index into Market.symbols
    is_quote: np.ndarray  # bool
    price: np.ndarray  # trade price (trades)
    size: np.ndarray  # trade size, base currency (trades)
    taker_buy: np.ndarray  # bool, taker side of trades
    bid: np.ndarray
    bid_size: np.ndarray
    ask: np.ndarray
    ask_size: np.ndarray
    seq: np.ndarray  # int64, per instrument, +1 per event (trades and quotes share it)
    trade_id: np.ndarray  # int64, per instrument, +1 per trade (0 on quotes)
    ts_exchange: np.ndarray  # int64 ns
    ts_provider: np.ndarray  # int64 ns

    def __len__(self) -> int:
        return len(self.symbol)

    def take(self, which: np.ndarray) -> EventBatch:
        """The events selected by ``which`` (a mask or indexes), in order."""
        return EventBatch(*(getattr(self, f.name)[which] for f in fields(self)))


class Market:
    """Random walks for ``cfg.prices`` offset by ``price_offset_bps``, seeded by ``seed``."""

    def __init__(self, cfg: SimulatorConfig) -> None:
        self.cfg = cfg
        self.symbols = list(cfg.prices)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        start = np.array([float(p) for p in cfg.prices.values()]) * (1 + cfg.price_offset_bps / 1e4)
        self.mid = start
        self.decimals = np.array(
            [max(2, 6 - math.floor(math.log10(p))) if p > 0 else 2 for p in start]
        )
        self.size_scale = np.where(start > 0, 1000.0 / np.maximum(start, 1e-12), 1.0)
        self.seq = np.zeros(len(start), np.int64)
        self.trade_id = np.zeros(len(start), np.int64)
        self.rng = np.random.default_rng(cfg.seed)
        # Fault knobs a server may set (see fairfeed.local.faults).
        self.extra_offset_bps = 0.0
        self.exchange_delay_ns = 0
        # Per instrument: how many numbers its next generated event skips. Per instrument,
        # because a batch need not hold every instrument: a gap must not vanish with a batch
        # that happened to carry only the others.
        self.pending_skip = np.zeros(len(start), np.int64)

    def skip_sequence(self, amount: int, symbol: str | None = None) -> None:
        """The next event of each instrument (of ``symbol`` only, if given) skips ``amount``
        sequence numbers (0 cancels)."""
        if symbol is None:
            self.pending_skip[:] = amount
        else:
            self.pending_skip[self.index[symbol]] = amount

    def events(self, symbols: list[int], n: int, now_ns: int | None = None) -> EventBatch:
        """``n`` events spread uniformly over instrument indexes ``symbols``."""
        rng = self.rng
        now = time.time_ns() if now_ns is None else now_ns
        syms = np.asarray(symbols, np.int64)
        which = syms[rng.integers(len(syms), size=n)] if len(syms) > 1 else np.full(n, syms[0])
        is_quote = rng.random(n) < self.cfg.quote_ratio
        vol = self.cfg.volatility_bps / 1e4
        mids = np.empty(n)
        seq = np.empty(n, np.int64)
        trade_id = np.zeros(n, np.int64)
        for s in np.unique(which):
            pos = np.flatnonzero(which == s)
            path = self.mid[s] * np.cumprod(1.0 + rng.normal(0.0, vol, len(pos)))
            self.mid[s] = path[-1]
            mids[pos] = path
            skip = int(self.pending_skip[s])
            self.pending_skip[s] = 0
            seq[pos] = self.seq[s] + skip + 1 + np.arange(len(pos))
            self.seq[s] += skip + len(pos)
            trades = pos[~is_quote[pos]]
            trade_id[trades] = self.trade_id[s] + skip + 1 + np.arange(len(trades))
            self.trade_id[s] += skip + len(trades)
        mids *= 1 + self.extra_offset_bps / 1e4
        dec = self.decimals[which]
        scale = 10.0**dec
        bid = np.floor(mids * (1 - HALF_SPREAD) * scale) / scale
        ask = np.maximum(np.ceil(mids * (1 + HALF_SPREAD) * scale) / scale, bid + 1 / scale)
        taker_buy = rng.random(n) < 0.5
        price = np.where(taker_buy, ask, bid)
        sizes = np.round(rng.exponential(1.0, (3, n)) * self.size_scale[which] + 1e-6, 6)
        ts_ex = np.full(n, now - EXCHANGE_LAG_NS - self.exchange_delay_ns, np.int64)
        ts_pr = np.full(n, now - PROVIDER_LAG_NS, np.int64)
        return EventBatch(
            which, is_quote, price, sizes[0], taker_buy, bid, sizes[1], ask, sizes[2],
            seq, trade_id, ts_ex, ts_pr,
        )  # fmt: skip
