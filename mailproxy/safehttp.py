"""Outbound HTTP that only reaches public addresses: tenant callbacks and attachment fetches.

SPEC §8: loopback, private, link-local, CGNAT, metadata, IPv4-mapped, NAT64 and
unspecified addresses are refused unless the host or its network is in
GMP_ALLOWED_HOSTS. The name is resolved once, every address is checked, and the
connection goes to the checked address (no second lookup a DNS rebinding could change),
with TLS still verified against the name. Redirects are followed by hand, each checked
again, at most three; the body is capped while it streams.

Every request asks for `Accept-Encoding: identity`. A server that compresses anyway
(gzip or deflate) is inflated here a bounded piece at a time, so the cap holds for the
decoded bytes too: a small compressed answer can otherwise inflate to gigabytes in one
read. Other encodings (br, zstd, …) are refused rather than handed on undecoded.

Written on urllib3 (requests' own engine) because pinning the connection to a checked
address needs its connection pools directly; no maintained library does this for both
callbacks and fetches.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from django.conf import settings

MAX_REDIRECTS = 3
CHUNK = 64 * 1024  # bytes read from the socket at a time
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


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a host names without DNS, legacy IPv4 spellings included.

    The resolver takes `2130706433`, `0x7f000001`, `0177.0.0.1` and `127.1` as 127.0.0.1
    (inet_aton's rules), so the door must read them the same way. ValueError if not literal.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if not host or not all(ch in "0123456789abcdefxABCDEFX." for ch in host) or not host[0].isdigit():
            raise
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise ValueError(host) from None


def check_literal(url: str) -> None:
    """Refuse at save time what is wrong without a DNS lookup: bad scheme, a forbidden literal address."""
    _, host, _, _ = _split(url)
    try:
        address = _literal_address(host)
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
                        "User-Agent": "mail-proxy",
                        **{name: value for name, value in (headers or {}).items()
                           if name.lower() != "accept-encoding"},
                        "Accept-Encoding": "identity"}
        try:
            raw = pool.urlopen(method, target.path, body=body, headers=sent_headers, redirect=False,
                               preload_content=False, assert_same_host=False)
            try:
                if raw.status in (301, 302, 303, 307, 308) and raw.headers.get("Location"):
                    url = urljoin(url, raw.headers["Location"])
                    if raw.status == 303 or (raw.status in (301, 302) and method == "POST"):
                        method, body = "GET", None
                    continue
                body_bytes = _read_body(raw, max_bytes)
                return Response(status=raw.status, headers=dict(raw.headers), body=body_bytes)
            finally:
                raw.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            # urllib3 names the request path and query; a query may carry a token (a tenant's
            # sync URL with ?key=...), and this text goes to logs and to sync_last_error.
            raise OutboundError(f"{type(exc).__name__}: {_without_queries(str(exc))}") from None
        finally:
            pool.close()
    raise OutboundError(f"more than {MAX_REDIRECTS} redirects")


def _read_body(raw: urllib3.BaseHTTPResponse, max_bytes: int) -> bytes:
    """The answer's body, decoded, refused as soon as it is larger than `max_bytes`."""
    inflater = _Inflater.for_encoding(raw.headers.get("Content-Encoding", ""))
    content = bytearray()
    for chunk in raw.stream(CHUNK, decode_content=False):
        # One byte over the room left is enough to know the cap is passed.
        content += chunk if inflater is None else inflater.inflate(chunk, max_bytes - len(content) + 1)
        if len(content) > max_bytes:
            raise OutboundError(f"answer larger than {max_bytes} bytes")
    return bytes(content)


class _Inflater:
    """Inflates a gzip or deflate body, never producing more than it is allowed per call."""

    def __init__(self, encoding: str) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)
        # deflate should carry the zlib wrapper (RFC 9110 §8.4.1.2), but some servers send the
        # bare RFC 1951 stream: the input is kept until the wrapper has been seen, to start over.
        self._unwrapped_probe: bytearray | None = None if self.gzip else bytearray()
        self._later_member = False
        self._finished = False

    @classmethod
    def for_encoding(cls, header: str) -> _Inflater | None:
        """None for an identity body; an OutboundError for an encoding the proxy does not decode."""
        codings = [coding.strip().lower() for coding in header.split(",")]
        codings = [coding for coding in codings if coding not in ("", "identity")]
        if not codings:
            return None
        if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
            return cls(codings[0])
        raise OutboundError(f"answer in Content-Encoding {', '.join(codings)}, which the proxy does not decode "
                            "(it asks for identity, and inflates gzip and deflate only)")

    def inflate(self, data: bytes, limit: int) -> bytes:
        """What `data` inflates to, at most `limit` bytes.

        Input past the limit is dropped, not kept for later: the caller refuses the answer then.
        """
        out = bytearray()
        while data and not self._finished and len(out) < limit:
            try:
                piece = self._inflate.decompress(data, limit - len(out))
            except zlib.error as exc:
                data = self._after_error(data, exc)
                continue
            out += piece
            if self._unwrapped_probe is not None:
                self._unwrapped_probe += data[:len(data) - len(self._inflate.unconsumed_tail)]
                if len(self._unwrapped_probe) >= 2:  # the two-byte zlib header was accepted
                    self._unwrapped_probe = None
            data = self._inflate.unconsumed_tail
            if self._inflate.eof:
                data = self._inflate.unused_data
                if self.gzip:  # RFC 1952 §2.2: a gzip file is a series of members
                    self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    self._later_member = True
                else:
                    self._finished = True  # anything after a deflate stream is not part of it
        return bytes(out)

    def _after_error(self, data: bytes, exc: zlib.error) -> bytes:
        """The input to go on with after a decoding error, or an OutboundError."""
        if self._unwrapped_probe is not None:
            self._inflate = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
            replay = bytes(self._unwrapped_probe) + data
            self._unwrapped_probe = None
            return replay
        if self._later_member:
            # Bytes after a complete gzip member that do not start another one: padding some
            # servers add. What was decoded stands, as browsers and urllib3 also take it.
            self._finished = True
            return b""
        raise OutboundError(f"the {'gzip' if self.gzip else 'deflate'} answer cannot be decoded: {exc}")


_QUERY = re.compile(r"\?[^\s'\")]*")


def _without_queries(text: str) -> str:
    """The text with every URL query replaced by '?…'."""
    return _QUERY.sub("?…", text)
