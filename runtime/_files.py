"""Files that survive a crash: the outbox, the spool, checkpoints and saved models are written this way.

A write goes to a temporary sibling (``.tmp-<name>``), is fsynced, renamed over the target, and the
folder is fsynced, so after a crash a reader finds the old file or the new one, never half of one.
Readers skip (and may delete) names starting with `TMP_PREFIX`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TMP_PREFIX", "fsync_dir", "write_atomic"]

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new names, renames) durable; a folder that cannot be opened is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is as durable as they allow
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Make every file under `root` and `root`'s own entries durable (a model folder before it is renamed
    into place: after a crash the new name holds whole files, never empty ones)."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)


def write_atomic(path: Path, data: bytes | memoryview, *, sync_dir: bool = True) -> None:
    """Write `data` to `path`: temp sibling, fsync, rename, then (by default) fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
