"""Exact timestamp text → integer nanoseconds, shared by the provider parsers.

No float on the way: ISO-8601 fractions of up to 9 digits survive to the nanosecond (CoinAPI
sends 7, Coinbase 6, Kraken 6). The date part is converted once per distinct minute (cached).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_POW10 = tuple(10 ** (9 - k) for k in range(10))  # scale of a fraction with k digits
_MINUTE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_minutes: dict[str, int] = {}


def _minute_ns(prefix: str) -> int:
    if _MINUTE_RE.fullmatch(prefix) is None:
        raise ValueError(f"bad timestamp {prefix!r}")
    dt = datetime(
        int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]), int(prefix[11:13]),
        int(prefix[14:16]), tzinfo=UTC,
    )  # fmt: skip
    ns = (dt - _EPOCH).days * 86_400_000_000_000 + (dt - _EPOCH).seconds * 1_000_000_000
    if len(_minutes) >= 4096:
        _minutes.clear()
    _minutes[prefix] = ns
    return ns


def iso_to_ns(s: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS[.f…]Z`` (0 to 9 fractional digits) → ns since epoch, exact.

    The date and minute are converted once per distinct minute (cached); seconds and fraction
    are integer arithmetic on the digits. Raises ValueError for anything else.
    """
    ns = _minutes.get(s[:16])
    if ns is None:
        ns = _minute_ns(s[:16])
    n = len(s)
    sec = s[17:19]
    if s[16] != ":" or n < 20 or s[-1] != "Z" or not (sec.isdigit() and sec.isascii()):
        raise ValueError(f"bad timestamp {s!r}")
    ns += int(sec) * 1_000_000_000
    if n == 20:
        return ns
    frac = s[20:-1]
    k = len(frac)
    if s[19] != "." or k > 9 or not (frac.isdigit() and frac.isascii()):
        raise ValueError(f"bad timestamp {s!r}")
    return ns + int(frac) * _POW10[k]


def go_time_to_ns(s: str) -> int:
    """Go's ``time.Time`` text (``2026-08-09 21:05:48.854840045 +0000 UTC m=+…``) → ns, UTC only."""
    end = s.find(" ", 11)
    if len(s) < 19 or s[10] != " " or end < 0 or not s.startswith(" +0000", end):
        raise ValueError(f"bad time {s[:40]!r}")
    return iso_to_ns(f"{s[:10]}T{s[11:end]}Z")
