"""Outbound HTTP that only reaches public addresses: tenant callbacks and attachment fetches.

SPEC §8: loopback, private, link-local, CGNAT, metadata, IPv4-mapped, NAT64 and
unspecified addresses are refused unless the host or its network is in
GMP_ALLOWED_HOSTS. The name is resolved once, every address is checked, and the
connection goes to the checked address (no second lookup a DNS rebinding could change),
with TLS still verified against the name. Redirects are followed by hand, each checked
again, at most three; the body is capped while it streams.

Written on urllib3 (requests' own engine) because pinning the connection to a checked
address needs its connection pools directly; no maintained library does this for both
callbacks and fetches.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from django.conf import settings

MAX_REDIRECTS = 3
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundRefused(Exception):
    """The URL may not be reached (policy), before any byte was sent."""


class OutboundError(Exception):
    """The request was allowed but failed (connection, timeout, size cap)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _allowed_entries() -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    names: set[str] = set()
    networks = []
    for entry in settings.GMP_ALLOWED_HOSTS:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def _embedded_v4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (and so is any IPv4 address it wraps)."""
    inner = _embedded_v4(address)
    if inner is not None:
        return is_public(inner)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _permitted(host: str, address: IPAddress) -> bool:
    names, networks = _allowed_entries()
    if host.lower().rstrip(".") in names:
        return True
    candidates = [address, *([inner] if (inner := _embedded_v4(address)) else [])]
    if any(candidate in network for candidate in candidates for network in networks):
        return True
    return is_public(address)


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused(f"scheme {parts.scheme or '(none)'!r} is not allowed; use http or https")
    if parts.username or parts.password:
        raise OutboundRefused("credentials in the URL are not allowed")
    if not parts.hostname:
        raise OutboundRefused("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OutboundRefused("the URL's port is not a number") from None
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return parts.scheme, parts.hostname, port, path


def check_literal(url: str) -> None:
    """Refuse at save time what is wrong without a DNS lookup: bad scheme, a forbidden literal address."""
    _, host, _, _ = _split(url)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") and not _permitted(
            host, ipaddress.ip_address("127.0.0.1")
        ):
            raise OutboundRefused(f"host {host!r} is not a public address") from None
        return
    if not _permitted(host, address):
        raise OutboundRefused(f"address {host} is not public (allow it with GMP_ALLOWED_HOSTS)")


def resolve(url: str) -> Target:
    """Resolve and check the URL's host; the address to connect to."""
    scheme, host, port, path = _split(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutboundError(f"cannot resolve {host!r}: {exc.strerror}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not _permitted(host, address):
            raise OutboundRefused(f"{host} resolves to {address}, which is not public "
                                  "(allow it with GMP_ALLOWED_HOSTS)")
        addresses.append(address)
    return Target(scheme=scheme, host=host, port=port, path=path, address=str(addresses[0]))


def request(method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float, max_bytes: int) -> Response:
    """One HTTP exchange through the guard, following at most three checked redirects."""
    for _ in range(MAX_REDIRECTS + 1):
        target = resolve(url)
        pool_args: dict[str, object] = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False,
                                        "maxsize": 1}
        if target.scheme == "https":
            pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                target.address, target.port, server_hostname=target.host, assert_hostname=target.host,
                cert_reqs="CERT_REQUIRED", **pool_args)  # type: ignore[arg-type]
        else:
            pool = urllib3.HTTPConnectionPool(target.address, target.port, **pool_args)  # type: ignore[arg-type]
        sent_headers = {"Host": target.host if target.port in (80, 443) else f"{target.host}:{target.port}",
                        "User-Agent": "mail-proxy", **(headers or {})}
        try:
            raw = pool.urlopen(method, target.path, body=body, headers=sent_headers, redirect=False,
                               preload_content=False, assert_same_host=False)
            try:
                if raw.status in (301, 302, 303, 307, 308) and raw.headers.get("Location"):
                    url = urljoin(url, raw.headers["Location"])
                    if raw.status == 303 or (raw.status in (301, 302) and method == "POST"):
                        method, body = "GET", None
                    continue
                content = bytearray()
                for chunk in raw.stream(65536, decode_content=True):
                    content += chunk
                    if len(content) > max_bytes:
                        raise OutboundError(f"answer larger than {max_bytes} bytes")
                return Response(status=raw.status, headers=dict(raw.headers), body=bytes(content))
            finally:
                raw.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            # urllib3 names the request path and query; a query may carry a token (a tenant's
            # sync URL with ?key=...), and this text goes to logs and to sync_last_error.
            raise OutboundError(f"{type(exc).__name__}: {_without_queries(str(exc))}") from None
        finally:
            pool.close()
    raise OutboundError(f"more than {MAX_REDIRECTS} redirects")


_QUERY = re.compile(r"\?[^\s'\")]*")


def _without_queries(text: str) -> str:
    """The text with every URL query replaced by '?…'."""
    return _QUERY.sub("?…", text)
