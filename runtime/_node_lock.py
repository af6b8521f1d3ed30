"""One service per node root: an exclusive lock on ``ROOT/state/service.lock`` for the process lifetime.

Two services started on one root (the same node identity, twice) would share its outbox or
checkpoints and take the broker session over from each other every few seconds. The second one must
not start: it finds the lock held and exits with a message naming the holder.

`fcntl.flock` is released by the kernel when the holder dies, however it dies (even SIGKILL), so a
crashed service never leaves a stale lock behind; the file's text (pid, service, node) is only there
to name the holder in that message. The descriptor is not inherited by the job scripts a service
starts (Python's descriptors are non-inheritable), so a script that outlives its service does not
keep the root locked.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from runtime._errors import NodeRootLockedError

__all__ = ["NodeRootLock", "lock_node_root"]

LOCK_FILE = "service.lock"


class NodeRootLock:
    """A held lock on a node root; `release()` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"NodeRootLock({str(self.path)!r}, held={self._fd is not None})"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the flock


def lock_node_root(root: Path, *, service: str, node: str) -> NodeRootLock:
    """Lock `root` for this process (creating ``ROOT/state`` if needed); NodeRootLockedError if another
    process holds it, OSError if the lock file cannot be opened."""
    state = Path(root) / "state"
    state.mkdir(parents=True, exist_ok=True)
    path = state / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise NodeRootLockedError(
            f"the node root {Path(root).resolve()} is already in use by {holder}: only one service may run "
            f"per node root (a second {service} for node {node} would take the first one's broker session over "
            f"and share its state). Stop that one first, or give this one its own --root.",
            path=path,
            holder=holder,
        ) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{service} (node {node}, pid {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
    return NodeRootLock(path, fd)
