"""Faults a local provider server can inject on command, the same set for every protocol.

A test (or the control socket, later) flips these on a running server; the server's streaming
loop and request handler consult them. Each server documents which faults its protocol can
express (e.g. only CoinAPI has a reconnect notice).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Fault(enum.Enum):
    DISCONNECT = "disconnect"  # abort every connection's TCP transport (one-shot)
    STALL = "stall"  # socket stays open, nothing at all is sent (no data, no heartbeat)
    HEARTBEATS_ONLY = "heartbeats_only"  # heartbeats continue, data stops
    RATE_SCALE = "rate_scale"  # the data rate is multiplied by `amount` (> 0), e.g. 0.05
    SEQUENCE_GAP = "sequence_gap"  # the next event of each instrument skips `amount` numbers
    EXCHANGE_DELAY = "exchange_delay"  # exchange timestamps lag by `amount` ms
    PRICE_OFFSET = "price_offset"  # prices move by `amount` basis points
    MALFORMED = "malformed"  # `amount` malformed frames are written (one-shot)
    RECONNECT_NOTICE = "reconnect_notice"  # the protocol's "please reconnect" message (one-shot)
    REJECT_SUBSCRIBE = "reject_subscribe"  # subscribe requests get a rate-limit error
    # one text message of `amount` bytes to every connection (one-shot): hostile input a client
    # must refuse without holding it whole
    OVERSIZED_FRAME = "oversized_frame"  # as one frame
    OVERSIZED_FRAGMENTED = "oversized_fragmented"  # in fragments of 64 KiB


@dataclass
class FaultState:
    """The persistent faults currently active on a server (one-shot faults act immediately)."""

    stall: bool = False
    heartbeats_only: bool = False
    rate_scale: float = 1.0
    exchange_delay_ms: float = 0.0
    price_offset_bps: float = 0.0
    reject_subscribe: bool = False

    def clear(self) -> None:
        self.stall = self.heartbeats_only = self.reject_subscribe = False
        self.exchange_delay_ms = self.price_offset_bps = 0.0
        self.rate_scale = 1.0
