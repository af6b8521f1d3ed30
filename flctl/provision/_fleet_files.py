"""Editing a deployment's files one identity at a time (`flctl node add/rotate/remove`).

Every edit keeps the other identities' bytes as they were: the password file is changed by one line,
the ACL by one `user` block, and a file is replaced by writing a temporary file beside it (with its
final mode from the start) and renaming it over the old one, so a reader (the broker at SIGHUP, a
second flctl) sees the old file or the new one, never half of one. `deployment_lock` serialises the
read-modify-write of concurrent `flctl node` runs on the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from flctl._errors import FlctlError

LOCK_FILE = ".flctl-node.lock"
LOCK_TIMEOUT = 30.0
_LOCK_POLL = 0.05


def write_atomic(path: Path, data: bytes | str, mode: int) -> Path:
    """Replace `path` with `data`: a temporary file beside it, created with `mode`, flushed to disk and
    renamed over it (rename is atomic within a folder)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def deployment_lock(folder: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the deployment's lock (an exclusive `flock` on DIR/.flctl-node.lock) for the block; a
    FlctlError naming the lock file when another `flctl node` keeps it longer than `timeout` seconds.
    The kernel drops the lock when the process dies, so a crashed run leaves no stale lock."""
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise FlctlError(
                        f"another `flctl node` command holds {path} for more than {timeout:g}s; try again"
                    ) from None
                time.sleep(_LOCK_POLL)  # flock has no timed wait
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- the password file ---------------------------------------------------------------------------


def passwd_users(text: str) -> list[str]:
    """The user of each line of a mosquitto password file (blank and `#` lines skipped)."""
    return [line.split(":", 1)[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]


def passwd_set(text: str, user: str, hashed: str) -> str:
    """`text` with `user`'s line replaced by `user:hashed` (appended when it has none); every other line
    unchanged."""
    if not user or ":" in user or "\n" in user or "\n" in hashed:
        raise ValueError(f"user name {user!r} cannot be written to a mosquitto password file")
    lines = text.splitlines()
    new = f"{user}:{hashed}"
    found = [i for i, line in enumerate(lines) if line.split(":", 1)[0] == user]
    if found:
        lines[found[0]] = new
        lines = [line for i, line in enumerate(lines) if i not in found[1:]]
    else:
        lines.append(new)
    return "\n".join(lines) + "\n"


def passwd_remove(text: str, user: str) -> str:
    """`text` without `user`'s line(s); every other line unchanged."""
    kept = [line for line in text.splitlines() if line.split(":", 1)[0] != user]
    return "\n".join(kept) + "\n" if kept else ""


# -- the ACL -------------------------------------------------------------------------------------
# `render_acl` writes one block per named identity: "# <name>: <comment>", "user <name>", its lines,
# then a blank line; the `pattern` lines for every user come last, after the comment line below.
PATTERNS_HEADER = "# Every user"


def acl_users(text: str) -> list[str]:
    """The names of the ACL's `user` blocks, in order."""
    return [line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("user ")]


def _block_span(lines: list[str], user: str) -> tuple[int, int] | None:
    """[start, end) of `user`'s block: from its comment line (if just before) to the blank line after."""
    for i, line in enumerate(lines):
        if line.startswith("user ") and line.split(None, 1)[1].strip() == user:
            start = i - 1 if i > 0 and lines[i - 1].startswith(f"# {user}:") else i
            end = i + 1
            while end < len(lines) and lines[end].strip() and not lines[end].startswith(("user ", "pattern ")):
                end += 1
            if end < len(lines) and not lines[end].strip():
                end += 1  # the blank line that ends it
            return start, end
    return None


def acl_block(text: str, user: str) -> list[str]:
    """`user`'s block of the ACL `text` (as `acl_remove` would cut it); ValueError when it has none."""
    lines = text.splitlines()
    span = _block_span(lines, user)
    if span is None:
        raise ValueError(f"the ACL has no `user {user}` block")
    return lines[span[0] : span[1]]


def acl_insert(text: str, block: list[str]) -> str:
    """`text` with `block` inserted before the `pattern` section (after the last `user` block)."""
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(PATTERNS_HEADER)), None)
    if at is None:
        at = next((i for i, line in enumerate(lines) if line.startswith("pattern ")), len(lines))
    return "\n".join([*lines[:at], *block, *lines[at:]]) + "\n"


def acl_remove(text: str, user: str) -> str:
    """`text` without `user`'s block (unchanged when it has none)."""
    lines = text.splitlines()
    span = _block_span(lines, user)
    if span is None:
        return text
    return "\n".join(lines[: span[0]] + lines[span[1] :]) + "\n"
