"""Delivery metrics of the whole fleet (SPEC §15): recorded by any process, exposed by every web process.

Workers on any host record into one shared store, and each web process reads that store
when Prometheus scrapes `/metrics`: a send made by any worker shows on every web process.
(A per-process prometheus_client registry would only ever show the scraped process's own work.)

The store is chosen like the rate limiter (`GMP_RATE_LIMITER`): Redis for a fleet (one hash,
`gmp:metrics`, written with HINCRBY/HINCRBYFLOAT in one pipeline), SQL for the embedded
instance without Redis (`MetricSample` rows, one additive upsert each).

Recording
- `inc()` and `observe()` count once the current database transaction commits (at once in
  autocommit), so an outcome that was rolled back is never counted.
- Inside `with batch():` (a send batch, a report run) the committed samples are summed in
  memory and written when the batch ends — normally or through an exception — and at most
  FLUSH_SECONDS apart while it runs: one pipeline (or one upsert per series) instead of one
  per message. Only a process killed in the middle of a batch loses what it had not written
  yet, at most FLUSH_SECONDS of counts. Outside a batch every sample is written at once.
- A store that cannot be reached never delays or fails a send: the failure is logged once,
  the samples are dropped, and no write is tried again for STORE_RETRY_SECONDS.

The counters are the fleet's since the store began (emptying Redis resets them, which
Prometheus's rate() takes as a counter reset). Histograms are stored per bucket, not
cumulated: an observation adds 1 to one bucket and its value to the sum; the collector adds
the buckets up at scrape time. The pending gauges are read from the database, the truth.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from mailproxy.models import Heartbeat, MetricSample
from queueing.models import SENDABLE_STATUSES, Message, Priority, Status
from tenants.models import SmtpAccount

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_KEY = "gmp:metrics"
HEARTBEAT_KEY = "gmp:heartbeat:{name}"
REDIS_TIMEOUT = 1.0  # seconds, to connect and per command
FLUSH_SECONDS = 1.0
STORE_RETRY_SECONDS = 10.0

CounterName = Literal["sent", "errors", "deferred", "rate_limited", "bounces", "report_failures"]
HistogramName = Literal["queue_seconds", "smtp_seconds", "report_lag_seconds"]
# One stored series: (stored name, canonical JSON of its labels).
SampleKey = tuple[str, str]


@dataclass(frozen=True)
class Definition:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms: upper bounds, +Inf implied


PER_ACCOUNT = ("tenant_id", "account_id")

COUNTERS: dict[str, Definition] = {
    "sent": Definition("gmp_sent_total", "Messages the SMTP server accepted for every recipient.", PER_ACCOUNT),
    "errors": Definition(
        "gmp_errors_total",
        "Messages failed for good by the sender (permanent refusal, retries exhausted, rate limit with reject).",
        PER_ACCOUNT),
    "deferred": Definition("gmp_deferred_total",
                           "Send attempts that failed temporarily; the message waits for its retry.", PER_ACCOUNT),
    "rate_limited": Definition("gmp_rate_limited_total", "Sends the rate limiter refused a token.", PER_ACCOUNT),
    "bounces": Definition("gmp_bounces_total", "Bounced recipients read from the bounce mailboxes, by type.",
                          (*PER_ACCOUNT, "type")),
    "report_failures": Definition("gmp_report_failures_total", "Delivery report calls the tenant did not answer.",
                                  ("tenant_id",)),
}
HISTOGRAMS: dict[str, Definition] = {
    "queue_seconds": Definition("gmp_queue_seconds", "Seconds from enqueue to sent, per message.",
                                buckets=(1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)),
    "smtp_seconds": Definition("gmp_smtp_seconds", "Seconds of one SMTP transaction (MAIL to the answer after DATA).",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
    "report_lag_seconds": Definition("gmp_report_lag_seconds",
                                     "Seconds from an event to its acknowledgement by the tenant.",
                                     buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)),
}
# Not final and not held on purpose: what the fleet still has to send.
PENDING_STATUSES = (*SENDABLE_STATUSES, Status.SENDING)


# --- Recording --------------------------------------------------------------------------


def _labels_json(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _checked(definition: Definition, labels: dict[str, str]) -> dict[str, str]:
    if set(labels) != set(definition.labels):
        raise ValueError(f"{definition.name} takes the labels {list(definition.labels)}, not {sorted(labels)}")
    return {name: str(value) for name, value in labels.items()}


def inc(name: CounterName, amount: int = 1, **labels: str) -> None:
    """Add to a counter once the current transaction commits (at once outside a transaction)."""
    definition = COUNTERS[name]
    if amount > 0:
        _after_commit({(definition.name, _labels_json(_checked(definition, labels))): amount})


def observe(name: HistogramName, value: float, **labels: str) -> None:
    """Count one observation of a histogram once the current transaction commits."""
    definition = HISTOGRAMS[name]
    base = _checked(definition, labels)
    value = max(0.0, value)  # a clock a little behind another host's is not a negative lag
    bound = next((b for b in definition.buckets if value <= b), math.inf)
    _after_commit({
        (f"{definition.name}:bucket", _labels_json({**base, "le": floatToGoString(bound)})): 1,
        (f"{definition.name}:sum", _labels_json(base)): value,
    })


class _Pending(threading.local):
    def __init__(self) -> None:
        self.samples: dict[SampleKey, float] = {}
        self.depth = 0
        self.flushed_at = 0.0


_pending = _Pending()


def _after_commit(increments: dict[SampleKey, float]) -> None:
    if connection.in_atomic_block:
        transaction.on_commit(partial(_add, increments))
    else:
        _add(increments)


def _add(increments: dict[SampleKey, float]) -> None:
    samples = _pending.samples
    for key, amount in increments.items():
        samples[key] = samples.get(key, 0) + amount
    if _pending.depth == 0 or time.monotonic() - _pending.flushed_at >= FLUSH_SECONDS:
        flush()


def flush() -> None:
    """Write what this thread has recorded; never raises for an unreachable store."""
    samples, _pending.samples = _pending.samples, {}
    _pending.flushed_at = time.monotonic()
    if samples:
        get_store().add(samples)


@contextmanager
def batch() -> Iterator[None]:
    """Sum the samples of a unit of work in memory; write them at its end (and every FLUSH_SECONDS)."""
    if _pending.depth == 0:
        _pending.flushed_at = time.monotonic()
    _pending.depth += 1
    try:
        yield
    finally:
        _pending.depth -= 1
        if _pending.depth == 0:
            flush()


# --- Stores -----------------------------------------------------------------------------

# Up to the last "@" of the word: a password may hold "/" or ":"; too much hidden is harmless.
_CREDENTIALS = re.compile(r"://\S*@")


def short_reason(exc: BaseException) -> str:
    """An error for a log line or a readiness answer: one line, no credentials of a URL."""
    text = " ".join(str(exc).split())[:200]
    text = _CREDENTIALS.sub("://***@", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Availability:
    """Log a store's failure once, and keep off it for a while instead of waiting on it each time."""

    label = "metrics store"

    def __init__(self) -> None:
        self._retry_at = 0.0
        self._failing = False

    def _paused(self) -> bool:
        return time.monotonic() < self._retry_at

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + STORE_RETRY_SECONDS
        if not self._failing:
            self._failing = True
            logger.warning("%s unreachable, samples dropped until it answers error=%s", self.label,
                           short_reason(exc))

    def _worked(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("%s reachable again", self.label)


_REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


class RedisStore(_Availability):
    """The fleet's store: one Redis hash, field `<name>|<labels JSON>`."""

    label = "metrics store (redis)"

    def __init__(self, *, url: str) -> None:
        super().__init__()
        self.url = url
        self._pid: int | None = None
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        # A client inherited through fork shares its sockets with the parent: replace it.
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(self.url, socket_timeout=REDIS_TIMEOUT,
                                                socket_connect_timeout=REDIS_TIMEOUT, decode_responses=True)
            self._pid = os.getpid()
        return self._client

    def add(self, increments: dict[SampleKey, float]) -> None:
        if self._paused():
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for (name, labels), amount in increments.items():
                if name.endswith(":sum"):
                    pipe.hincrbyfloat(REDIS_KEY, f"{name}|{labels}", amount)
                else:
                    pipe.hincrby(REDIS_KEY, f"{name}|{labels}", int(amount))
            pipe.execute()
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return
        self._worked()

    def read(self) -> dict[SampleKey, float]:
        stored: dict[str, str] = self._redis().hgetall(REDIS_KEY)  # type: ignore[assignment]
        samples: dict[SampleKey, float] = {}
        for field, value in stored.items():
            name, _, labels = field.partition("|")
            samples[(name, labels)] = float(value)
        return samples

    def beat(self, name: str) -> None:
        self._redis().set(HEARTBEAT_KEY.format(name=name), repr(time.time()))

    def last_beat(self, name: str) -> float | None:
        value = self._redis().get(HEARTBEAT_KEY.format(name=name))
        return float(value) if value else None  # type: ignore[arg-type]


class SqlStore(_Availability):
    """The embedded instance's store: `MetricSample` rows, added to by an atomic upsert."""

    label = "metrics store (sql)"

    def add(self, increments: dict[SampleKey, float]) -> None:
        if self._paused():
            return
        quote = connection.ops.quote_name
        table = quote(MetricSample._meta.db_table)
        # Identifiers are the model's own; the values go as parameters.
        sql = (f"INSERT INTO {table} ({quote('name')}, {quote('labels')}, {quote('value')}) "  # noqa: S608
               f"VALUES (%s, %s, %s) ON CONFLICT ({quote('name')}, {quote('labels')}) "
               f"DO UPDATE SET {quote('value')} = {table}.{quote('value')} + excluded.{quote('value')}")
        # One order for every writer: two flushes never wait on each other's rows crosswise.
        rows = sorted((name, labels, float(amount)) for (name, labels), amount in increments.items())
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)
        except DatabaseError as exc:
            self._failed(exc)
            return
        self._worked()

    def read(self) -> dict[SampleKey, float]:
        return {(name, labels): value for name, labels, value in
                MetricSample.objects.values_list("name", "labels", "value")}

    def beat(self, name: str) -> None:
        now = timezone.now()
        if not Heartbeat.objects.filter(name=name).update(at=now):
            with suppress(IntegrityError), transaction.atomic():
                Heartbeat.objects.create(name=name, at=now)  # another writer may have created it meanwhile

    def last_beat(self, name: str) -> float | None:
        at = Heartbeat.objects.filter(name=name).values_list("at", flat=True).first()
        return at.timestamp() if at else None


_redis_stores: dict[str, RedisStore] = {}
_sql_store = SqlStore()
STORE_ERRORS = (*_REDIS_ERRORS, DatabaseError)


def get_store() -> RedisStore | SqlStore:
    """The configured store: where the rate limiter keeps its buckets (`GMP_RATE_LIMITER`)."""
    default = "sql" if getattr(settings, "EMBEDDED", False) else "redis"
    backend = getattr(settings, "GMP_RATE_LIMITER", default)
    if backend == "sql":
        return _sql_store
    if backend == "redis":
        url = str(getattr(settings, "REDIS_URL", DEFAULT_REDIS_URL))
        if url not in _redis_stores:  # one client (so one connection pool) per URL and process
            _redis_stores[url] = RedisStore(url=url)
        return _redis_stores[url]
    raise ImproperlyConfigured(f"GMP_RATE_LIMITER must be 'redis' or 'sql', not {backend!r}")


# --- Exposition -------------------------------------------------------------------------


def _parsed(stored: dict[SampleKey, float]) -> dict[str, list[tuple[dict[str, str], float]]]:
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for (name, labels), value in stored.items():
        try:
            parsed = json.loads(labels)
        except ValueError:
            continue
        by_name.setdefault(name, []).append((parsed, value))
    return by_name


def _histogram(definition: Definition, buckets: list[tuple[dict[str, str], float]],
               sums: list[tuple[dict[str, str], float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(definition.name, definition.help, labels=list(definition.labels))
    bounds = [*definition.buckets, math.inf]
    counts: dict[tuple[str, ...], list[float]] = {}
    for labels, value in buckets:
        series = tuple(labels.get(name, "") for name in definition.labels)
        try:
            stored_bound = float(labels.get("le", "+Inf"))
        except ValueError:
            continue
        # A bound stored by an older release with other buckets lands in the next one up.
        index = next(i for i, bound in enumerate(bounds) if stored_bound <= bound)
        counts.setdefault(series, [0.0] * len(bounds))[index] += value
    totals = {tuple(labels.get(name, "") for name in definition.labels): value for labels, value in sums}
    for series, per_bucket in sorted(counts.items()):
        cumulative, running = [], 0.0
        for bound, count in zip(bounds, per_bucket, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))
        family.add_metric(list(series), cumulative, totals.get(series, 0.0))
    return family


class StoreCollector:
    """The fleet's counters and histograms, read from the shared store at scrape time."""

    def collect(self) -> Iterator[Metric]:
        try:
            by_name = _parsed(get_store().read())
        except STORE_ERRORS as exc:
            # The families stay out of this scrape; Prometheus sees a gap, not a reset.
            logger.warning("metrics store unreadable at scrape error=%s", short_reason(exc))
            return
        for definition in COUNTERS.values():
            family = CounterMetricFamily(definition.name, definition.help, labels=list(definition.labels))
            for labels, value in sorted(by_name.get(definition.name, []), key=lambda item: sorted(item[0].items())):
                family.add_metric([labels.get(name, "") for name in definition.labels], value)
            yield family
        for definition in HISTOGRAMS.values():
            yield _histogram(definition, by_name.get(f"{definition.name}:bucket", []),
                             by_name.get(f"{definition.name}:sum", []))


class DatabaseCollector:
    """Gauges of what waits to be sent, from the database at scrape time."""

    def collect(self) -> Iterator[Metric]:
        # Grouped by account: the queued/deferred part is an index-only scan of the partial
        # index `message_due_by_account` (account, priority, id); `sending` rows are few.
        groups = list(Message.objects.filter(status__in=SENDABLE_STATUSES).order_by()
                      .values("account_id", "priority").annotate(n=Count("id"), first=Min("id")))
        groups += list(Message.objects.filter(status=Status.SENDING).order_by()
                       .values("account_id", "priority").annotate(n=Count("id"), first=Min("id")))
        tenant_of = dict(SmtpAccount.objects.filter(pk__in={g["account_id"] for g in groups})
                         .values_list("pk", "tenant_id"))
        totals: dict[tuple[str, str], int] = {}
        for group in groups:
            series = (tenant_of.get(group["account_id"], ""), Priority(group["priority"]).label)
            totals[series] = totals.get(series, 0) + group["n"]
        pending = GaugeMetricFamily("gmp_pending_messages", "Messages waiting to be sent (queued, deferred, sending).",
                                    labels=["tenant_id", "priority"])
        for (tenant_id, priority), count in sorted(totals.items()):
            pending.add_metric([tenant_id, priority], count)
        yield pending
        # Ids grow with time: the lowest pending id is the oldest pending message.
        oldest_id = min((group["first"] for group in groups), default=None)
        created: datetime | None = None
        if oldest_id is not None:
            created = Message.objects.filter(pk=oldest_id).values_list("created_at", flat=True).first()
        age = max(0.0, (timezone.now() - created).total_seconds()) if created else 0.0
        yield GaugeMetricFamily("gmp_oldest_pending_seconds", "Age of the oldest message waiting to be sent.",
                                value=age)


class _ProcessMetrics:
    """This process's own registry: django-prometheus's HTTP and database metrics."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition() -> bytes:
    """The Prometheus text of `/metrics`: this process's metrics, the fleet's, the database gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several web workers (gunicorn --workers N): their own metrics, summed from the folder.
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessMetrics())
    registry.register(StoreCollector())
    registry.register(DatabaseCollector())
    return generate_latest(registry)
