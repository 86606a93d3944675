from __future__ import annotations

import pytest
from django.test import override_settings

from tenants import crypto

KEY_A = crypto.generate_key()
KEY_B = crypto.generate_key()


def test_encrypted_value_names_its_key_and_hides_the_secret() -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_A):
        stored = crypto.encrypt("hunter2-smtp")
        assert stored.startswith(f"gmp1:{crypto.current_key_id()}:")
        assert "hunter2" not in stored
        assert crypto.decrypt(stored) == "hunter2-smtp"


def test_same_secret_encrypts_differently_each_time() -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_A):
        assert crypto.encrypt("x") != crypto.encrypt("x")


def test_old_key_still_decrypts_after_rotation() -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_A):
        stored = crypto.encrypt("pw")
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_B, MAIL_PROXY_ENCRYPTION_OLD_KEYS=[KEY_A]):
        assert crypto.decrypt(stored) == "pw"
        assert crypto.needs_reencryption(stored)
        assert not crypto.needs_reencryption(crypto.encrypt("pw"))


def test_wrong_key_fails_with_a_clear_error() -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_A):
        stored = crypto.encrypt("pw")
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_B), pytest.raises(crypto.DecryptionError) as info:
        crypto.decrypt(stored)
    assert "MAIL_PROXY_ENCRYPTION_OLD_KEYS" in str(info.value)
    assert "pw" not in str(info.value)


def test_tampered_value_is_refused() -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=KEY_A):
        stored = crypto.encrypt("pw")
        body = stored.rsplit(":", 1)[1]
        flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
        with pytest.raises(crypto.DecryptionError, match="wrong key or corrupted"):
            crypto.decrypt(stored.rsplit(":", 1)[0] + ":" + flipped)


@pytest.mark.parametrize("bad", ["not base64!!", "c2hvcnQ=", ""])
def test_malformed_key_is_refused(bad: str) -> None:
    with override_settings(MAIL_PROXY_ENCRYPTION_KEY=bad), pytest.raises(crypto.EncryptionKeyError):
        crypto.encrypt("pw")


def test_empty_secret_stays_empty() -> None:
    assert crypto.encrypt("") == ""
    assert crypto.decrypt("") == ""
