"""Encryption of stored secrets (SMTP/IMAP passwords, callback credentials, signing secrets).

AES-256-GCM from `cryptography`. A stored value reads `gmp1:<key id>:<base64url(nonce+ciphertext)>`;
the key id lets several keys coexist, so a key can be rotated: the current key encrypts,
the current and the old keys (`MAIL_PROXY_ENCRYPTION_OLD_KEYS`) decrypt.
Clear text leaves this module only through `decrypt`, called right before a session opens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

PREFIX = "gmp1"
NONCE_BYTES = 12


class EncryptionKeyError(ValueError):
    """The configured key is missing or malformed."""


class DecryptionError(ValueError):
    """A stored secret cannot be opened with the configured keys."""


@dataclass(frozen=True)
class _Key:
    key_id: str
    aead: AESGCM

    def __repr__(self) -> str:  # never print key material
        return f"<encryption key {self.key_id}>"


def generate_key() -> str:
    """A new key as MAIL_PROXY_ENCRYPTION_KEY expects it: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def parse_key(text: str, *, name: str = "MAIL_PROXY_ENCRYPTION_KEY") -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(f"{name} is not valid base64") from None
    if len(raw) != 32:
        raise EncryptionKeyError(f"{name} must be base64 of 32 bytes, it decodes to {len(raw)}")
    return raw


def key_id_of(raw: bytes) -> str:
    return hashlib.sha256(b"mail-proxy key id:" + raw).hexdigest()[:8]


@lru_cache(maxsize=8)
def _keyring(current: str, old: tuple[str, ...]) -> tuple[_Key, dict[str, _Key]]:
    if not current:
        raise EncryptionKeyError("MAIL_PROXY_ENCRYPTION_KEY is not set")
    primary_raw = parse_key(current)
    primary = _Key(key_id_of(primary_raw), AESGCM(primary_raw))
    ring = {primary.key_id: primary}
    for index, text in enumerate(old):
        raw = parse_key(text, name=f"MAIL_PROXY_ENCRYPTION_OLD_KEYS[{index}]")
        key = _Key(key_id_of(raw), AESGCM(raw))
        ring.setdefault(key.key_id, key)
    return primary, ring


def _configured() -> tuple[_Key, dict[str, _Key]]:
    return _keyring(settings.MAIL_PROXY_ENCRYPTION_KEY, tuple(settings.MAIL_PROXY_ENCRYPTION_OLD_KEYS))


def current_key_id() -> str:
    return _configured()[0].key_id


def encrypt(plaintext: str) -> str:
    """Seal a secret for storage; an empty secret stays empty (nothing to protect)."""
    if plaintext == "":
        return ""
    primary, _ = _configured()
    nonce = os.urandom(NONCE_BYTES)
    sealed = primary.aead.encrypt(nonce, plaintext.encode("utf-8"), PREFIX.encode("ascii"))
    body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
    return f"{PREFIX}:{primary.key_id}:{body}"


def key_id_of_value(stored: str) -> str | None:
    parts = stored.split(":", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    return parts[1]


def decrypt(stored: str) -> str:
    if stored == "":
        return ""
    parts = stored.split(":", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        raise DecryptionError("stored secret is not in the mail-proxy encrypted format")
    _, key_id, body = parts
    _, ring = _configured()
    key = ring.get(key_id)
    if key is None:
        raise DecryptionError(
            f"stored secret was encrypted with key {key_id}, which is neither "
            "MAIL_PROXY_ENCRYPTION_KEY nor in MAIL_PROXY_ENCRYPTION_OLD_KEYS"
        )
    try:
        blob = base64.urlsafe_b64decode(body.encode("ascii"))
        plain = key.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], PREFIX.encode("ascii"))
    except (InvalidTag, binascii.Error, ValueError):
        raise DecryptionError(f"stored secret does not open with key {key_id}: wrong key or corrupted value") from None
    return plain.decode("utf-8")


def needs_reencryption(stored: str) -> bool:
    """True when a stored value was sealed with an old key (rotation has work to do)."""
    return stored != "" and key_id_of_value(stored) != current_key_id()
