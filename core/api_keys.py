"""API keys: ``sk_live_`` + 32 random characters, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import re
import secrets
import string

PREFIX = "sk_live_"
_ALPHABET = string.ascii_letters + string.digits
KEY_PATTERN = re.compile(r"^sk_live_[A-Za-z0-9]{32}$")


def new_api_key() -> str:
    return PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(32))


def hash_api_key(key: str) -> str:
    # Keys carry 190 bits of entropy, so a fast hash is enough (no salt/KDF needed).
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """A stable, non-secret name for the key that logs and audit records may carry."""
    return "key_" + hash_api_key(key)[:16]


def is_well_formed(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))
