"""Writes on messages: enqueue, delete, cleanup, suspend/activate, account removal."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import getaddresses
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Case, Exists, Field, OuterRef, Q, Value, When
from django.utils import timezone

from queueing import dispatch
from queueing.models import (
    FINAL_STATUSES,
    WAITING_STATUSES,
    EventType,
    Message,
    MessageEvent,
    Priority,
    Status,
    Suppression,
)
from queueing.validation import CONTROL, Invalid, MessageIn, client_id_of, eml_headers, parse_message
from tenants.auth import DEFAULT_TENANT_ID
from tenants.exceptions import ConflictError
from tenants.models import SmtpAccount, SuspendedBatch, Tenant
from tenants.serializers import ID_PATTERN

logger = logging.getLogger(__name__)

# A new submission may replace a message in one of these states (a cancelled one is
# brought back to life); any other state answers "already ...".
REPLACEABLE_STATUSES = (*WAITING_STATUSES, Status.CANCELLED)
UPSERT_CHUNK = 400  # rows per INSERT: stays below SQLite's 32,766 bound parameters
# A batch's look-ups go as one statement up to this many parameters (SQLite's historical
# bound), one statement each beyond: a batch that large gains nothing from the saved trips.
_UNION_MAX_PARAMS = 999
_TENANT_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class Rejection:
    index: int
    external_id: str | None
    field: str
    reason: str
    # The tenant the message would have belonged to, when known (for its error event).
    tenant: Tenant | None = None
    # False when the id names a stored message whose own state must stand.
    reportable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.external_id, "index": self.index, "field": f"messages[{self.index}].{self.field}",
                "reason": self.reason}


@dataclass(frozen=True)
class EnqueueResult:
    queued: int
    rejected: list[Rejection]
    # (account pk, priority) of what was queued, for the dispatcher's doorbell.
    queued_accounts: set[tuple[int, int]] = field(default_factory=set)
    # Tenants whose last sync answer announced these messages (`queued > 0`): call them again.
    tenants_expecting_sync: set[str] = field(default_factory=set)
    # Recipients left out of queued messages because they are on the suppression list.
    suppressed: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Accepted:
    index: int
    payload: MessageIn
    tenant: Tenant
    account: SmtpAccount
    priority: int
    held: bool


class _Context:
    """What a batch needs to know about its tenants, loaded once for the whole batch."""

    def __init__(self, *, scope: Tenant | None, payloads: Sequence[Any]) -> None:
        self.scope = scope
        self.tenants: dict[str, Tenant] = {}
        self.accounts: dict[tuple[str, str], SmtpAccount] = {}
        self.defaults: dict[str, SmtpAccount] = {}
        self.suppressed: dict[tuple[str, str], str] = {}
        self.suspended_batches: set[tuple[str, str]] = set()
        wanted: list[str] = []  # the tenants to read (the admin's messages name theirs)
        needs_default = False
        if scope is not None:
            self.tenants[scope.id] = scope
        else:
            named = [raw.get("tenant_id") if isinstance(raw, dict) else None for raw in payloads]
            # A name no tenant can have (NUL, a lone surrogate…) is not looked up: not found.
            wanted = list(dict.fromkeys(name for name in named if isinstance(name, str) and _TENANT_ID.fullmatch(name)))
            needs_default = any(name in (None, "") for name in named)
            if needs_default and DEFAULT_TENANT_ID not in wanted:
                wanted.append(DEFAULT_TENANT_ID)
        # Most submissions carry no batch code: then no batch can be suspended for them.
        has_batches = any(isinstance(raw, dict) and raw.get("batch_code") for raw in payloads)
        recipients = list({address for raw in payloads for address in _raw_recipients(raw)})
        self._load(wanted or list(self.tenants), wanted, recipients, has_batches)
        if needs_default and DEFAULT_TENANT_ID not in self.tenants:
            default, created = Tenant.objects.get_or_create(pk=DEFAULT_TENANT_ID, defaults={"name": "Default"})
            if not created:  # created since the read above, by someone who may have given it accounts
                self._load(wanted, wanted, recipients, has_batches)
            self.tenants[DEFAULT_TENANT_ID] = default

    def _load(self, tenant_ids: list[str], wanted: list[str], recipients: list[str], has_batches: bool) -> None:
        """Read the tenants named in `wanted`, and the accounts, suppressions and suspended
        batches of `tenant_ids`: one statement of plain SQL, where three ORM queries cost a
        request ~2 ms of query building and round trips.

        A tenant that does not exist has none of the others, so `tenant_ids` may name it.
        """
        if not tenant_ids:
            return
        db = connections[DEFAULT_DB_ALIAS]
        ids = _placeholders(tenant_ids)
        # Columns: kind, tenant, name, text, pk, flag, flag. The NULLs are cast for PostgreSQL,
        # which matches the types of the branches pairwise.
        no_text, no_pk, no_flag = "CAST(NULL AS TEXT)", "CAST(NULL AS BIGINT)", "CAST(NULL AS BOOLEAN)"
        parts: list[tuple[str, list[Any]]] = [(
            f"SELECT 'a', tenant_id, external_id, {no_text}, id, is_default, {no_flag} "  # noqa: S608
            f"FROM {SmtpAccount._meta.db_table} WHERE tenant_id IN ({ids})", tenant_ids,
        )]
        if wanted:
            parts.append((f"SELECT 't', id, name, {no_text}, {no_pk}, suspended, sync_expect_more "  # noqa: S608
                          f"FROM {Tenant._meta.db_table} WHERE id IN ({_placeholders(wanted)})", wanted))
        if recipients:
            parts.append((
                f"SELECT 's', tenant_id, address, reason, {no_pk}, {no_flag}, {no_flag} "  # noqa: S608
                f"FROM {Suppression._meta.db_table} WHERE tenant_id IN ({ids}) "
                f"AND address IN ({_placeholders(recipients)}) AND (expires_at IS NULL OR expires_at > %s)",
                [*tenant_ids, *recipients, db.ops.adapt_datetimefield_value(timezone.now())],
            ))
        if has_batches:
            parts.append((f"SELECT 'b', tenant_id, batch_code, {no_text}, {no_pk}, {no_flag}, {no_flag} "  # noqa: S608
                          f"FROM {SuspendedBatch._meta.db_table} WHERE tenant_id IN ({ids})", tenant_ids))
        if sum(len(values) for _, values in parts) <= _UNION_MAX_PARAMS:
            parts = [(" UNION ALL ".join(sql for sql, _ in parts), [v for _, values in parts for v in values])]
        rows: list[tuple[Any, ...]] = []
        with db.cursor() as cursor:
            for sql, values in parts:  # table names of the models; every value is a parameter
                cursor.execute(sql, values)
                rows.extend(cursor.fetchall())
        self.accounts.clear()
        self.defaults.clear()
        self.suppressed.clear()
        self.suspended_batches.clear()
        counts: dict[str, int] = {}
        account_fields = ["id", "tenant_id", "external_id", "is_default"]
        tenant_fields = ["id", "name", "suspended", "sync_expect_more"]
        for kind, tenant_id, name, text, pk, flag, other_flag in rows:
            if kind == "a":
                account = SmtpAccount.from_db(db.alias, account_fields, (pk, tenant_id, name, bool(flag)))
                self.accounts[(tenant_id, name)] = account
                counts[tenant_id] = counts.get(tenant_id, 0) + 1
                if account.is_default:
                    self.defaults[tenant_id] = account
            elif kind == "t":
                self.tenants[tenant_id] = Tenant.from_db(db.alias, tenant_fields,
                                                         (tenant_id, name, bool(flag), bool(other_flag)))
            elif kind == "s":
                self.suppressed[(tenant_id, name)] = text
            else:
                self.suspended_batches.add((tenant_id, name))
        # A tenant with a single account uses it without naming it.
        for (tenant_id, _), account in self.accounts.items():
            if counts[tenant_id] == 1:
                self.defaults.setdefault(tenant_id, account)

    def tenant_of(self, raw: Any) -> Tenant | None:
        """The tenant a raw message names (or defaults to); None when that tenant does not exist."""
        named = raw.get("tenant_id") if isinstance(raw, dict) else None
        if self.scope is not None:
            return self.scope if named in (None, "", self.scope.id) else None
        if named in (None, ""):
            return self.tenants.get(DEFAULT_TENANT_ID)
        return self.tenants.get(named) if isinstance(named, str) else None

    def account_for(self, tenant: Tenant, payload: MessageIn) -> SmtpAccount:
        if payload.account_id:
            account = self.accounts.get((tenant.id, payload.account_id))
            if account is None:
                raise Invalid("account_id", f"account {payload.account_id!r} not found")
            return account
        account = self.defaults.get(tenant.id)
        if account is None:
            raise Invalid("account_id", "is required: the tenant has no default SMTP account")
        return account

    def is_held(self, tenant: Tenant, payload: MessageIn) -> bool:
        return tenant.suspended or (tenant.id, payload.batch_code) in self.suspended_batches


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _raw_recipients(raw: Any) -> list[str]:
    """Lower-cased addr-specs a raw message names (to look them up before validation)."""
    if not isinstance(raw, dict):
        return []
    found: list[str] = []
    given = eml_headers(raw["eml"]) if isinstance(raw.get("eml"), str) else {}
    for name in ("to", "cc", "bcc"):
        value = raw.get(name) or given.get(name)
        items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        found.extend(address.lower() for _, address in getaddresses([i for i in items if isinstance(i, str)])
                     if address and not CONTROL.search(address))  # the database may refuse those (NUL)
    return found


def _without_suppressed(payload: MessageIn, tenant: Tenant, context: _Context,
                        suppressed: list[dict[str, str]]) -> MessageIn:
    """The message minus suppressed recipients; Invalid when nobody is left."""
    if not context.suppressed:
        return payload
    kept: dict[str, list[str]] = {}
    reasons = []
    for name in ("to", "cc", "bcc"):
        kept[name] = []
        for address in getattr(payload, name):
            spec = (getaddresses([address])[0][1] or address).lower()
            reason = context.suppressed.get((tenant.id, spec))
            if reason is None:
                kept[name].append(address)
            else:
                reasons.append(reason)
                suppressed.append({"id": payload.external_id, "recipient": spec, "reason": reason})
    if not reasons:
        return payload
    if not any(kept.values()):
        del suppressed[len(suppressed) - len(reasons):]  # the whole message is refused instead
        raise Invalid("to", f"suppressed: {reasons[0]}")
    return replace(payload, to=kept["to"], cc=kept["cc"], bcc=kept["bcc"])


def _new_message_id(payload: MessageIn) -> str:
    domain = settings.GMP_MESSAGE_ID_DOMAIN or payload.from_addr.rpartition("@")[2].rstrip(">") or "mail-proxy"
    return f"<{uuid.uuid4().hex}@{domain}>"


def enqueue_messages(
    *, scope: Tenant | None, payloads: Sequence[Any], default_priority: int | None = None
) -> EnqueueResult:
    """Store the valid messages of a batch and report the invalid ones; one transaction.

    `scope` is the caller's tenant (None for the admin, whose messages name their tenant
    or go to `default`). A message with the id of a waiting one replaces it in place
    (same position in the FIFO order); one with the id of a sent or failed message is
    rejected. The answer is given only after the commit: what is counted is durable.
    """
    now = timezone.now()
    context = _Context(scope=scope, payloads=payloads)
    base_priority = Priority.MEDIUM if default_priority is None else default_priority
    rejected: list[Rejection] = []
    suppressed: list[dict[str, str]] = []
    accepted: dict[tuple[str, str], _Accepted] = {}
    for index, raw in enumerate(payloads):
        tenant = context.tenant_of(raw)
        try:
            payload = parse_message(raw, now=now)
            if tenant is None:
                raise Invalid("tenant_id", f"tenant {payload.tenant_id!r} not found")
            account = context.account_for(tenant, payload)
            payload = _without_suppressed(payload, tenant, context, suppressed)
        except Invalid as exc:
            rejected.append(Rejection(index, client_id_of(raw), exc.field, exc.reason, tenant))
            continue
        key = (tenant.id, payload.external_id)
        earlier = accepted.get(key)
        if earlier is not None:
            # The same id twice in one request: the later one wins, as it would across requests.
            rejected.append(Rejection(earlier.index, payload.external_id, "id",
                                      f"id: replaced by messages[{index}] of the same request", tenant, False))
        accepted[key] = _Accepted(
            index=index, payload=payload, tenant=tenant, account=account,
            priority=base_priority if payload.priority is None else payload.priority,
            held=context.is_held(tenant, payload),
        )

    db = connections[DEFAULT_DB_ALIAS]
    # On PostgreSQL the upsert is one statement, atomic by itself: when it is all there is to
    # write (no rejection to record), autocommit saves the BEGIN and COMMIT round trips.
    alone = db.vendor == "postgresql" and db.get_autocommit() and not any(r.reportable for r in rejected)
    with contextlib.nullcontext() if alone else transaction.atomic():
        stored = _upsert(list(accepted.values()), now=now)
        rejected.extend(_explain_not_stored([item for key, item in accepted.items() if key not in stored]))
        _record_rejections(rejected, now=now)

    rejected.sort(key=lambda item: item.index)
    queued_accounts = {(item.account.pk, item.priority) for key, item in accepted.items()
                       if key in stored and not item.held}
    logger.info("enqueued queued=%d rejected=%d", len(stored), len(rejected))
    expecting = {item.tenant.id for key, item in accepted.items() if key in stored and item.tenant.sync_expect_more}
    return EnqueueResult(queued=len(stored), rejected=rejected, queued_accounts=queued_accounts,
                         tenants_expecting_sync=expecting, suppressed=suppressed)


# Columns written on insert, and on replacement of a waiting message. Position in the
# queue (id, created_at) is deliberately absent from the replacement.
_CONTENT_COLUMNS = (
    "account_id", "status", "priority", "batch_code", "from_addr", "to", "cc", "bcc", "reply_to", "return_path",
    "subject", "body", "content_type", "body_text", "body_html", "headers", "attachments", "raw_eml",
    "message_id", "updated_at", "deferred_until", "expires_at", "next_attempt_at", "attempts", "sent_at", "error_at",
    "last_error", "smtp_code", "lease_until", "lease_token", "pending_recipients", "refused", "possible_duplicate",
    "deferred_reason",
)
_INSERT_COLUMNS = ("tenant_id", "external_id", "created_at", *_CONTENT_COLUMNS)


def _row(item: _Accepted, now: datetime) -> dict[str, Any]:
    payload = item.payload
    return {
        "tenant_id": item.tenant.id, "external_id": payload.external_id, "created_at": now,
        "account_id": item.account.pk, "status": Status.HELD if item.held else Status.QUEUED,
        "priority": item.priority, "batch_code": payload.batch_code, "from_addr": payload.from_addr,
        "to": payload.to, "cc": payload.cc, "bcc": payload.bcc, "reply_to": payload.reply_to,
        "return_path": payload.return_path, "subject": payload.subject, "body": payload.body,
        "content_type": payload.content_type, "body_text": payload.body_text, "body_html": payload.body_html,
        "headers": payload.headers, "attachments": payload.attachments, "raw_eml": payload.raw_eml,
        "message_id": payload.message_id or _new_message_id(payload), "updated_at": now,
        "deferred_until": payload.deferred_until, "expires_at": payload.expires_at,
        "next_attempt_at": payload.deferred_until or now, "attempts": 0, "sent_at": None, "error_at": None,
        "last_error": "", "smtp_code": None, "lease_until": None, "lease_token": None, "pending_recipients": None,
        "refused": [], "possible_duplicate": False, "deferred_reason": "",
    }


@dataclass(frozen=True)
class _UpsertSql:
    """The parts of the upsert statement for one database vendor (they depend on nothing else)."""

    insert: str  # INSERT INTO … (columns)
    conflict: str  # ON CONFLICT … RETURNING …
    # PostgreSQL: SELECT … FROM the rows of a JSON parameter.
    from_json: str
    # The fields whose values Django converts for the database (JSON and time values), else None.
    converted: tuple[Field[Any, Any] | None, ...]


_UPSERT_SQL: dict[str, _UpsertSql] = {}


def _upsert_sql(db: BaseDatabaseWrapper) -> _UpsertSql:
    built = _UPSERT_SQL.get(db.vendor)
    if built is not None:
        return built
    opts = Message._meta
    fields: list[Field[Any, Any]] = [
        opts.get_field(name.removesuffix("_id") if name in ("tenant_id", "account_id") else name)  # type: ignore[misc]
        for name in _INSERT_COLUMNS
    ]
    quote = db.ops.quote_name
    table = quote(opts.db_table)
    columns = ", ".join(quote(f.column) for f in fields)
    by_name = dict(zip(_INSERT_COLUMNS, fields, strict=True))
    updates = ", ".join(f"{quote(by_name[name].column)} = excluded.{quote(by_name[name].column)}"
                        for name in _CONTENT_COLUMNS)
    # Each JSON value goes through its column type's input function. An explicit cast to
    # varchar(n) shortens an over-long text, as the cast of the arrays this replaces did, where
    # reading it as varchar(n) would fail.
    declared = [(quote(f.column), f.db_type(db) or "text") for f in fields]
    selected = ", ".join(f"CAST(r.{name} AS {kind})" if kind.startswith("varchar(") else f"r.{name}"
                         for name, kind in declared)
    definitions = ", ".join(f"{name} {'text' if kind.startswith('varchar(') else kind}" for name, kind in declared)
    built = _UpsertSql(
        insert=f"INSERT INTO {table} ({columns})",
        from_json=f"SELECT {selected} FROM json_to_recordset(%s) AS r({definitions})",  # noqa: S608
        conflict=(
            f"ON CONFLICT ({quote('tenant_id')}, {quote('external_id')}) DO UPDATE SET {updates} "
            f"WHERE {table}.{quote('status')} IN ({_placeholders(REPLACEABLE_STATUSES)}) "
            f"RETURNING {quote('tenant_id')}, {quote('external_id')}"
        ),
        converted=tuple(f if f.get_internal_type() in ("JSONField", "DateTimeField") else None for f in fields),
    )
    _UPSERT_SQL[db.vendor] = built
    return built


def _json_value(value: Any) -> str:
    """What json.dumps cannot write itself: the time values of a row, in ISO 8601 with their offset."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")


def _upsert(items: list[_Accepted], *, now: datetime) -> set[tuple[str, str]]:
    """INSERT … ON CONFLICT DO UPDATE … WHERE status is replaceable; the keys stored.

    Written in SQL because Django's bulk_create cannot put a condition on the update:
    without it, a replacement racing a worker's claim could reset a message that is
    being sent, and it would go out twice. Both PostgreSQL and SQLite speak this form.
    """
    if not items:
        return set()
    db = connections[DEFAULT_DB_ALIAS]  # the real connection: the proxy costs a lookup per use
    sql = _upsert_sql(db)
    statuses = [str(status) for status in REPLACEABLE_STATUSES]
    stored: set[tuple[str, str]] = set()
    with db.cursor() as cursor:
        if db.vendor == "postgresql":
            # The rows as one JSON parameter: psycopg adapts a string in C, where 37 arrays of
            # values cost it ~0.1 ms a row, and the statement is one text (parsed once) whatever
            # the batch size. Half the time of the arrays' form at 1 row and at 1,000. The keys of
            # a row are the column names, which json_to_recordset matches.
            document = json.dumps([_row(item, now) for item in items], default=_json_value, ensure_ascii=False)
            cursor.execute(f"{sql.insert} {sql.from_json} {sql.conflict}", [document, *statuses])
            stored.update(cursor.fetchall())
        else:
            rows = []
            for item in items:
                row = _row(item, now)
                rows.append([row[name] if f is None else f.get_db_prep_save(row[name], db)
                             for name, f in zip(_INSERT_COLUMNS, sql.converted, strict=True)])
            placeholder = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ")"
            for start in range(0, len(rows), UPSERT_CHUNK):
                chunk = rows[start:start + UPSERT_CHUNK]
                values = ", ".join([placeholder] * len(chunk))
                cursor.execute(
                    f"{sql.insert} VALUES {values} {sql.conflict}",
                    [value for row in chunk for value in row] + statuses,
                )
                stored.update(cursor.fetchall())
    return {(tenant_id, external_id) for tenant_id, external_id in stored}


def _explain_not_stored(items: list[_Accepted]) -> list[Rejection]:
    """Why messages were not stored: their id names a message past the waiting stage."""
    if not items:
        return []
    condition = Q()
    for item in items:
        condition |= Q(tenant_id=item.tenant.id, external_id=item.payload.external_id)
    statuses = {(tenant_id, external_id): status for tenant_id, external_id, status in
                Message.objects.filter(condition).values_list("tenant_id", "external_id", "status")}
    reasons: dict[str | None, str] = {
        Status.SENT: "already sent", Status.ERROR: "already failed", Status.EXPIRED: "already failed",
        Status.SENDING: "being sent right now; it cannot be replaced",
    }
    return [
        Rejection(item.index, item.payload.external_id, "id",
                  reasons.get(statuses.get((item.tenant.id, item.payload.external_id)), "could not be stored"),
                  item.tenant, False)
        for item in items
    ]


def _record_rejections(rejected: list[Rejection], *, now: datetime) -> None:
    """An `error` event for each rejected id that names no stored message.

    The tenant's next report then carries the refusal. A rejection of an id that exists
    (a duplicate of a sent message, a bad replacement) writes nothing: that message's own
    state stands, and an error event would contradict it.
    """
    candidates = [(r.tenant, r.external_id, r.reason) for r in rejected
                  if r.reportable and r.external_id is not None and r.tenant is not None]
    if not candidates:
        return
    condition = Q()
    for tenant, external_id, _ in candidates:
        condition |= Q(tenant_id=tenant.id, external_id=external_id)
    existing = set(Message.objects.filter(condition).values_list("tenant_id", "external_id"))
    MessageEvent.objects.bulk_create([
        MessageEvent(tenant=tenant, message=None, external_id=external_id, event_type=EventType.ERROR,
                     occurred_at=now, details={"error": reason, "error_ts": now.timestamp()})
        for tenant, external_id, reason in candidates
        if (tenant.id, external_id) not in existing
    ])


@dataclass(frozen=True)
class DeleteResult:
    removed: list[str]
    not_found: list[str]
    in_flight: list[str]


def delete_messages(*, tenant: Tenant, ids: list[str]) -> DeleteResult:
    """Remove messages by client id.

    A waiting message is cancelled (kept, with a `cancelled` event for the report); a
    message in a final state is deleted with its events; one a worker is sending right
    now cannot be stopped and is listed in `in_flight`.
    """
    now = timezone.now()
    wanted = list(dict.fromkeys(ids))
    with transaction.atomic():
        rows = list(
            Message.objects.select_for_update().filter(tenant=tenant, external_id__in=wanted)
            .only("id", "external_id", "status")
        )
        found = {row.external_id: row for row in rows}
        waiting = [row for row in rows if row.status in WAITING_STATUSES]
        final = [row for row in rows if row.status in FINAL_STATUSES]
        in_flight = [row.external_id for row in rows if row.status == Status.SENDING]
        if waiting:
            Message.objects.filter(pk__in=[row.pk for row in waiting]).update(
                status=Status.CANCELLED, updated_at=now, lease_until=None
            )
            MessageEvent.objects.bulk_create([
                MessageEvent(tenant=tenant, message_id=row.pk, external_id=row.external_id,
                             event_type=EventType.CANCELLED, occurred_at=now, details={"cancelled_ts": now.timestamp()})
                for row in waiting
            ])
        if final:
            Message.objects.filter(pk__in=[row.pk for row in final]).delete()
    removed = [row.external_id for row in (*waiting, *final)]
    logger.info("messages removed tenant=%s removed=%d in_flight=%d", tenant.id, len(removed), len(in_flight))
    return DeleteResult(removed=removed, not_found=[i for i in wanted if i not in found], in_flight=in_flight)


def cleanup_messages(*, tenant: Tenant | None, older_than_seconds: int | None = None) -> int:
    """Delete final messages older than the retention whose events were all reported.

    `tenant` None cleans every tenant, each with its own retention unless one is given.
    Returns how many messages were removed.
    """
    now = timezone.now()
    tenants = [tenant] if tenant is not None else list(Tenant.objects.all())
    removed = 0
    for each in tenants:
        seconds = older_than_seconds
        if seconds is None:
            seconds = each.retention_seconds if each.retention_seconds is not None else (
                settings.GMP_REPORT_RETENTION_SECONDS)
        cutoff = now - timedelta(seconds=seconds)
        unreported = MessageEvent.objects.filter(message=OuterRef("pk"), reported_at__isnull=True)
        doomed = Message.objects.filter(tenant=each, status__in=FINAL_STATUSES, updated_at__lt=cutoff).exclude(
            Exists(unreported)
        )
        with transaction.atomic():
            removed += doomed.delete()[1].get(Message._meta.label, 0)
            # Reported refusals of messages that were never stored.
            MessageEvent.objects.filter(tenant=each, message=None, reported_at__lt=cutoff).delete()
    if removed:
        logger.info("cleanup removed=%d tenant=%s", removed, tenant.id if tenant else "*")
    return removed


@dataclass(frozen=True)
class SuspensionState:
    tenant_id: str
    suspended: bool
    suspended_batches: list[str]
    held: int


def _suspension_state(tenant: Tenant, batch_code: str | None) -> SuspensionState:
    held = Message.objects.filter(tenant=tenant, status=Status.HELD)
    if batch_code is not None:
        held = held.filter(batch_code=batch_code)
    batches = sorted(SuspendedBatch.objects.filter(tenant=tenant).values_list("batch_code", flat=True))
    return SuspensionState(tenant_id=tenant.id, suspended=tenant.suspended, suspended_batches=batches,
                           held=held.count())


def suspend_sending(*, tenant: Tenant, batch_code: str | None = None) -> SuspensionState:
    """Hold a tenant's waiting messages, or one batch's; new ones are held as they arrive."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        waiting = Message.objects.filter(tenant=tenant, status__in=[Status.QUEUED, Status.DEFERRED])
        if batch_code is None:
            if not tenant.suspended:
                tenant.suspended = True
                tenant.save(update_fields=["suspended", "updated_at"])
        else:
            SuspendedBatch.objects.get_or_create(tenant=tenant, batch_code=batch_code)
            waiting = waiting.filter(batch_code=batch_code)
        waiting.update(status=Status.HELD, updated_at=timezone.now())
    logger.info("suspended tenant=%s batch=%s", tenant.id, batch_code or "*")
    return _suspension_state(tenant, batch_code)


def activate_sending(*, tenant: Tenant, batch_code: str | None = None) -> SuspensionState:
    """Release what `suspend_sending` held; a batch cannot be released inside a suspended tenant."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        held = Message.objects.filter(tenant=tenant, status=Status.HELD)
        if batch_code is None:
            tenant.suspended = False
            tenant.save(update_fields=["suspended", "updated_at"])
            still = SuspendedBatch.objects.filter(tenant=tenant).values_list("batch_code", flat=True)
            held = held.exclude(batch_code__in=list(still))
        else:
            if tenant.suspended:
                raise ConflictError(
                    f"tenant {tenant.id!r} is suspended as a whole; activate the tenant before batch {batch_code!r}"
                )
            SuspendedBatch.objects.filter(tenant=tenant, batch_code=batch_code).delete()
            held = held.filter(batch_code=batch_code)
        # A message that already had attempts goes back to waiting for its retry time.
        held.update(
            status=Case(When(attempts=0, then=Value(Status.QUEUED)), default=Value(Status.DEFERRED)),
            updated_at=timezone.now(),
        )
    logger.info("activated tenant=%s batch=%s", tenant.id, batch_code or "*")
    return _suspension_state(tenant, batch_code)


def delete_account(*, account: SmtpAccount, force: bool = False) -> int:
    """Delete an SMTP account; refused while messages wait on it unless `force`.

    With `force`, its waiting messages fail with an `error` event. Returns how many failed.
    """
    now = timezone.now()
    reason = f"account {account.external_id!r} was deleted"
    with transaction.atomic():
        waiting = list(
            Message.objects.select_for_update().filter(account=account, status__in=WAITING_STATUSES)
            .only("id", "external_id", "tenant_id")
        )
        if waiting and not force:
            raise ConflictError(
                f"account {account.external_id!r} has {len(waiting)} messages waiting; "
                "delete with ?force=true to fail them",
                details={"waiting": len(waiting)},
            )
        if waiting:
            Message.objects.filter(pk__in=[row.pk for row in waiting]).update(
                status=Status.ERROR, error_at=now, last_error=reason, updated_at=now
            )
            MessageEvent.objects.bulk_create([
                MessageEvent(tenant_id=row.tenant_id, message_id=row.pk, external_id=row.external_id,
                             event_type=EventType.ERROR, occurred_at=now,
                             details={"error": reason, "error_ts": now.timestamp(), "smtp_code": None,
                                      "account_id": account.external_id})
                for row in waiting
            ])
        account.delete()
    logger.info("smtp account deleted tenant=%s account=%s failed=%d", account.tenant_id, account.external_id,
                len(waiting))
    return len(waiting)


def resend_undelivered(*, tenant_id: str | None) -> int:
    """Put the events given up on (tenant unreachable too long) back in the report outbox."""
    events = MessageEvent.objects.filter(reported_at__isnull=True, undelivered_at__isnull=False)
    if tenant_id is not None:
        events = events.filter(tenant_id=tenant_id)
    return events.update(undelivered_at=None)


def submit_messages(
    *, scope: Tenant | None, payloads: Sequence[Any], default_priority: int | None = None
) -> EnqueueResult:
    """Enqueue, then ring: what every front door (API, CLI, admin) does with new mail."""
    result = enqueue_messages(scope=scope, payloads=payloads, default_priority=default_priority)
    dispatch.ring_after_commit(result.queued_accounts)
    if result.tenants_expecting_sync:
        dispatch.wake_reports(result.tenants_expecting_sync)
    return result


@dataclass(frozen=True)
class RunNowResult:
    accounts_rung: int
    reports_resent: int


def run_now(*, tenant_id: str | None) -> RunNowResult:
    """Wake dispatch and reporting now: every tenant (None), or one.

    Reports given up on are put back in the outbox. One tenant's run-now also clears its
    Do Not Disturb; the instance-wide one keeps every tenant's.
    """
    rung = dispatch.dispatch_due(tenant_id=tenant_id)
    resent = resend_undelivered(tenant_id=tenant_id)
    if tenant_id is None:
        dispatch.wake_all_reports()
    else:
        dispatch.wake_reports([tenant_id], force=True)
    return RunNowResult(accounts_rung=len(rung), reports_resent=resent)
