"""Sliding-window counts of send times, and the naive limiter the checker must catch.

A limit of `limit` per `window` seconds holds when no half-open interval [t, t + window)
holds more than `limit` sends (SPEC §6: a token spent at t is back at t + window, so a
send at exactly t + window is allowed again).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def busiest(times: Iterable[float], window: float) -> int:
    """The largest number of sends in any half-open interval of `window` seconds."""
    ordered = sorted(times)
    best = 0
    first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


@dataclass(frozen=True)
class Overshoot:
    window: float
    limit: int
    busiest: int


def overshoots(times: Sequence[float], limits: dict[float, int], *, allowance: float = 0.0) -> list[Overshoot]:
    """Every window whose busiest interval holds more sends than its limit (empty: the limits held).

    `allowance` shortens each window: the limiter stamps a token when it is taken, the
    server stamps the message when it arrives, one SMTP transaction later. Two stamps of
    sends a window apart can come closer by the difference of their transaction times.
    """
    found = []
    for window, limit in sorted(limits.items()):
        count = busiest(times, window - allowance)
        if count > limit:
            found.append(Overshoot(window=window, limit=limit, busiest=count))
    return found


class NaiveLimiter:
    """A per-process in-memory counter: what each worker would do without a shared store.

    Every process believes it alone owns the limit, so N processes send up to N times it.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.spent: list[float] = []

    def acquire(self) -> bool:
        now = time.monotonic()
        self.spent = [at for at in self.spent if now - at < self.window]
        if len(self.spent) >= self.limit:
            return False
        self.spent.append(now)
        return True
