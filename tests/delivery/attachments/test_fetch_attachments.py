"""fetch_attachments: order, parallelism, and which error a message gets."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

from delivery.attachments import AttachmentError, fetch_attachments
from tenants.models import Tenant
from tests.file_server import FileServer

pytestmark = pytest.mark.django_db


def test_attachments_come_back_in_the_items_order(files: FileServer, tenant: Tenant) -> None:
    slow = files.route("/slow.txt", b"slow", delay=0.1)
    fast = files.route("/fast.txt", b"fast")
    attachments = fetch_attachments([
        {"filename": "slow.txt", "storage_path": slow},
        {"filename": "inline.txt", "storage_path": "base64:aW5saW5l"},
        {"filename": "fast.txt", "storage_path": fast},
    ], tenant=tenant)
    assert [(a.filename, a.content) for a in attachments] == [
        ("slow.txt", b"slow"), ("inline.txt", b"inline"), ("fast.txt", b"fast")]


def test_no_items_no_attachments(tenant: Tenant) -> None:
    assert fetch_attachments([], tenant=tenant) == []


def test_four_slow_urls_are_fetched_at_once(files: FileServer, tenant: Tenant) -> None:
    items = [{"filename": f"{n}.bin", "storage_path": files.route(f"/{n}.bin", b"x", delay=0.5)} for n in range(4)]
    started = time.monotonic()
    assert len(fetch_attachments(items, tenant=tenant)) == 4
    assert time.monotonic() - started < 1.5  # one after the other would take 2 s
    assert files.max_in_flight == 4


@override_settings(GMP_MAX_CONCURRENT_FETCHES=2)
def test_parallel_fetches_are_bounded(files: FileServer, tenant: Tenant) -> None:
    items = [{"filename": f"{n}.bin", "storage_path": files.route(f"/{n}.bin", b"x", delay=0.1)} for n in range(4)]
    fetch_attachments(items, tenant=tenant)
    assert files.max_in_flight == 2


def test_a_permanent_error_wins_over_an_earlier_temporary_one(files: FileServer, tenant: Tenant) -> None:
    with pytest.raises(AttachmentError) as caught:
        fetch_attachments([
            {"filename": "busy.pdf", "storage_path": files.route("/busy.pdf", status=503)},
            {"filename": "gone.pdf", "storage_path": files.route("/gone.pdf", status=410, delay=0.1)},
        ], tenant=tenant)
    assert (str(caught.value), caught.value.permanent) == ("attachment 'gone.pdf': HTTP 410", True)


def test_the_first_error_in_item_order_is_raised(files: FileServer, tenant: Tenant) -> None:
    with pytest.raises(AttachmentError) as caught:
        fetch_attachments([
            {"filename": "ok.pdf", "storage_path": files.route("/ok.pdf", b"ok")},
            {"filename": "first.pdf", "storage_path": files.route("/first.pdf", status=503, delay=0.1)},
            {"filename": "second.pdf", "storage_path": files.route("/second.pdf", status=500)},
        ], tenant=tenant)
    assert (str(caught.value), caught.value.permanent) == ("attachment 'first.pdf': HTTP 503", False)


@override_settings(GMP_MAX_CONCURRENT_FETCHES=1)
def test_after_a_permanent_error_the_fetches_not_started_are_dropped(files: FileServer, tenant: Tenant) -> None:
    with pytest.raises(AttachmentError):
        fetch_attachments([
            {"filename": "missing.pdf", "storage_path": files.route("/missing.pdf", status=404)},
            {"filename": "a.pdf", "storage_path": files.route("/a.pdf", b"a")},
            {"filename": "b.pdf", "storage_path": files.route("/b.pdf", b"b")},
        ], tenant=tenant)
    assert (files.count("/missing.pdf"), files.count("/a.pdf"), files.count("/b.pdf")) == (1, 0, 0)


def test_after_a_temporary_error_the_others_fill_the_cache(files: FileServer, tenant: Tenant) -> None:
    ok = files.route("/ok.pdf", b"ok")
    with pytest.raises(AttachmentError) as caught:
        fetch_attachments([{"filename": "busy.pdf", "storage_path": files.route("/busy.pdf", status=500)},
                           {"filename": "ok.pdf", "storage_path": ok}], tenant=tenant)
    assert caught.value.permanent is False
    fetch_attachments([{"filename": "ok.pdf", "storage_path": ok}], tenant=tenant)
    assert files.count("/ok.pdf") == 1


def test_a_malformed_item_fails_before_anything_is_fetched(files: FileServer, tenant: Tenant) -> None:
    url = files.route("/a.pdf", b"a")
    for bad, message in [({"storage_path": url}, "attachment #2: filename is missing"),
                         ({"filename": "b.pdf"}, "attachment 'b.pdf': storage_path is missing"),
                         ({"filename": "b.pdf", "storage_path": url, "fetch_mode": ["x"]},
                          "attachment 'b.pdf': fetch mode ['x'] is unknown")]:
        with pytest.raises(AttachmentError) as caught:
            fetch_attachments([{"filename": "a.pdf", "storage_path": url}, bad], tenant=tenant)
        assert (str(caught.value), caught.value.permanent) == (message, True)
    assert files.count("/a.pdf") == 0
