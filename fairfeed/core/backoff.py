"""Capped exponential backoff with full jitter, the one retry schedule used everywhere."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay schedule: ``uniform(base * factor**n / 2, min(cap, base * factor**n))``.

    Half-jitter keeps retries spread out without ever retrying immediately in a hot loop.
    Call :meth:`next_delay` after each failure and :meth:`reset` after a success.
    """

    base: float = 0.1
    cap: float = 10.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
