"""Mosquitto's password file, written in-process (no `mosquitto_passwd -b`, whose command line shows
the password to anyone running `ps` while it runs).

Mosquitto 2.0's `$7$` line: ``user:$7$<iterations>$<base64 salt>$<base64 hash>`` where the hash is
PBKDF2-HMAC-SHA512 of the password over the raw 12-byte salt, 64 bytes long; standard base64 with
padding. mosquitto_passwd writes 101 iterations; the broker accepts any count >= 1 (it reads it from
the line), so more iterations cost an attacker with the file more and the broker only at each CONNECT.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping

SALT_BYTES = 12  # the broker refuses a `$7$` line whose salt is not exactly 12 bytes
HASH_BYTES = 64
# mosquitto_passwd's default is 101. A CONNECT checks the password once; 1000 rounds cost the broker
# well under a millisecond each and an offline guesser ten times more than the default.
ITERATIONS = 1000


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The `$7$...` hash mosquitto checks `password` against (a fresh random salt unless given)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, not {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise ValueError(f"the salt must be {SALT_BYTES} bytes, not {len(salt)}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def render_passwd(passwords: Mapping[str, str], *, iterations: int = ITERATIONS) -> str:
    """The password file for `passwords` (user -> password), one `user:$7$...` line per user."""
    lines = []
    for user, password in passwords.items():
        if not user or ":" in user or "\n" in user:
            raise ValueError(f"user name {user!r} cannot be written to a mosquitto password file")
        lines.append(f"{user}:{hash_password(password, iterations=iterations)}")
    return "\n".join(lines) + "\n"
