from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import Error
from django.test import override_settings

from mailproxy import env
from tenants.checks import check_secrets
from tenants.crypto import generate_key

ROOT = Path(__file__).resolve().parent.parent


def test_env_bool_refuses_anything_but_true_or_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMP_X", "ture")
    with pytest.raises(env.ConfigError, match="GMP_X"):
        env.env_bool("GMP_X", False)
    monkeypatch.setenv("GMP_X", "TRUE")
    assert env.env_bool("GMP_X", False) is True


def test_env_int_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMP_MAX_BATCH", "lots")
    with pytest.raises(env.ConfigError, match="GMP_MAX_BATCH must be a whole number"):
        env.env_int("GMP_MAX_BATCH", 1000)


def test_env_secret_reads_the_file_variant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    monkeypatch.delenv("GMP_SOME_TOKEN", raising=False)
    monkeypatch.setenv("GMP_SOME_TOKEN_FILE", str(secret))
    assert env.env_secret("GMP_SOME_TOKEN") == "from-a-file"


def test_env_list_splits_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMP_L", " a, b ,,c ")
    assert env.env_list("GMP_L") == ["a", "b", "c"]


def _ids(problems: list[Error]) -> set[str]:
    return {problem.id for problem in problems if problem.id}


def test_check_refuses_production_without_encryption_key() -> None:
    with override_settings(DEBUG=False, MAIL_PROXY_ENCRYPTION_KEY=""):
        assert "mailproxy.E002" in _ids(check_secrets())


def test_check_refuses_placeholder_secrets() -> None:
    with override_settings(DEBUG=False, SECRET_KEY="change-me", GMP_API_TOKEN="changeme"):
        assert {"mailproxy.E003", "mailproxy.E004"} <= _ids(check_secrets())


def test_check_refuses_a_malformed_key_even_in_debug() -> None:
    with override_settings(DEBUG=True, MAIL_PROXY_ENCRYPTION_KEY="short"):
        assert "mailproxy.E001" in _ids(check_secrets())


def test_check_passes_with_real_secrets() -> None:
    with override_settings(DEBUG=False, MAIL_PROXY_ENCRYPTION_KEY=generate_key(),
                           SECRET_KEY="k" * 10 + "9f8e7d6c5b4a3210fedcba9876543210abcdefgh",
                           GMP_API_TOKEN="Zx81kq0PmsN2vT6wYb4Rj7cL9dHf3gAeUoIi5Kp"):
        assert check_secrets() == []


def _run_check(extra_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": "/usr/bin:/bin", "GMP_DATA_DIR": str(tmp_path), **extra_env}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=60, check=False,
    )


def test_production_database_without_key_refuses_to_start(tmp_path: Path) -> None:
    result = _run_check({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
                         "DJANGO_SECRET_KEY": "x" * 50}, tmp_path)
    assert result.returncode != 0
    assert "MAIL_PROXY_ENCRYPTION_KEY is not set" in result.stderr


def test_embedded_default_needs_nothing_and_keeps_its_secrets(tmp_path: Path) -> None:
    result = _run_check({}, tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("secret_key", "encryption.key", "api_token"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    key = (tmp_path / "encryption.key").read_text()
    assert _run_check({}, tmp_path).returncode == 0
    assert (tmp_path / "encryption.key").read_text() == key
