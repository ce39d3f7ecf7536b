"""API keys as the store hands them out: the record (never the key itself), the hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from storage.tables import DISPLAY_PREFIX_CHARS, ApiKeyRow

KEY_PREFIX = "evk_"


@dataclass
class KeyRecord:
    """An API key as it may be shown: never the key itself, only its display prefix."""

    id: str
    name: str
    user_id: str
    prefix: str
    is_admin: bool
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "user_id": self.user_id,
                "prefix": self.prefix, "is_admin": self.is_admin,
                "created_at": self.created_at, "revoked_at": self.revoked_at}


def new_key() -> str:
    """A fresh key: "evk_" and 256 random bits, url-safe base64.

    The display prefix is what people type to revoke a key (`evolora keys revoke PREFIX`),
    so it must not begin with "-": a command line would read it as an option. One draw in
    64 does; those are drawn again (this drops under 0.03 bits of the 256).
    """
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return KEY_PREFIX + secret


def hash_key(plaintext: str) -> str:
    """sha256 hex of an API key.

    A fast hash is the right tool here, unlike for passwords: keys are 256-bit random tokens,
    so there is nothing to brute-force or look up in a dictionary, and a slow KDF (bcrypt,
    argon2) would only add latency to every request.
    """
    return hashlib.sha256(plaintext.encode()).hexdigest()


def display_prefix(plaintext: str) -> str:
    """The 8 characters after "evk_": enough to tell keys apart, far too few to guess one."""
    return plaintext[len(KEY_PREFIX):len(KEY_PREFIX) + DISPLAY_PREFIX_CHARS]


def key_record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(id=row.id, name=row.name, user_id=row.user_id, prefix=row.prefix,
                     is_admin=bool(row.is_admin), created_at=row.created_at,
                     revoked_at=row.revoked_at)
