"""Rates written as text (`100/s`, `6000/min`, `off`), as settings give them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mailproxy.env import ConfigError

UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    requests: int
    seconds: int


@lru_cache(maxsize=8)
def parse_rate(text: str, name: str = "GMP_API_RATE") -> Rate | None:
    """'100/s', '6000/min', '10000/hour'; '0' or 'off' for no limit."""
    if text.strip().lower() in ("", "0", "off", "none"):
        return None
    match = RATE.match(text.lower())
    if match is None or match[2] not in UNITS or int(match[1]) < 1:
        raise ConfigError(f"{name} must look like 100/s, 600/min or 10000/hour (or off), got {text!r}")
    return Rate(int(match[1]), UNITS[match[2]])
