from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.e2e.harness import Stack
from tests.smtp_sink import SmtpSink


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Real processes on the test database; every one of them stopped after the test."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    fleet = Stack.for_test(tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        print(fleet.logs())  # shown by pytest when the test failed
