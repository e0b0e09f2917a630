"""Canonical instrument names ↔ the venue's symbols. Pure functions, no I/O.

Replace the rule with the venue's own (and test it both ways against the venue's reference
data): here ``BTC-USD`` ↔ ``BTC_USD``.
"""

from __future__ import annotations


def to_symbol(instrument: str) -> str:
    """The venue's symbol of a canonical instrument name."""
    return instrument.replace("-", "_")


def to_instrument(symbol: str) -> str:
    """The canonical name of one of the venue's symbols."""
    return symbol.replace("_", "-")
