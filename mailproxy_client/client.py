"""HTTP client of the mail-proxy REST API: JSON in and out, one typed error per failure kind.

Needs only the standard library and `requests`, so an application can vendor this package
without anything of the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import quote

import requests

from .errors import MailProxyError, MessageRejected, Rejection, TransportError, error_class_for

__all__ = ["AddResult", "DeleteResult", "MailProxyClient", "MessagePage", "RunNowResult", "SuspensionResult"]

VERSION = "0.1.0"
TOKEN_HEADER = "X-API-Token"  # noqa: S105 (a header name, not a secret)
Timeout: TypeAlias = float | tuple[float, float]  # requests: total, or (connect, read)


@dataclass(frozen=True)
class AddResult:
    """The answer to add-messages: how many were stored, which were refused and why."""

    ok: bool
    queued: int
    rejected: list[Rejection]
    # Recipients dropped from queued messages because they are on the suppression list.
    suppressed: list[dict[str, Any]]
    raw: dict[str, Any]

    @property
    def rejected_ids(self) -> set[str]:
        return {item.id for item in self.rejected if item.id is not None}


@dataclass(frozen=True)
class MessagePage:
    """One page of `GET /messages`; pass `next_cursor` back as `cursor` for the next one."""

    messages: list[dict[str, Any]]
    next_cursor: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class SuspensionResult:
    tenant_id: str
    suspended: bool
    suspended_batches: list[str]
    held: int
    raw: dict[str, Any]


@dataclass(frozen=True)
class DeleteResult:
    removed: int
    removed_ids: list[str]
    not_found: list[str]
    unauthorized: list[str]
    # Being sent right now: they cannot be withdrawn any more.
    in_flight: list[str]
    raw: dict[str, Any]


@dataclass(frozen=True)
class RunNowResult:
    accounts_rung: int
    reports_resent: int
    raw: dict[str, Any]


def _rejection(item: Any) -> Rejection:
    if not isinstance(item, Mapping):
        return Rejection(id=None, reason=str(item))
    raw_id = item.get("id")
    index = item.get("index")
    return Rejection(
        id=None if raw_id is None else str(raw_id),
        reason=str(item.get("reason") or "rejected"),
        field=item.get("field"),
        index=index if isinstance(index, int) else None,
    )


def quote_message_id(message_id: str) -> str:
    """The id as one URL path part: ids may hold '/', '?', '#', or be '.' or '..'."""
    quoted = quote(message_id, safe="")
    # urllib3 folds the dot segments "." and ".." of a URL path; encoded, they reach the proxy as given.
    return {".": "%2E", "..": "%2E%2E"}.get(quoted, quoted)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return repr(value.timestamp())
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ",".join(str(item) for item in value)
    return str(value)


class MailProxyClient:
    """A client for one mail-proxy instance and one API token (tenant or admin).

    Not thread-safe when sharing the default `requests.Session` across threads that also
    mutate it; pass one `session` per thread if in doubt.
    """

    def __init__(self, base_url: str, token: str, *, timeout: Timeout = 30.0,
                 session: requests.Session | None = None) -> None:
        if not base_url:
            raise ValueError("base_url is required, e.g. https://mail-proxy.example.com")
        if not token:
            raise ValueError("token is required")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()

    def __repr__(self) -> str:
        return f"<MailProxyClient {self.base_url}>"  # never the token

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> MailProxyClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None) -> dict[str, Any]:
        """Call any endpoint; the answer's JSON object, or the matching `MailProxyError`.

        Public so endpoints without a helper here (accounts, tenants, suppressions) can be
        reached with the same authentication and error handling.
        """
        url = self.base_url + path
        headers = {TOKEN_HEADER: self._token, "Accept": "application/json",
                   "User-Agent": f"mailproxy-client/{VERSION}"}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        query = {name: _query_value(value) for name, value in (params or {}).items() if value is not None}
        try:
            # No redirects: a POST turned into a GET, or the token sent to another host, is worse
            # than an error that names the new location.
            response = self.session.request(method, url, params=query, data=data, headers=headers,
                                            timeout=self.timeout, allow_redirects=False)
        except requests.Timeout as exc:
            raise TransportError(f"{method} {url} timed out: {exc}") from exc
        except requests.RequestException as exc:
            raise TransportError(f"{method} {url} failed: {exc}") from exc
        return self._answer(method, url, response)

    @staticmethod
    def _answer(method: str, url: str, response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise MailProxyError(f"{method} {url} was redirected to {location}; check the base URL", status=status)
        if status >= 400:
            if isinstance(payload, dict) and payload.get("error"):
                error, details = str(payload["error"]), payload.get("details")
            else:
                # Not the proxy's own answer: a proxy or load balancer in front of it.
                error, details = f"{response.reason or 'error'}: {response.text[:200]}".strip(), None
            raise error_class_for(status)(error, status=status, details=details)
        if not isinstance(payload, dict):
            raise TransportError(f"{method} {url} answered HTTP {status} without a JSON object", status=status)
        return payload

    # -- commands -----------------------------------------------------------------------------

    def add_messages(self, messages: Sequence[Mapping[str, Any]], *,
                     default_priority: int | str | None = None) -> AddResult:
        """Queue a batch (at most the instance's GMP_MAX_BATCH, 1000 by default).

        Valid messages are stored and invalid ones listed in `rejected`: a partly refused
        batch is not an exception. An id in neither list was stored durably.
        """
        body: dict[str, Any] = {"messages": [dict(message) for message in messages]}
        if default_priority is not None:
            body["default_priority"] = default_priority
        raw = self.request("POST", "/commands/add-messages", body=body)
        suppressed = raw.get("suppressed") or []
        return AddResult(
            ok=bool(raw.get("ok")),
            queued=int(raw.get("queued") or 0),
            rejected=[_rejection(item) for item in raw.get("rejected") or []],
            suppressed=list(suppressed) if isinstance(suppressed, list) else [],
            raw=raw,
        )

    def send(self, message: Mapping[str, Any]) -> AddResult:
        """Queue one message; `MessageRejected` if the proxy refused it."""
        result = self.add_messages([message])
        if result.rejected:
            first = result.rejected[0]
            raise MessageRejected(first.reason, first.id if first.id is not None else message.get("id"))
        return result

    def run_now(self) -> RunNowResult:
        """Wake dispatch and reporting now (a tenant token also clears its Do Not Disturb)."""
        raw = self.request("POST", "/commands/run-now")
        return RunNowResult(accounts_rung=int(raw.get("accounts_rung") or 0),
                            reports_resent=int(raw.get("reports_resent") or 0), raw=raw)

    def suspend(self, tenant_id: str | None = None, batch_code: str | None = None) -> SuspensionResult:
        """Hold the tenant's sending, or one batch of it."""
        return self._suspension("/commands/suspend", tenant_id, batch_code)

    def activate(self, tenant_id: str | None = None, batch_code: str | None = None) -> SuspensionResult:
        """Release what `suspend` held; `Conflict` for a batch while the whole tenant is suspended."""
        return self._suspension("/commands/activate", tenant_id, batch_code)

    def _suspension(self, path: str, tenant_id: str | None, batch_code: str | None) -> SuspensionResult:
        body = {name: value for name, value in (("tenant_id", tenant_id), ("batch_code", batch_code))
                if value is not None}
        raw = self.request("POST", path, body=body)
        return SuspensionResult(tenant_id=str(raw.get("tenant_id")), suspended=bool(raw.get("suspended")),
                                suspended_batches=list(raw.get("suspended_batches") or []),
                                held=int(raw.get("held") or 0), raw=raw)

    def delete_messages(self, ids: Iterable[str], tenant_id: str | None = None) -> DeleteResult:
        """Withdraw waiting messages; ones already sent or being sent stay as they are."""
        raw = self.request("POST", "/commands/delete-messages", params={"tenant_id": tenant_id},
                           body={"ids": list(ids)})
        return DeleteResult(removed=int(raw.get("removed") or 0), removed_ids=list(raw.get("removed_ids") or []),
                            not_found=list(raw.get("not_found") or []),
                            unauthorized=list(raw.get("unauthorized") or []),
                            in_flight=list(raw.get("in_flight") or []), raw=raw)

    # -- reads --------------------------------------------------------------------------------

    def messages(self, *, tenant_id: str | None = None, status: str | Iterable[str] | None = None,
                 batch_code: str | None = None, account_id: str | None = None, active_only: bool | None = None,
                 since: float | datetime | None = None, limit: int | None = None, cursor: str | None = None,
                 all_tenants: bool | None = None) -> MessagePage:
        """One page of message records, newest first; no bodies, no attachments."""
        params = {"tenant_id": tenant_id, "status": status, "batch_code": batch_code, "account_id": account_id,
                  "active_only": active_only, "since": since, "limit": limit, "cursor": cursor, "all": all_tenants}
        raw = self.request("GET", "/messages", params=params)
        cursor_out = raw.get("next_cursor")
        return MessagePage(messages=list(raw.get("messages") or []),
                           next_cursor=None if cursor_out in (None, "") else str(cursor_out), raw=raw)

    def iter_messages(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every message matching the filters, page after page (`limit` is the page size)."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.messages(**filters, cursor=cursor)
            yield from page.messages
            if page.next_cursor is None or not page.messages:
                return
            cursor = page.next_cursor

    def message(self, id: str, tenant_id: str | None = None) -> dict[str, Any]:
        """One message record by the client's id, with its `events` timeline; `NotFound` if unknown."""
        raw = self.request("GET", f"/messages/{quote_message_id(id)}", params={"tenant_id": tenant_id})
        record = raw.get("message")
        if not isinstance(record, dict):
            raise TransportError("the message answer has no message object", status=200)
        return record
