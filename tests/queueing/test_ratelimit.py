from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries
from pytest_django.fixtures import SettingsWrapper

from queueing.models import Message, RateLimitHit
from queueing.ratelimit import (
    Bucket,
    Decision,
    LimiterUnavailable,
    RedisLimiter,
    SqlLimiter,
    buckets_for,
    get_limiter,
)
from tenants.models import SmtpAccount, Tenant
from tests.factories import SmtpAccountFactory, TenantFactory

# Database 15 of the real Redis: the tests flush it, never the application's.
REDIS_TEST_URL = "redis://127.0.0.1:6379/15"
NOTHING_LISTENS_URL = "redis://127.0.0.1:1/0"
PROJECT_DIR = Path(__file__).resolve().parents[2]

_external_ids = itertools.count()


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_limiter(store: redis.Redis) -> RedisLimiter:
    return RedisLimiter(url=REDIS_TEST_URL)


@pytest.fixture(params=["redis", "sql"])
def limiter(request: pytest.FixtureRequest, db: None) -> RedisLimiter | SqlLimiter:
    if request.param == "redis":
        return request.getfixturevalue("redis_limiter")
    return SqlLimiter()


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def sent_message(account: SmtpAccount, *, seconds_ago: float) -> Message:
    now = timezone.now()
    return Message.objects.create(
        tenant=account.tenant,
        account=account,
        external_id=f"sent-{next(_external_ids)}",
        from_addr="sender@example.com",
        to=["rcpt@example.com"],
        subject="Hello",
        message_id=f"<{next(_external_ids)}@example.com>",
        next_attempt_at=now,
        status="sent",
        sent_at=now - timedelta(seconds=seconds_ago),
    )


# Behaviour shared by both backends


def test_sixth_send_in_a_minute_waits_for_the_first_token(limiter: RedisLimiter | SqlLimiter) -> None:
    bucket = Bucket(key="acct:1:60", limit=5, window=60)
    first = time.time()
    decisions = [limiter.acquire([bucket], member="msg") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.retry_at for d in decisions[:5]] == [None] * 5
    assert len({d.token for d in decisions[:5]}) == 5  # each grant names its own token
    assert decisions[5].retry_at == pytest.approx(first + 60, abs=0.5)


def test_refused_acquisition_takes_from_no_bucket(limiter: RedisLimiter | SqlLimiter) -> None:
    roomy = Bucket(key="acct:1:60", limit=10, window=60)
    tight = Bucket(key="tenant:acme:60", limit=1, window=60)
    assert limiter.acquire([roomy, tight], member="a").allowed
    assert not limiter.acquire([roomy, tight], member="b").allowed
    # One token of `roomy` is spent; the refused attempt must not have spent a second.
    assert [limiter.acquire([roomy], member="c").allowed for _ in range(10)] == [True] * 9 + [False]


def test_tokens_come_back_one_window_after_they_were_spent(limiter: RedisLimiter | SqlLimiter) -> None:
    bucket = Bucket(key="acct:1:2", limit=2, window=2)
    first = time.time()
    assert limiter.acquire([bucket], member="a").allowed
    assert limiter.acquire([bucket], member="b").allowed
    spent = time.time()
    # A continuous refill would have one token back by now; the sliding log has none.
    sleep_until(spent + 1)
    refused = limiter.acquire([bucket], member="c")
    assert not refused.allowed
    assert refused.retry_at is not None
    assert first + 2 <= refused.retry_at + 0.01 <= spent + 2.01
    sleep_until(spent + 2.05)
    assert limiter.acquire([bucket], member="d").allowed


def test_a_token_restamped_at_arrival_comes_back_one_window_after_the_arrival(
    limiter: RedisLimiter | SqlLimiter,
) -> None:
    """The token is taken before a slow SMTP conversation; dated at the grant it would come
    back early, and the server would count limit + 1 arrivals in one window."""
    bucket = Bucket(key="acct:1:2", limit=1, window=2)
    granted = limiter.acquire([bucket], member="slow")
    assert granted.allowed
    assert granted.token
    time.sleep(1.0)  # the conversation
    arrived = time.time()
    limiter.restamp([bucket], granted)
    sleep_until(arrived + 1.3)  # past grant + window, before arrival + window
    refused = limiter.acquire([bucket], member="next")
    assert not refused.allowed
    assert refused.retry_at == pytest.approx(arrived + 2, abs=0.2)
    sleep_until(arrived + 2.05)
    assert limiter.acquire([bucket], member="next").allowed


def test_the_previous_token_is_restamped_with_the_next_acquisition(limiter: RedisLimiter | SqlLimiter) -> None:
    """One call per message: the last message's token is dated at its arrival, then the next is taken."""
    bucket = Bucket(key="acct:1:3", limit=2, window=3)
    first = limiter.acquire([bucket], member="first")
    time.sleep(1.0)  # its SMTP conversation
    arrived = time.time()
    second = limiter.acquire([bucket], member="second", restamp=first)  # a fresh process: scripts get loaded
    assert second.allowed
    sleep_until(arrived + 2.4)  # past first's grant + window, before its arrival + window
    refused = limiter.acquire([bucket], member="third")
    assert not refused.allowed  # two tokens in the window: the restamp was done, the acquisition once
    assert refused.retry_at == pytest.approx(arrived + 3, abs=0.2)


def test_the_combined_call_survives_redis_forgetting_its_scripts(
    redis_limiter: RedisLimiter, store: redis.Redis
) -> None:
    bucket = Bucket(key="acct:1:60", limit=3, window=60)
    first = redis_limiter.acquire([bucket], member="a")
    second = redis_limiter.acquire([bucket], member="b", restamp=first)
    store.script_flush()  # as after a restart
    third = redis_limiter.acquire([bucket], member="c", restamp=second)
    assert [first.allowed, second.allowed, third.allowed] == [True, True, True]
    assert store.zcard("gmp:rl:acct:1:60") == 3  # each acquisition counted once
    assert not redis_limiter.acquire([bucket], member="d", restamp=third).allowed


def test_retry_at_with_two_full_buckets_is_the_later_return(limiter: RedisLimiter | SqlLimiter) -> None:
    long_window = Bucket(key="tenant:acme:30", limit=1, window=30)
    short_window = Bucket(key="acct:1:10", limit=1, window=10)
    first = time.time()
    assert limiter.acquire([long_window], member="a").allowed
    assert limiter.acquire([short_window], member="b").allowed
    for buckets in ([long_window, short_window], [short_window, long_window]):
        decision = limiter.acquire(buckets, member="c")
        assert not decision.allowed
        assert decision.retry_at == pytest.approx(first + 30, abs=0.5)


def test_same_member_twice_counts_twice(limiter: RedisLimiter | SqlLimiter) -> None:
    bucket = Bucket(key="acct:1:60", limit=2, window=60)
    assert [limiter.acquire([bucket], member="same").allowed for _ in range(3)] == [True, True, False]


def test_empty_bucket_list_is_allowed(limiter: RedisLimiter | SqlLimiter) -> None:
    assert limiter.acquire([], member="msg") == Decision(allowed=True, retry_at=None)


def test_empty_bucket_list_touches_no_store(db: None, django_assert_num_queries: DjangoAssertNumQueries) -> None:
    with django_assert_num_queries(0):
        assert SqlLimiter().acquire([], member="msg").allowed
    assert RedisLimiter(url=NOTHING_LISTENS_URL).acquire([], member="msg").allowed


# Buckets of an account and its tenant


def test_buckets_for_account_and_tenant_limits() -> None:
    tenant = Tenant(id="acme", rate_limits={"per_minute": 50, "per_day": 5000})
    account = SmtpAccount(pk=12, tenant=tenant, limit_per_minute=10, limit_per_hour=100, limit_per_day=1000)
    assert buckets_for(account, tenant) == [
        Bucket(key="acct:12:60", limit=10, window=60, account_pk=12),
        Bucket(key="acct:12:3600", limit=100, window=3600, account_pk=12),
        Bucket(key="acct:12:86400", limit=1000, window=86400, account_pk=12),
        Bucket(key="tenant:acme:60", limit=50, window=60, tenant_id="acme"),
        Bucket(key="tenant:acme:86400", limit=5000, window=86400, tenant_id="acme"),
    ]


def test_zero_or_empty_limits_give_no_bucket() -> None:
    tenant = Tenant(id="acme", rate_limits={"per_minute": 0, "per_hour": None})
    account = SmtpAccount(pk=12, tenant=tenant, limit_per_minute=0, limit_per_hour=None, limit_per_day=None)
    assert buckets_for(account, tenant) == []
    assert buckets_for(account, Tenant(id="plain")) == []


def test_bucket_without_tokens_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        Bucket(key="acct:1:60", limit=0, window=60)


# Redis: refill from the database after the store lost its data


@pytest.mark.django_db
def test_lost_redis_data_is_refilled_from_recorded_sends(redis_limiter: RedisLimiter, store: redis.Redis) -> None:
    account = SmtpAccountFactory(tenant=TenantFactory())
    oldest = sent_message(account, seconds_ago=1800)
    sent_message(account, seconds_ago=1200)
    sent_message(account, seconds_ago=600)
    bucket = Bucket(key=f"acct:{account.pk}:3600", limit=3, window=3600, account_pk=account.pk)

    first = redis_limiter.acquire([bucket], member="new")
    assert not first.allowed
    assert first.retry_at == pytest.approx(oldest.sent_at.timestamp() + 3600, abs=0.5)

    store.flushdb()
    again = redis_limiter.acquire([bucket], member="new")
    assert not again.allowed
    assert again.retry_at == pytest.approx(oldest.sent_at.timestamp() + 3600, abs=0.5)
    assert store.exists(f"gmp:rl:seeded:{bucket.key}")
    assert store.ttl(f"gmp:rl:seeded:{bucket.key}") == -1


@pytest.mark.django_db
def test_refill_counts_only_sends_within_the_window(redis_limiter: RedisLimiter) -> None:
    account = SmtpAccountFactory(tenant=TenantFactory())
    sent_message(account, seconds_ago=7200)
    sent_message(account, seconds_ago=1800)
    sent_message(account, seconds_ago=60)
    bucket = Bucket(key=f"acct:{account.pk}:3600", limit=3, window=3600, account_pk=account.pk)
    assert redis_limiter.acquire([bucket], member="new").allowed
    assert not redis_limiter.acquire([bucket], member="new").allowed


@pytest.mark.django_db
def test_tenant_bucket_is_refilled_from_all_its_accounts(redis_limiter: RedisLimiter) -> None:
    tenant = TenantFactory(rate_limits={"per_hour": 2})
    first, second = SmtpAccountFactory(tenant=tenant), SmtpAccountFactory(tenant=tenant, is_default=False)
    earlier = sent_message(first, seconds_ago=600)
    sent_message(second, seconds_ago=60)
    decision = redis_limiter.acquire(buckets_for(second, tenant), member="new")
    assert not decision.allowed
    assert decision.retry_at == pytest.approx(earlier.sent_at.timestamp() + 3600, abs=0.5)


@pytest.mark.django_db
def test_refilling_twice_counts_each_send_once(redis_limiter: RedisLimiter, store: redis.Redis) -> None:
    account = SmtpAccountFactory(tenant=TenantFactory())
    sent_message(account, seconds_ago=300)
    sent_message(account, seconds_ago=200)
    bucket = Bucket(key=f"acct:{account.pk}:3600", limit=3, window=3600, account_pk=account.pk)
    # Two workers that both found the marker missing refill the same bucket.
    redis_limiter._seed(store, [bucket])
    redis_limiter._seed(store, [bucket])
    assert store.zcard(f"gmp:rl:{bucket.key}") == 2
    assert redis_limiter.acquire([bucket], member="new").allowed
    assert not redis_limiter.acquire([bucket], member="new").allowed


# Redis: failures


def test_unreachable_redis_raises_limiter_unavailable_quickly() -> None:
    limiter = RedisLimiter(url=NOTHING_LISTENS_URL)
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        limiter.acquire([Bucket(key="acct:1:60", limit=5, window=60)], member="msg")
    assert time.monotonic() - started < 3


def test_redis_that_never_answers_raises_limiter_unavailable() -> None:
    # Accepts connections (the kernel's backlog) but never replies: the socket timeout ends it.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        limiter = RedisLimiter(url=f"redis://127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            limiter.acquire([Bucket(key="acct:1:60", limit=5, window=60)], member="msg")
        assert time.monotonic() - started < 3


# Redis: the limit holds across processes

CHILD = """
import sys

import django

django.setup()
from queueing.ratelimit import Bucket, RedisLimiter

url, name = sys.argv[1], sys.argv[2]
limiter = RedisLimiter(url=url)
limiter.acquire([Bucket(key="warmup:" + name, limit=1, window=60)], member=name)  # connect, load the script
print("ready", flush=True)
sys.stdin.readline()
bucket = Bucket(key="acct:race:60", limit=5, window=60)
print(sum(limiter.acquire([bucket], member=name).allowed for _ in range(20)), flush=True)
"""


def test_limit_holds_across_processes(store: redis.Redis) -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, REDIS_TEST_URL, f"p{index}"],
            cwd=PROJECT_DIR, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for index in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        for child in children:  # all warmed up: start them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=30) for child in children]
    finally:
        for child in children:
            child.kill()
    assert all(child.returncode == 0 for child in children), [err for _, err in outputs]
    assert sum(int(out) for out, _ in outputs) == 5
    assert store.zcard("gmp:rl:acct:race:60") == 5


# SQL: the limit holds across connections


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sql_limit_holds_across_concurrent_connections() -> None:
    bucket = Bucket(key="acct:race:60", limit=5, window=60)
    barrier = threading.Barrier(8)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            results = [SqlLimiter().acquire([bucket], member="m").allowed for _ in range(5)]
        finally:
            connection.close()
        with lock:
            allowed.extend(results)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 5
    assert RateLimitHit.objects.filter(bucket_id=bucket.key).count() == 5


def test_sql_limiter_forgets_hits_older_than_the_window(db: None) -> None:
    bucket = Bucket(key="acct:1:60", limit=1, window=60)
    assert SqlLimiter().acquire([bucket], member="a").allowed
    RateLimitHit.objects.update(at=timezone.now() - timedelta(seconds=61))
    assert SqlLimiter().acquire([bucket], member="b").allowed
    assert RateLimitHit.objects.count() == 1


# Configuration


def test_embedded_instance_defaults_to_the_sql_limiter(settings: SettingsWrapper) -> None:
    if hasattr(settings, "GMP_RATE_LIMITER"):
        del settings.GMP_RATE_LIMITER
    settings.EMBEDDED = True
    assert isinstance(get_limiter(), SqlLimiter)


def test_server_instance_defaults_to_redis_without_connecting_yet(settings: SettingsWrapper) -> None:
    if hasattr(settings, "GMP_RATE_LIMITER"):
        del settings.GMP_RATE_LIMITER
    settings.EMBEDDED = False
    settings.REDIS_URL = NOTHING_LISTENS_URL
    limiter = get_limiter()
    assert isinstance(limiter, RedisLimiter)
    assert limiter.url == NOTHING_LISTENS_URL
    assert get_limiter() is limiter


def test_explicit_limiter_setting_wins(settings: SettingsWrapper) -> None:
    settings.EMBEDDED = True
    settings.GMP_RATE_LIMITER = "redis"
    assert isinstance(get_limiter(), RedisLimiter)
    settings.GMP_RATE_LIMITER = "memcached"
    with pytest.raises(ImproperlyConfigured):
        get_limiter()
