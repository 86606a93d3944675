from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from delivery.largefiles import MB, LargeFileError, Link, apply_policy, render_links_html, render_links_text
from delivery.models import StoredFile
from tests.delivery.largefiles.items import Item
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

SMALL = Item("small.txt", b"x" * 100)
BIG = Item("big.pdf", b"%PDF" + b"b" * (MB + MB // 2 - 4))  # exactly 1.5 MB


def _tenant(**config: Any) -> Any:
    return TenantFactory(large_file_config={"enabled": True, "max_size_mb": 1, **config})


def test_disabled_config_does_nothing() -> None:
    tenant = TenantFactory(large_file_config={"enabled": False, "max_size_mb": 1, "action": "reject"})
    decision = apply_policy(tenant=tenant, attachments=[SMALL, BIG])
    assert decision.keep == [SMALL, BIG]
    assert (decision.links, decision.warnings, decision.reject) == ([], [], None)


def test_empty_config_does_nothing() -> None:
    decision = apply_policy(tenant=TenantFactory(), attachments=[BIG])
    assert decision.keep == [BIG]
    assert (decision.links, decision.warnings, decision.reject) == ([], [], None)


def test_files_under_the_limit_are_untouched(tmp_path: Path) -> None:
    tenant = _tenant(action="rewrite", storage_url=f"file://{tmp_path}", public_base_url="http://testserver")
    at_limit = Item("exact.bin", b"e" * MB)
    decision = apply_policy(tenant=tenant, attachments=[SMALL, at_limit])
    assert decision.keep == [SMALL, at_limit]
    assert (decision.links, decision.warnings, decision.reject) == ([], [], None)
    assert not StoredFile.objects.exists()
    assert list(tmp_path.iterdir()) == []


def test_warn_keeps_the_file_with_one_warning_per_oversized_file() -> None:
    other = Item("video.mp4", b"v" * (2 * MB + 1))
    decision = apply_policy(tenant=_tenant(action="warn"), attachments=[SMALL, BIG, other])
    assert decision.keep == [SMALL, BIG, other]
    assert decision.warnings == [
        "attachment big.pdf is 1.5 MB, over the tenant limit of 1.0 MB",
        "attachment video.mp4 is 2.1 MB, over the tenant limit of 1.0 MB",  # rounded up, never down
    ]
    assert (decision.links, decision.reject) == ([], None)


def test_warn_is_the_default_action() -> None:
    decision = apply_policy(tenant=_tenant(), attachments=[BIG])
    assert decision.keep == [BIG]
    assert len(decision.warnings) == 1


def test_reject_names_the_file_its_size_and_the_limit() -> None:
    decision = apply_policy(tenant=_tenant(action="reject", max_size_mb=1.2), attachments=[SMALL, BIG])
    assert decision.reject == "attachment big.pdf is 1.5 MB, over the tenant limit of 1.2 MB"
    assert (decision.links, decision.warnings) == ([], [])


def test_rewrite_moves_the_file_to_storage_behind_a_working_link(tmp_path: Path) -> None:
    tenant = _tenant(action="rewrite", storage_url=f"file://{tmp_path}", public_base_url="http://testserver/",
                     file_ttl_days=3)
    before = timezone.now()
    decision = apply_policy(tenant=tenant, attachments=[SMALL, BIG])

    assert decision.keep == [SMALL]
    assert (decision.warnings, decision.reject) == ([], None)
    [link] = decision.links
    assert (link.filename, link.size) == ("big.pdf", len(BIG.content))
    assert link.url.startswith("http://testserver/files/")
    assert before + timedelta(days=3) <= link.expires_at <= timezone.now() + timedelta(days=3)

    stored = StoredFile.objects.get()
    assert (stored.tenant_id, stored.filename, stored.size, stored.expires_at) == (
        tenant.id, "big.pdf", len(BIG.content), link.expires_at)
    assert stored.key.startswith(f"{tenant.id}/")
    assert stored.key.endswith("/big.pdf")
    assert (tmp_path / stored.key).read_bytes() == BIG.content

    with override_settings(ROOT_URLCONF="tests.delivery.largefiles.urls"):
        response = Client().get(link.url.removeprefix("http://testserver"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == BIG.content  # type: ignore[attr-defined]


def test_rewrite_never_overwrites_a_file_of_the_same_name(tmp_path: Path) -> None:
    tenant = _tenant(action="rewrite", storage_url=f"file://{tmp_path}", public_base_url="http://testserver")
    first = apply_policy(tenant=tenant, attachments=[BIG]).links[0]
    second = apply_policy(tenant=tenant, attachments=[Item("big.pdf", b"2" * (2 * MB))]).links[0]
    assert first.url != second.url
    keys = sorted(StoredFile.objects.values_list("key", flat=True))
    assert len(set(keys)) == 2
    assert {(tmp_path / key).stat().st_size for key in keys} == {len(BIG.content), 2 * MB}


def test_rewrite_key_is_a_safe_name(tmp_path: Path) -> None:
    tenant = _tenant(action="rewrite", storage_url=f"file://{tmp_path}", public_base_url="http://testserver")
    apply_policy(tenant=tenant, attachments=[Item("../../etc/Relazione finale è.pdf", BIG.content)])
    stored = StoredFile.objects.get()
    assert stored.filename == "../../etc/Relazione finale è.pdf"
    assert stored.key.split("/")[-1] == "Relazione_finale_e.pdf"
    assert (tmp_path / stored.key).is_file()


def test_failed_upload_is_a_temporary_error_leaving_nothing_behind(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store's folder should be")
    tenant = _tenant(action="rewrite", storage_url=f"file://{blocked}", public_base_url="http://testserver")
    with pytest.raises(LargeFileError, match=r"attachment big\.pdf: upload to storage failed") as caught:
        apply_policy(tenant=tenant, attachments=[BIG])
    assert caught.value.permanent is False
    assert not StoredFile.objects.exists()


def test_invalid_stored_config_is_a_permanent_error() -> None:
    tenant = TenantFactory(large_file_config={"enabled": True, "action": "rewrite"})
    with pytest.raises(LargeFileError, match="storage_url is required") as caught:
        apply_policy(tenant=tenant, attachments=[BIG])
    assert caught.value.permanent is True


LINKS = [
    Link(filename="report <Q3>.pdf", size=1_300_000, url="https://files.example/a?x=1&y=2",
         expires_at=timezone.now().replace(year=2031, month=1, day=2, hour=3, minute=4)),
    Link(filename="b.zip", size=25 * MB, url="https://files.example/b", expires_at=timezone.now().replace(year=2032)),
]


def test_links_as_text() -> None:
    assert render_links_text(LINKS) == (
        "Files available for download until 2031-01-02 03:04 UTC:\n"
        "- report <Q3>.pdf (1.3 MB): https://files.example/a?x=1&y=2\n"
        "- b.zip (25.0 MB): https://files.example/b\n"
    )


def test_links_as_html_are_escaped() -> None:
    html = render_links_html(LINKS)
    assert html.startswith('<div class="mail-proxy-files"><p>Files available for download until 2031-01-02')
    assert '<li><a href="https://files.example/a?x=1&amp;y=2">report &lt;Q3&gt;.pdf</a> (1.3 MB)</li>' in html
    assert '<li><a href="https://files.example/b">b.zip</a> (25.0 MB)</li></ul></div>' in html
    assert "<Q3>" not in html


def test_no_links_render_nothing() -> None:
    assert render_links_text([]) == ""
    assert render_links_html([]) == ""


def test_line_breaks_in_a_name_stay_on_its_line() -> None:
    link = Link(filename="a\r\nb.pdf", size=MB, url="https://f/x", expires_at=timezone.now())
    assert render_links_text([link]).splitlines()[1] == "- a b.pdf (1.0 MB): https://f/x"
