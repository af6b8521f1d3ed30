"""Writing the deployment's files: private folders, files created with their final mode, mosquitto's passwd."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from broker.mosquitto import find_mosquitto_passwd
from flctl._errors import InputError

SECRET = 0o600
PUBLIC = 0o644
PRIVATE_DIR = 0o700


def mkdir(path: Path) -> Path:
    """`path` (and its parents) as a 0700 folder, also when it existed with a wider mode."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def write(path: Path, data: bytes | str, mode: int) -> Path:
    """Create `path` with `mode` from the start (no moment with wider permissions), then write it."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, raw)
    finally:
        os.close(fd)
    return path


def write_passwd(path: Path, passwords: dict[str, str]) -> None:
    """mosquitto's password file for `passwords` (user -> password), hashed by mosquitto_passwd itself."""
    binary = find_mosquitto_passwd()
    if binary is None:
        raise InputError(
            "no mosquitto_passwd: install mosquitto (apt-get install mosquitto) or set MOSQUITTO_PASSWD_BIN"
        )
    write(path, b"", SECRET)  # 0600 before a hash is in it; mosquitto_passwd keeps the mode
    for user, password in passwords.items():
        # -b puts the password on mosquitto_passwd's command line for the moment it runs (the plan's
        # choice: the file format is mosquitto's own). Its output is discarded unseen.
        result = subprocess.run(
            [binary, "-b", str(path), user, password],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise InputError(f"mosquitto_passwd failed for user {user} (exit code {result.returncode})")
    os.chmod(path, SECRET)
