"""Canonical instrument names ↔ Kraken spot v2 symbols.

Kraken's v2 API names pairs ``BASE/QUOTE`` with the common asset codes (``BTC/USD``, not the
v1 / REST ``XBT/USD``), so the mapping is the separator. ``XBT`` and ``XDG`` (Kraken's legacy
codes) are read back as ``BTC`` and ``DOGE`` should a message carry them.
"""

from __future__ import annotations

_LEGACY = {"XBT": "BTC", "XDG": "DOGE"}


def _split(name: str, sep: str) -> tuple[str, str]:
    base, s, quote = name.partition(sep)
    if not s or not base or not quote or sep in quote:
        raise ValueError(f"not a BASE{sep}QUOTE spot name: {name!r}")
    if not (base.isascii() and base.isalnum() and quote.isascii() and quote.isalnum()):
        raise ValueError(f"not a BASE{sep}QUOTE spot name: {name!r}")
    return base, quote


def to_symbol(instrument: str) -> str:
    """``"BTC-USD"`` → ``"BTC/USD"``."""
    base, quote = _split(instrument, "-")
    return f"{base.upper()}/{quote.upper()}"


def from_symbol(symbol: str) -> str:
    """``"BTC/USD"`` (or legacy ``"XBT/USD"``) → ``"BTC-USD"``."""
    base, quote = _split(symbol, "/")
    return f"{_LEGACY.get(base, base)}-{_LEGACY.get(quote, quote)}"
