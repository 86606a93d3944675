"""The two numbers every reliability scenario ends with: `lost` and `dup`.

Two ledgers are compared. The client's: the ids the API answered as queued (a 200 whose
`rejected` list does not name them). The SMTP server's: the Message-ID of every message it
accepted. Each accepted id is mapped to its Message-ID through the database, read with
psycopg directly so that a scenario on a private PostgreSQL cluster reads it the same way.

- `lost`: accepted, and no copy reached the server (or, for a message the scenario
  expects to fail, it did not end in `error`);
- `dup`: extra copies the server received (a message received three times counts 2);
- `unflagged`: messages received more than once without `possible_duplicate` set: the
  only permitted duplicate (the server took the data, the worker never learnt it) is
  always flagged, so this must be 0 in every scenario.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import requests

__all__ = ["Answer", "ClientLedger", "Database", "MessageRow", "Tally", "tally"]


@dataclass(frozen=True)
class MessageRow:
    pk: int
    tenant_id: str
    external_id: str
    message_id: str
    status: str
    possible_duplicate: bool
    account_pk: int | None
    attempts: int


class Database:
    """Reads of the proxy's database by DSN (autocommit, one connection per call)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def query(self, sql: str, params: Iterable[Any] = (), *, timeout: float = 10) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=int(timeout)) as conn:
            return conn.execute(sql, list(params)).fetchall()  # type: ignore[arg-type]

    def messages(self, tenant_ids: Collection[str]) -> list[MessageRow]:
        rows = self.query(
            "SELECT id, tenant_id, external_id, message_id, status, possible_duplicate, account_id, attempts"
            " FROM queueing_message WHERE tenant_id = ANY(%s) ORDER BY id", [list(tenant_ids)])
        return [MessageRow(*row) for row in rows]

    def statuses(self, tenant_ids: Collection[str]) -> collections.Counter[str]:
        rows = self.query("SELECT status, count(*) FROM queueing_message WHERE tenant_id = ANY(%s) GROUP BY status",
                          [list(tenant_ids)])
        return collections.Counter(dict(rows))

    def count(self, tenant_ids: Collection[str], *statuses: str) -> int:
        counts = self.statuses(tenant_ids)
        return sum(counts[status] for status in statuses)

    def events(self, tenant_ids: Collection[str], event_type: str | None = None) -> list[tuple[Any, ...]]:
        """(event id, tenant, client id, type, details, reported_at) in event order."""
        sql = ("SELECT id, tenant_id, external_id, event_type, details, reported_at FROM queueing_messageevent"
               " WHERE tenant_id = ANY(%s)")
        params: list[Any] = [list(tenant_ids)]
        if event_type is not None:
            sql += " AND event_type = %s"
            params.append(event_type)
        return self.query(sql + " ORDER BY id", params)

    def account_pk(self, tenant_id: str, account_id: str) -> int:
        [(pk,)] = self.query("SELECT id FROM tenants_smtpaccount WHERE tenant_id = %s AND external_id = %s",
                             [tenant_id, account_id])
        return int(pk)


@dataclass(frozen=True)
class Answer:
    """One add-messages request as the client saw it."""

    status: int | None  # None: no answer (connection refused, timed out)
    seconds: float
    json_body: bool
    body: Any
    at: float  # time.monotonic() when it was sent


@dataclass
class ClientLedger:
    """The client's side: every request it made, and the ids the API accepted."""

    accepted: set[tuple[str, str]] = field(default_factory=set)
    answers: list[Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def submit(self, url: str, key: str, tenant_id: str, ids: list[str], *, timeout: float = 30,
               **fields: Any) -> Answer:
        """POST one batch; the ids it queued are recorded as accepted."""
        messages = [{"id": i, "from": "app@example.com", "to": f"{i}@example.com", "subject": i, "body": "x",
                     **fields} for i in ids]
        started = time.monotonic()
        try:
            response = requests.post(f"{url}/commands/add-messages", json={"messages": messages},
                                     headers={"X-API-Token": key}, timeout=timeout)
        except requests.RequestException as exc:
            answer = Answer(status=None, seconds=time.monotonic() - started, json_body=False, body=repr(exc),
                            at=started)
        else:
            try:
                body: Any = response.json()
                json_body = True
            except ValueError:
                body, json_body = response.text[:200], False
            answer = Answer(status=response.status_code, seconds=time.monotonic() - started, json_body=json_body,
                            body=body, at=started)
            if response.status_code == 200 and json_body:
                rejected = {item["id"] for item in body.get("rejected", [])}
                with self._lock:
                    self.accepted.update((tenant_id, i) for i in ids if i not in rejected)
        with self._lock:
            self.answers.append(answer)
        return answer

    def submit_all(self, url: str, key: str, tenant_id: str, ids: list[str], *, chunk: int = 500,
                   **fields: Any) -> None:
        """Submit in chunks; every chunk must be queued whole (no fault is active)."""
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            answer = self.submit(url, key, tenant_id, part, **fields)
            assert answer.status == 200, answer
            assert answer.body["queued"] == len(part), answer

    def tenants(self) -> set[str]:
        return {tenant for tenant, _ in self.accepted}


@dataclass(frozen=True)
class Tally:
    accepted: int
    sent: int  # accepted messages with at least one copy at the server
    copies: int  # messages the server accepted, in all
    lost: int
    dup: int
    unflagged: int
    flagged: int  # messages marked possible_duplicate, duplicated or not
    unknown: int  # copies whose Message-ID no message row has
    lost_ids: list[str]
    dup_ids: list[str]
    unflagged_ids: list[str]

    def line(self, elapsed: float) -> str:
        return f"lost={self.lost} dup={self.dup} sent={self.sent} elapsed={elapsed:.1f}s"


def tally(*, accepted: Collection[tuple[str, str]], rows: list[MessageRow], received: Iterable[str | None],
          failing: Collection[tuple[str, str]] = ()) -> Tally:
    """Compare the ledgers. `failing`: accepted ids the scenario expects to end in `error`."""
    copies = collections.Counter(received)
    by_key = {(row.tenant_id, row.external_id): row for row in rows}
    known = {row.message_id for row in rows}
    lost_ids = []
    sent = 0
    for key in sorted(accepted):
        row = by_key.get(key)
        if row is None:
            lost_ids.append(f"{key[0]}/{key[1]} (no row)")
        elif key in failing:
            if row.status != "error":
                lost_ids.append(f"{key[0]}/{key[1]} ({row.status}, expected error)")
        elif copies[row.message_id] == 0:
            lost_ids.append(f"{key[0]}/{key[1]} ({row.status})")
        else:
            sent += 1
    dup_ids = [f"{row.tenant_id}/{row.external_id}" for row in rows if copies[row.message_id] > 1]
    unflagged_ids = [f"{row.tenant_id}/{row.external_id}" for row in rows
                     if copies[row.message_id] > 1 and not row.possible_duplicate]
    return Tally(
        accepted=len(accepted), sent=sent, copies=sum(copies.values()), lost=len(lost_ids),
        dup=sum(copies[row.message_id] - 1 for row in rows if copies[row.message_id] > 1),
        unflagged=len(unflagged_ids), flagged=sum(1 for row in rows if row.possible_duplicate),
        unknown=sum(n for mid, n in copies.items() if mid not in known),
        lost_ids=lost_ids, dup_ids=dup_ids, unflagged_ids=unflagged_ids,
    )
