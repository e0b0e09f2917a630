"""Canonical instrument names ↔ Coinbase product ids.

Coinbase spot products are named ``BASE-QUOTE`` in upper case (``BTC-USD``), exactly the
canonical form, so the mapping is the identity for spot; it still validates the shape so a typo
in a configuration fails at start, not as an endless stream of unknown-product parse errors.
"""

from __future__ import annotations


def _check(name: str) -> str:
    base, sep, quote = name.partition("-")
    if not sep or not base or not quote or "-" in quote or name != name.upper():
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    if not (base.isascii() and base.isalnum() and quote.isascii() and quote.isalnum()):
        raise ValueError(f"not a BASE-QUOTE spot name: {name!r}")
    return name


def to_product_id(instrument: str) -> str:
    """Coinbase product id of a canonical spot instrument (``"BTC-USD"`` → ``"BTC-USD"``)."""
    return _check(instrument)


def from_product_id(product_id: str) -> str:
    """Canonical instrument name of a Coinbase spot product id."""
    return _check(product_id)
