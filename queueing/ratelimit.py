"""Rate limits: sliding-log token buckets in Redis (one Lua script per decision) or in SQL.

Each window is a bucket of `limit` tokens and a token spent at time t comes back at
t + window (SPEC §6). A continuous refill would let a burst right after a quiet period
exceed what a provider counting "N per rolling window" accepts; a log of the spent tokens
guarantees that no sliding window of that length ever sees more than `limit` sends.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from redis.commands.core import Script

from queueing.models import Message, RateLimitBucket, RateLimitHit
from tenants.models import SmtpAccount, Tenant

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_TIMEOUT = 2.0  # seconds, to connect and per command: a dead Redis pauses sending, never hangs it
# Refill rounds per decision: a store that loses its data again while being refilled is
# treated as unavailable rather than looped on.
MAX_SEED_ROUNDS = 2

WINDOWS = (("minute", 60), ("hour", 3600), ("day", 86400))

# Redis errors that mean "the store cannot be reached now". A replica promoted away from
# under us answers READONLY until the client follows the failover: a pause, not a bug.
_UNAVAILABLE_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

ACQUIRE_LUA = """
-- Take one token from every bucket or from none (sliding log, SPEC §6).
--
-- KEYS[1..n]        gmp:rl:<bucket>: sorted set, one entry per spent token, score = time (s)
-- KEYS[n+1..2n]     gmp:rl:seeded:<bucket>: persistent marker; missing = the log may have
--                   lost entries (FLUSHALL, restart without persistence)
-- ARGV[1]           the caller's member; made unique with the time
-- ARGV[2i], ARGV[2i+1]   limit and window (s) of bucket i
--
-- Returns {1}: taken from every bucket
--         {0, retry_at}: refused; retry_at (s, Redis clock) as a string, because Lua
--                        numbers are truncated to integers on the way out
--         {2, i, ...}: buckets i (1-based) must be refilled from the database first
local n = #KEYS / 2

local missing = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[n + i]) == 0 then
    missing[#missing + 1] = i
  end
end
if #missing > 0 then
  return {2, unpack(missing)}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local retry_at = nil
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  -- a token spent at t is back at t + window: entries at or before now - window are free
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    -- Tokens come back oldest first. With more entries than the limit (the limit was
    -- lowered) a token is free only once count - limit + 1 of them are back.
    local entry = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local at = tonumber(entry[2]) + window
    if retry_at == nil or at > retry_at then
      retry_at = at
    end
  end
end
if retry_at ~= nil then
  return {0, string.format('%.6f', retry_at)}
end

-- The same member twice in one microsecond must still count twice.
local base = string.format('%s:%s.%06d', ARGV[1], t[1], tonumber(t[2]))
local member = base
local suffix = 0
local taken = true
while taken do
  taken = false
  for i = 1, n do
    if redis.call('ZSCORE', KEYS[i], member) then
      taken = true
    end
  end
  if taken then
    suffix = suffix + 1
    member = base .. '#' .. suffix
  end
end

for i = 1, n do
  redis.call('ZADD', KEYS[i], now, member)
  -- the newest entry is this one: the whole log is useless one window from now
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]) * 1000)
end
return {1, member}
"""

RESTAMP_LUA = """
-- A token's time moves to when its message reached the server (see RedisLimiter.restamp).
-- KEYS[1..n] the bucket logs; ARGV[1] the member; ARGV[1 + i] the window (s) of bucket i.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'GT', 'CH', now, ARGV[1]) == 1 then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1 + i]) * 1000)
  end
end
return 1
"""


class LimiterUnavailable(Exception):
    """The limiter's store cannot be reached: the caller pauses limited sending, never drops mail."""


@dataclass(frozen=True)
class Bucket:
    """One window of one rate limit: `limit` tokens, each back `window` seconds after it was spent.

    `account_pk` / `tenant_id` say which recorded sends refill the bucket after the store
    lost its data (the account's, else the tenant's; neither: it starts empty).
    """

    key: str
    limit: int
    window: int
    account_pk: int | None = None
    tenant_id: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window < 1:
            raise ValueError(f"bucket {self.key!r} needs limit >= 1 and window >= 1 s")


@dataclass(frozen=True)
class Decision:
    """The answer to one acquisition; `retry_at` (unix s, limiter clock) is None when allowed."""

    allowed: bool
    retry_at: float | None
    # What `restamp` needs to find the token again: the member (Redis) or the hit rows (SQL).
    token: str | tuple[int, ...] | None = None


ALLOWED = Decision(allowed=True, retry_at=None)


def buckets_for(account: SmtpAccount, tenant: Tenant) -> list[Bucket]:
    """The buckets one send through `account` for `tenant` takes from (empty or 0 = no limit)."""
    buckets: list[Bucket] = []
    for name, window in WINDOWS:
        limit = getattr(account, f"limit_per_{name}")
        if limit:
            buckets.append(Bucket(key=f"acct:{account.pk}:{window}", limit=limit, window=window,
                                  account_pk=account.pk))
    tenant_limits = tenant.rate_limits or {}
    for name, window in WINDOWS:
        limit = tenant_limits.get(f"per_{name}")
        if limit:
            buckets.append(Bucket(key=f"tenant:{tenant.id}:{window}", limit=int(limit), window=window,
                                  tenant_id=tenant.id))
    return buckets


def _log_key(bucket: Bucket) -> str:
    return f"gmp:rl:{bucket.key}"


def _restamp_call(buckets: list[Bucket], token: str) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of RESTAMP_LUA for one token."""
    return [_log_key(b) for b in buckets], [token, *(b.window for b in buckets)]


def _marker_key(bucket: Bucket) -> str:
    return f"gmp:rl:seeded:{bucket.key}"


class RedisLimiter:
    """The shared limiter: one atomic Lua script per decision, on Redis's clock (`TIME`).

    The client is created on first use in each process (a fork gets its own), never at
    import. Redis errors become `LimiterUnavailable`.
    """

    def __init__(self, *, url: str | None = None) -> None:
        self.url = url or str(getattr(settings, "REDIS_URL", DEFAULT_REDIS_URL))
        self._pid: int | None = None
        self._client: redis.Redis | None = None
        self._script: Script | None = None
        self._restamp: Script | None = None

    def _connect(self) -> tuple[redis.Redis, Script]:
        # A client inherited through fork shares its sockets with the parent: replace it.
        if self._client is None or self._script is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                decode_responses=True,
            )
            self._script = self._client.register_script(ACQUIRE_LUA)
            self._restamp = self._client.register_script(RESTAMP_LUA)
            self._pid = os.getpid()
        return self._client, self._script

    def restamp(self, buckets: list[Bucket], decision: Decision) -> None:
        """Date a granted token at now, when its message reached the server.

        The token was taken before the message was built and the SMTP conversation held,
        which may take seconds: dated at the grant, it would come back that much early,
        and a provider counting arrivals could see limit + 1 in one window.
        """
        if not buckets or not isinstance(decision.token, str):
            return
        try:
            self._connect()
            if self._restamp is None:  # _connect always sets it
                return
            self._restamp(*_restamp_call(buckets, decision.token))
        except _UNAVAILABLE_ERRORS as exc:
            raise LimiterUnavailable(f"rate-limit store unreachable: {exc}") from exc

    def acquire(self, buckets: list[Bucket], *, member: str, restamp: Decision | None = None) -> Decision:
        """Take one token from every bucket or from none.

        Refused: `retry_at` is when every bucket has a token again, on Redis's clock.
        `restamp`: an earlier grant of the same buckets, dated at now first, in the same
        round trip (a worker's previous message, see `restamp`).
        Raises `LimiterUnavailable` when Redis cannot be reached.
        """
        if not buckets:
            return ALLOWED
        keys = [_log_key(b) for b in buckets] + [_marker_key(b) for b in buckets]
        args: list[str | int] = [member]
        for bucket in buckets:
            args += [bucket.limit, bucket.window]
        try:
            client, script = self._connect()
            for round_ in range(1 + MAX_SEED_ROUNDS):
                if round_ == 0 and restamp is not None and isinstance(restamp.token, str):
                    reply = self._restamp_then_acquire(client, script, buckets, restamp.token, keys, args)
                else:
                    reply = script(keys=keys, args=args)
                if reply[0] == 1:
                    return Decision(allowed=True, retry_at=None, token=str(reply[1]))
                if reply[0] == 0:
                    return Decision(allowed=False, retry_at=float(reply[1]))
                self._seed(client, [buckets[int(index) - 1] for index in reply[1:]])
        except _UNAVAILABLE_ERRORS as exc:
            raise LimiterUnavailable(f"rate-limit store unreachable: {exc}") from exc
        raise LimiterUnavailable("rate-limit store lost its data again while being refilled")

    def _restamp_then_acquire(self, client: redis.Redis, script: Script, buckets: list[Bucket], token: str,
                              keys: list[str], args: list[str | int]) -> Any:
        # Plain EVALSHA in a pipeline: redis-py's pipelined Script would ask SCRIPT EXISTS
        # first, a round trip of its own. A script Redis does not hold (first use, or after
        # a restart) is run again alone through its Script object, which loads it; the
        # other command's answer stands (an acquisition is never run twice).
        restamp_keys, restamp_args = _restamp_call(buckets, token)
        restamper = self._restamp
        if restamper is None:  # _connect always sets it
            return script(keys=keys, args=args)
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(restamper.sha, len(restamp_keys), *restamp_keys, *map(str, restamp_args))
        pipe.evalsha(script.sha, len(keys), *keys, *map(str, args))
        restamped, reply = pipe.execute(raise_on_error=False)
        for answer in (restamped, reply):
            if isinstance(answer, Exception) and not isinstance(answer, redis.exceptions.NoScriptError):
                raise answer
        if isinstance(restamped, redis.exceptions.NoScriptError):
            restamper(keys=restamp_keys, args=restamp_args)
        if isinstance(reply, redis.exceptions.NoScriptError):
            reply = script(keys=keys, args=args)
        return reply

    def _seed(self, client: redis.Redis, buckets: list[Bucket]) -> None:
        """Refill buckets from the sends recorded in the database, then mark them seeded.

        Safe to run from several workers at once: members are `db:<message pk>`, so a
        second seeding adds nothing. Sends acquired but not yet recorded (in flight while
        the data was lost) are not known; that overshoot is bounded by the sends in flight.
        """
        pipe = client.pipeline(transaction=False)
        for bucket in buckets:
            entries = dict(_recorded_sends(bucket))
            if entries:
                pipe.zadd(_log_key(bucket), entries)
                pipe.pexpire(_log_key(bucket), bucket.window * 1000)
            # after the entries: a worker seeing the marker must also see the log
            pipe.set(_marker_key(bucket), 1)
            logger.info("rate-limit bucket %s refilled with %d recorded sends", bucket.key, len(entries))
        pipe.execute()


def _recorded_sends(bucket: Bucket) -> list[tuple[str, float]]:
    """The bucket's newest sends recorded within its window, as (member, unix time)."""
    if bucket.account_pk is not None:
        messages = Message.objects.filter(account_id=bucket.account_pk)
    elif bucket.tenant_id is not None:
        messages = Message.objects.filter(tenant_id=bucket.tenant_id)
    else:
        return []
    # The window is cut on the application clock here and again on Redis's by the script.
    since = timezone.now() - timedelta(seconds=bucket.window)
    # Only the newest `limit` entries ever decide (is the limit-th newest still in the
    # window?) or date a retry, so older ones would only cost memory.
    rows = (messages.filter(sent_at__gte=since).order_by("-sent_at")
            .values_list("pk", "sent_at")[: bucket.limit])
    return [(f"db:{pk}", sent_at.timestamp()) for pk, sent_at in rows if sent_at is not None]


class SqlLimiter:
    """The embedded instance's limiter: the same sliding log in `RateLimitHit` rows.

    Its clock is the application's (`timezone.now()`), read after the bucket rows are
    locked so that hits are logged in the order they were granted. The database keeps its
    data, so nothing is ever refilled; `member` is not stored.
    """

    def acquire(self, buckets: list[Bucket], *, member: str, restamp: Decision | None = None) -> Decision:
        """Take one token from every bucket or from none, in one transaction.

        Refused: `retry_at` is when every bucket has a token again, on the application clock.
        """
        if not buckets:
            return ALLOWED
        if restamp is not None:
            self.restamp(buckets, restamp)
        # One lock order for every caller (keys sorted) so two acquisitions never deadlock.
        ordered = sorted(buckets, key=lambda b: b.key)
        with transaction.atomic():
            for bucket in ordered:
                RateLimitBucket.objects.get_or_create(key=bucket.key)
            # No-op on SQLite, where BEGIN IMMEDIATE already serializes writers.
            list(RateLimitBucket.objects.select_for_update()
                 .filter(key__in=[b.key for b in ordered]).order_by("key"))
            now = timezone.now()
            retry_at: float | None = None
            for bucket in ordered:
                window_start = now - timedelta(seconds=bucket.window)
                hits = RateLimitHit.objects.filter(bucket_id=bucket.key)
                hits.filter(at__lte=window_start).delete()
                count = hits.count()
                if count >= bucket.limit:
                    # Same rule as the Lua script: the (count - limit + 1)-th oldest hit.
                    oldest = hits.order_by("at").values_list("at", flat=True)[count - bucket.limit]
                    at = oldest.timestamp() + bucket.window
                    retry_at = at if retry_at is None else max(retry_at, at)
            if retry_at is not None:
                return Decision(allowed=False, retry_at=retry_at)
            granted = RateLimitHit.objects.bulk_create([RateLimitHit(bucket_id=b.key, at=now) for b in ordered])
        return Decision(allowed=True, retry_at=None, token=tuple(hit.pk for hit in granted if hit.pk is not None))

    def restamp(self, buckets: list[Bucket], decision: Decision) -> None:
        """Date a granted token at now, when its message reached the server (as RedisLimiter.restamp)."""
        if buckets and isinstance(decision.token, tuple) and decision.token:
            RateLimitHit.objects.filter(pk__in=decision.token).update(at=timezone.now())


_redis_limiters: dict[str, RedisLimiter] = {}


def get_limiter() -> RedisLimiter | SqlLimiter:
    """The configured limiter (`GMP_RATE_LIMITER`: "redis", or "sql" for the embedded instance)."""
    default = "sql" if getattr(settings, "EMBEDDED", False) else "redis"
    backend = getattr(settings, "GMP_RATE_LIMITER", default)
    if backend == "sql":
        return SqlLimiter()
    if backend == "redis":
        url = getattr(settings, "REDIS_URL", DEFAULT_REDIS_URL)
        # One limiter (so one connection pool) per URL and process.
        if url not in _redis_limiters:
            _redis_limiters[url] = RedisLimiter(url=url)
        return _redis_limiters[url]
    raise ImproperlyConfigured(f"GMP_RATE_LIMITER must be 'redis' or 'sql', not {backend!r}")
