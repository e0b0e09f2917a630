"""The normalized event record: one 64-byte aligned numpy structured dtype used by every stage.

Adapters write it, rings carry it, kernels read it and the sink encodes it. Codes for the small
enumerations (kind, data class, side) are module constants so Numba kernels can use them as
compile-time integers.
"""

from __future__ import annotations

import time

import numpy as np

# Event kinds. A top-of-book quote is written as one BID and one ASK record with the same
# timestamps and sequence: a combined quote would not fit both prices and sizes in 64 bytes.
KIND_TRADE = 1
KIND_BID = 2
KIND_ASK = 3
# Derivatives data (docs/kafka-schema.md, "Derivatives"). Fields as for a trade unless said:
# sizes in base units (contracts x multiplier; inverse contracts: notional / price).
KIND_MARK = 4  # mark price: `price`
KIND_INDEX = 5  # index (spot reference) price: `price`
# funding: `price` = rate per funding interval (0.0001 = 1 bp), `size` = predicted next rate
# (NaN if not published), `reserved` = next funding time, seconds since epoch (0 = unknown)
KIND_FUNDING = 6
KIND_OPEN_INTEREST = 7  # open interest: `size` (base units), `price` = 0
# liquidation print: `price`, `size`, `side` = the side of the forced order (SELL: a long closed)
KIND_LIQUIDATION = 8
DERIVATIVE_KINDS = (KIND_MARK, KIND_INDEX, KIND_FUNDING, KIND_OPEN_INTEREST, KIND_LIQUIDATION)
# Health events travel through the rings too, so ordering against the data is kept:
KIND_GAP = 16  # sequence gap: `sequence` = first number after the gap, `size` = numbers missed
KIND_HEARTBEAT = 17  # provider heartbeat (liveness without data); `ts_provider` = its time
KIND_STATUS = 18  # connection status change; `flags` = one of the STATUS_* codes
KIND_NAMES = {
    KIND_TRADE: "trade",
    KIND_BID: "bid",
    KIND_ASK: "ask",
    KIND_MARK: "mark",
    KIND_INDEX: "index",
    KIND_FUNDING: "funding",
    KIND_OPEN_INTEREST: "open_interest",
    KIND_LIQUIDATION: "liquidation",
    KIND_GAP: "gap",
    KIND_HEARTBEAT: "heartbeat",
    KIND_STATUS: "status",
}
MAX_MARKET_KIND = KIND_ASK  # kinds <= this are market data (published as ticks)
MAX_DATA_KIND = KIND_LIQUIDATION  # kinds <= this are data of an instrument; above: health

# STATUS record codes (in `flags`).
STATUS_CONNECTED = 1  # connected and subscribed: data may flow
STATUS_DISCONNECTED = 2  # the connection ended (a reconnect follows unless stopping)
STATUS_SUBSCRIBE_ERROR = 3  # the provider refused a subscription (rate limit, unknown symbol)
STATUS_NAMES = {
    STATUS_CONNECTED: "connected",
    STATUS_DISCONNECTED: "disconnected",
    STATUS_SUBSCRIBE_ERROR: "subscribe_error",
}

# Instrument id of records about a whole connection or provider (heartbeats, status).
NO_INSTRUMENT = 0xFFFFFFFF

# Data classes (instrument classes).
CLASS_SPOT = 1
CLASS_FUTURE = 2
CLASS_PERPETUAL = 3
CLASS_OPTION = 4
CLASS_NAMES = {
    CLASS_SPOT: "spot",
    CLASS_FUTURE: "future",
    CLASS_PERPETUAL: "perpetual",
    CLASS_OPTION: "option",
}
CLASS_CODES = {name: code for code, name in CLASS_NAMES.items()}

# Taker side of a trade (for quotes: SIDE_UNKNOWN).
SIDE_UNKNOWN = 0
SIDE_BUY = 1
SIDE_SELL = 2
SIDE_NAMES = {SIDE_UNKNOWN: "unknown", SIDE_BUY: "buy", SIDE_SELL: "sell"}

# Sequence value for venues that do not number their messages.
SEQ_NONE = -1

# Field order puts 8-byte fields first so every field is naturally aligned without padding
# holes; `reserved` fills the record to exactly one 64-byte cache line.
RECORD_DTYPE = np.dtype(
    [
        ("ts_exchange", np.int64),  # ns since epoch at the venue, 0 = unknown
        ("ts_provider", np.int64),  # ns since epoch at the provider, 0 = unknown
        ("ts_receive", np.int64),  # ns since epoch when our socket read the frame
        ("price", np.float64),
        ("size", np.float64),  # base-currency amount
        ("sequence", np.int64),  # venue sequence or trade id, SEQ_NONE if none
        ("instrument", np.uint32),
        ("provider", np.uint16),
        ("venue", np.uint16),
        ("kind", np.uint8),
        ("data_class", np.uint8),
        ("side", np.uint8),
        ("flags", np.uint8),
        ("reserved", np.uint32),
    ],
    align=True,
)

RECORD_SIZE = RECORD_DTYPE.itemsize
assert RECORD_SIZE == 64, RECORD_SIZE


def empty_records(n: int) -> np.ndarray:
    """A zeroed record array of length ``n``."""
    return np.zeros(n, dtype=RECORD_DTYPE)


def health_records(kind: int, flags: int, provider: int, venues, data_classes) -> np.ndarray:
    """Health records (KIND_STATUS, KIND_HEARTBEAT, ...) of one provider, one per venue in
    ``venues`` (with its data class), received now: no instrument, no sequence."""
    rec = np.zeros(len(venues), RECORD_DTYPE)
    rec["ts_receive"] = time.time_ns()
    rec["sequence"] = SEQ_NONE
    rec["instrument"] = NO_INSTRUMENT
    rec["provider"] = provider
    rec["venue"] = venues
    rec["kind"] = kind
    rec["data_class"] = data_classes
    rec["flags"] = flags
    return rec
