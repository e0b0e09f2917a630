"""Allowed ranges of numeric settings: declared once per setting, checked at load, documented.

A value outside its range would not fail at load but later, and worse: a NaN heartbeat kills
every child for ever, a huge batch crash-loops compute, a zero stall timeout recreates the
producer without end. Every numeric setting of the configuration has a `Range` (a test keeps it
so), and ``docs/configuration.md`` lists them all (``ranges_markdown``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (``lo < value`` when ``lo_open``); ``off`` is a value outside the
    range that is accepted too, meaning "off" or "the default" (e.g. 0)."""

    lo: float
    hi: float
    lo_open: bool = False
    off: float | None = None
    power_of_two: bool = False
    why: str = ""  # the reason for a bound, added to the error message

    def problem(self, value: float) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.off is not None and value == self.off:
            return None
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        if low_ok and value <= self.hi and (not self.power_of_two or _pow2(int(value))):
            return None
        why = f": {self.why}" if self.why else ""
        return f"must be {self.text()}, got {_num(value)}{why}"

    def text(self) -> str:
        """The range in words, as error messages and the documentation give it."""
        if self.lo_open:
            body = f"> {_num(self.lo)} and <= {_num(self.hi)}"
        else:
            body = f"between {_num(self.lo)} and {_num(self.hi)}"
        if self.power_of_two:
            body = f"a power of two {body}"
        return body if self.off is None else f"{_num(self.off)} or {body}"


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _num(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}"


# Bounds used by many settings.
HOUR, DAY, WEEK = 3600.0, 86400.0, 604800.0
