"""What every scenario does: tenants and accounts through the admin API, waiting, the verdict.

Tenants and accounts are created through the running web process, never with the ORM
of the test process, so a scenario on a private database sets itself up the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from django.conf import settings
from django.db import connection

from tests.e2e.harness import Stack
from tests.reliability.ledger import ClientLedger, Database, Tally, tally
from tests.smtp_sink import SmtpSink

ADMIN = {"X-API-Token": settings.GMP_API_TOKEN}


def shared_dsn() -> str:
    """The test database the shared-server scenarios run on (the Stack's own derivation)."""
    db = connection.settings_dict
    return f"postgresql://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def create_tenant(url: str, tenant_id: str, **fields: Any) -> str:
    """A tenant through the admin API; its first API key."""
    answer = requests.post(f"{url}/tenant", json={"id": tenant_id, **fields}, headers=ADMIN, timeout=30)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["api_key"])


def create_account(url: str, tenant_id: str, host: str, port: int, account_id: str = "main",
                   **fields: Any) -> None:
    """An SMTP account without TLS or credentials (the sink's, or a fault proxy's in front of it)."""
    body = {"id": account_id, "tenant_id": tenant_id, "host": host, "port": port, "security": "none",
            "timeout": 2, "is_default": True, **fields}
    answer = requests.post(f"{url}/account", json=body, headers=ADMIN, timeout=30)
    assert answer.status_code in (200, 201), answer.text


def wait_until(stack: Stack, condition: Callable[[], bool], what: str, timeout: float) -> None:
    stack.wait(condition, what, timeout=timeout)


def all_final(db: Database, tenant_ids: list[str], total: int) -> Callable[[], bool]:
    """A condition: `total` messages of these tenants are in a final state."""
    return lambda: db.count(tenant_ids, "sent", "error", "expired", "cancelled") >= total


def count_tally(db: Database, client: ClientLedger, sink: SmtpSink,
                failing: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> Tally:
    return tally(accepted=client.accepted, rows=db.messages(client.tenants() | {t for t, _ in failing}),
                 received=[m.message_id for m in sink.messages], failing=failing)


def conclude(record: Callable[[str], None], result: Tally, *, bound: int, started: float, extra: str = "") -> None:
    """Print the scenario's summary line, then assert the invariants.

    `bound`: duplicates permitted (0 unless the scenario is the one where the server took
    the data and the worker could not record it); every duplicate must be flagged.
    """
    line = result.line(time.monotonic() - started) + (f" {extra}" if extra else "")
    print(f"\n{line}")
    record(line)
    assert result.lost == 0, f"lost: {result.lost_ids[:20]}"
    assert result.unknown == 0, "the server received messages no row knows"
    assert result.unflagged == 0, f"duplicates without possible_duplicate: {result.unflagged_ids[:20]}"
    assert result.dup <= bound, f"{result.dup} duplicates > bound {bound}: {result.dup_ids[:20]}"


def create_tenants(url: str, address: tuple[str, int], count: int, *, prefix: str = "t",
                   tenant: dict[str, Any] | None = None, **account: Any) -> list[tuple[str, str]]:
    """`count` tenants with one default account each at `address`; (tenant id, API key) pairs."""
    made = []
    for index in range(count):
        tenant_id = f"{prefix}{index}"
        key = create_tenant(url, tenant_id, **(tenant or {}))
        create_account(url, tenant_id, address[0], address[1], **account)
        made.append((tenant_id, key))
    return made


class Submitter:
    """A client that keeps submitting small batches in a thread, whatever the API answers."""

    def __init__(self, client: ClientLedger, url: str, key: str, tenant_id: str, *, batch: int = 10,
                 pause: float = 0.2, accounts: tuple[str, ...] = ("main",), timeout: float = 30) -> None:
        self.client, self.url, self.key, self.tenant_id = client, url, key, tenant_id
        self.batch, self.pause, self.accounts, self.timeout = batch, pause, accounts, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"submitter:{tenant_id}", daemon=True)
        self.requests = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            account = self.accounts[self.requests % len(self.accounts)]
            ids = [f"{account}-r{self.requests}-{i}" for i in range(self.batch)]
            self.client.submit(self.url, self.key, self.tenant_id, ids, timeout=self.timeout, account_id=account)
            self.requests += 1
            self._stop.wait(self.pause)

    def __enter__(self) -> Submitter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
