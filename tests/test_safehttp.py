"""The outbound guard: what it refuses is refused before any connection is made."""

from __future__ import annotations

import gzip
import socket
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from django.test import override_settings

from mailproxy import safehttp
from tests.file_server import FileServer


@pytest.fixture
def loopback() -> Iterator[FileServer]:
    server = FileServer()
    server.route("/secret", b"internal data")
    yield server
    server.close()


def fetch(url: str) -> safehttp.Response:
    return safehttp.request("GET", url, timeout=2, max_bytes=1024)


@override_settings(GMP_ALLOWED_HOSTS=[])
@pytest.mark.parametrize("form", [
    "http://127.0.0.1:{port}/secret", "http://localhost:{port}/secret", "http://2130706433:{port}/secret",
    "http://0x7f.0.0.1:{port}/secret", "http://127.1:{port}/secret", "http://0177.0.0.1:{port}/secret",
    "http://[::ffff:127.0.0.1]:{port}/secret", "http://[::1]:{port}/secret", "http://0.0.0.0:{port}/secret",
])
def test_loopback_in_every_spelling_is_refused_without_a_connection(loopback: FileServer, form: str) -> None:
    with pytest.raises(safehttp.OutboundRefused):
        fetch(form.format(port=loopback.port))
    assert loopback.requests == []


@override_settings(GMP_ALLOWED_HOSTS=[])
@pytest.mark.parametrize("url", [
    "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/", "http://[fe80::1]/", "http://[fd00::1]/", "http://[64:ff9b::7f00:1]/", "http://224.0.0.1/",
])
def test_private_link_local_metadata_cgnat_nat64_and_multicast_are_refused(url: str) -> None:
    with pytest.raises(safehttp.OutboundRefused):
        fetch(url)


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://files.example.com/x", "scheme"), ("file:///etc/passwd", "scheme"),
    ("http://user:pw@files.example.com/x", "credentials"), ("gopher://x.example.com", "scheme"),
])
def test_bad_schemes_and_credentials_in_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(safehttp.OutboundRefused, match=reason):
        fetch(url)


def test_allowed_host_is_reached(loopback: FileServer) -> None:
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.0/8"]):
        assert fetch(f"{loopback.url}/secret").body == b"internal data"


def test_a_redirect_to_loopback_is_refused_before_following_it() -> None:
    inner = FileServer()  # 127.0.0.1: not allowed
    inner.route("/secret", b"internal data")
    outer = FileServer(host="127.0.0.2")  # allowed, and it redirects inward
    outer.route("/jump", b"", status=302, headers={"Location": f"{inner.url}/secret"})
    try:
        with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.2"]), pytest.raises(safehttp.OutboundRefused):
            fetch(f"{outer.url}/jump")
        assert outer.count("/jump") == 1
        assert inner.requests == []
    finally:
        inner.close()
        outer.close()


def test_more_than_three_redirects_fail(loopback: FileServer) -> None:
    for step in range(5):
        loopback.route(f"/r{step}", b"", status=302, headers={"Location": f"/r{step + 1}"})
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), pytest.raises(safehttp.OutboundError, match="redirect"):
        fetch(f"{loopback.url}/r0")
    assert loopback.count("/r3") == 1
    assert loopback.count("/r4") == 0


def test_answer_bigger_than_the_cap_is_cut_off(loopback: FileServer) -> None:
    loopback.route("/big", b"x" * 5000)
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), pytest.raises(safehttp.OutboundError, match="larger"):
        fetch(f"{loopback.url}/big")


def test_slow_answer_times_out(loopback: FileServer) -> None:
    loopback.route("/slow", b"late", delay=3)
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), pytest.raises(safehttp.OutboundError):
        safehttp.request("GET", f"{loopback.url}/slow", timeout=0.5, max_bytes=1024)


def test_a_name_is_connected_to_at_the_address_that_was_checked(
    loopback: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resolver that answers differently the second time (DNS rebinding): the guard asks once.
    answers = iter(["127.0.0.1", "10.9.9.9"])
    real = safehttp.socket.getaddrinfo

    def rebinding(host: str, port: int, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if host == "files.rebind.test":
            return real(next(answers), port, *args, **kwargs)  # type: ignore[arg-type]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safehttp.socket, "getaddrinfo", rebinding)
    with override_settings(GMP_ALLOWED_HOSTS=["files.rebind.test"]):
        response = fetch(f"http://files.rebind.test:{loopback.port}/secret")
    assert response.body == b"internal data"
    assert loopback.last("/secret").headers["Host"] == f"files.rebind.test:{loopback.port}"


def test_a_name_resolving_to_loopback_is_refused(loopback: FileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    real = safehttp.socket.getaddrinfo

    def resolver(host: str, port: int, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        return real("127.0.0.1" if host == "innocent.example.com" else host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safehttp.socket, "getaddrinfo", resolver)
    with override_settings(GMP_ALLOWED_HOSTS=[]), pytest.raises(safehttp.OutboundRefused, match=r"127\.0\.0\.1"):
        fetch(f"http://innocent.example.com:{loopback.port}/secret")
    assert loopback.requests == []


def test_a_failure_names_no_query_string(db: None) -> None:
    """A sync URL's query may hold a token: the error text (logged, stored) must not."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), pytest.raises(safehttp.OutboundError) as refused:
        safehttp.request("POST", f"http://127.0.0.1:{port}/sync?key=canary-token-77", body=b"{}", timeout=2,
                         max_bytes=1000)
    assert "canary-token-77" not in str(refused.value)
    assert "?…" in str(refused.value) or "refused" in str(refused.value).lower()


TEXT = b"a line of an attachment\n" * 40  # 960 bytes: under the 1024-byte cap of fetch()


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


def _gzip_of_zeros(size: int) -> bytes:
    """`size` zero bytes gzip-compressed a megabyte at a time (the test itself stays small)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()


def test_every_request_asks_for_an_uncompressed_answer(loopback: FileServer) -> None:
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]):
        safehttp.request("GET", f"{loopback.url}/secret", headers={"accept-encoding": "gzip, br"}, timeout=2,
                         max_bytes=1024)
    sent = {name: value for name, value in loopback.last("/secret").headers.items()
            if name.lower() == "accept-encoding"}
    assert list(sent.values()) == ["identity"]


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", gzip.compress(TEXT)),
    ("x-gzip", gzip.compress(TEXT)),
    ("GZIP", gzip.compress(TEXT)),
    ("gzip", gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:])),
    ("deflate", _deflate(TEXT, zlib.MAX_WBITS)),
    ("deflate", _deflate(TEXT, -zlib.MAX_WBITS)),
    ("identity", TEXT),
], ids=["gzip", "x-gzip", "upper case", "two gzip members", "deflate", "raw deflate", "identity"])
def test_a_compressed_answer_sent_anyway_is_inflated(loopback: FileServer, encoding: str, body: bytes) -> None:
    loopback.route("/packed", body, headers={"Content-Encoding": encoding})
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]):
        assert fetch(f"{loopback.url}/packed").body == TEXT


def test_a_compression_bomb_is_refused_at_the_cap_without_being_inflated(loopback: FileServer) -> None:
    loopback.route("/bomb", _gzip_of_zeros(32 * 1024 * 1024), headers={"Content-Encoding": "gzip"})
    tracemalloc.start()
    try:
        with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), \
                pytest.raises(safehttp.OutboundError, match=r"^answer larger than 1024 bytes$"):
            fetch(f"{loopback.url}/bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Inflating one 64 KB read of this body whole would take 64 MB.
    assert peak < 2 * 1024 * 1024, f"{peak / 1024 / 1024:.1f} MB held for a 1 KB cap"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_an_encoding_the_proxy_does_not_decode_is_refused(loopback: FileServer, encoding: str) -> None:
    loopback.route("/packed", b"\x1b\x03\x00\xf8", headers={"Content-Encoding": encoding})
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), \
            pytest.raises(safehttp.OutboundError, match=f"Content-Encoding {encoding}, which the proxy does not"):
        fetch(f"{loopback.url}/packed")


def test_a_corrupt_gzip_answer_fails_clearly(loopback: FileServer) -> None:
    loopback.route("/packed", b"\x1f\x8b" + b"not really gzip" * 10, headers={"Content-Encoding": "gzip"})
    with override_settings(GMP_ALLOWED_HOSTS=["127.0.0.1"]), \
            pytest.raises(safehttp.OutboundError, match="the gzip answer cannot be decoded"):
        fetch(f"{loopback.url}/packed")
