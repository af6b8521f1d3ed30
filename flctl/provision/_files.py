"""Writing the deployment's files: private folders, files created with their final mode, mosquitto's passwd."""

from __future__ import annotations

import os
from pathlib import Path

from flctl.provision._passwd import render_passwd

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
    """mosquitto's password file for `passwords` (user -> password), hashed here (`_passwd`): no
    password is ever on a command line, and mosquitto_passwd need not be installed."""
    write(path, render_passwd(passwords), SECRET)
