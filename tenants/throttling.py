"""The API's own rate limit per token (`GMP_API_RATE`, default 100/s): 429 with Retry-After.

A fixed-window counter per token and window: one atomic INCR in Redis when the fleet
shares one (every web process counts against the same number), a counter in the process
for the embedded instance (one web process). It protects the instance from a runaway
client; it is not the delivery rate limit, which is exact and lives in queueing.ratelimit.
When Redis does not answer, requests pass: refusing all mail because a counter is out of
reach would be the worse failure.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from mailproxy.rates import parse_rate

logger = logging.getLogger(__name__)

class _LocalCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, window: int) -> int:
        with self._lock:
            if len(self._counts) > 10000:  # old windows: keep the table small
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            self._counts[(key, window)] = self._counts.get((key, window), 0) + 1
            return self._counts[(key, window)]


_local = _LocalCounter()
_warned = threading.Event()


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def _count(key: str, window: int, ttl: int) -> int | None:
    if settings.GMP_RATE_LIMITER != "redis":
        return _local.hit(key, window)
    name = f"gmp:api-rate:{key}:{window}"
    try:
        pipe = _redis(settings.REDIS_URL).pipeline()
        pipe.incr(name)
        pipe.expire(name, ttl)
        count, _ = pipe.execute()
        return int(count)
    except redis.RedisError as exc:
        if not _warned.is_set():
            _warned.set()
            logger.warning("api rate limit not applied: redis unavailable (%s)", type(exc).__name__)
        return None


class TokenRateThrottle(BaseThrottle):
    """Counts requests per caller: an API key by its prefix, the admin token as one caller."""

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = parse_rate(settings.GMP_API_RATE)
        principal = getattr(request, "user", None)
        if rate is None or principal is None or not getattr(principal, "is_authenticated", False):
            return True  # public endpoints, and refusals of authentication, are not counted
        key = principal.key.prefix if getattr(principal, "key", None) is not None else "admin"
        now = time.time()
        window = int(now // rate.seconds)
        count = _count(key, window, rate.seconds + 1)
        self._wait = (window + 1) * rate.seconds - now
        return count is None or count <= rate.requests

    def wait(self) -> float | None:
        return max(1.0, getattr(self, "_wait", 1.0))
