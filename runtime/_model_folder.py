"""Who may write a Model url: the one rule both model writers (edge and cloud) apply, and its lock.

Two jobs may name the same Model and run at the same time on the same nodes (issue 8). A Model url's
folder belongs to the job whose model it holds (the ``job`` its model metadata names). A job writes
its final model at the url when the folder holds no model or a model of the same job (a re-run
replaces its own model); when it holds another job's model, the job writes to
``<url>/jobs/<job>/`` instead (`MODEL_JOBS_FOLDER`), and says so where its model went. So no job ever
replaces or half-overwrites another job's model, and none is lost silently.

Deciding and replacing happen under `model_lock`, an exclusive ``flock`` on ``.<name>.lock`` beside the
folder (kept there, never deleted: deleting it would let two writers lock two different files). The
lock only serialises writers on one machine: a Model url on a network filesystem shared by several
nodes is not covered.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MODEL_JOBS_FOLDER", "job_model_folder", "model_lock"]

MODEL_JOBS_FOLDER = "jobs"
# A save of a big SavedModel takes seconds; minutes of waiting mean a writer is stuck, not busy.
_LOCK_TIMEOUT = 300.0


def job_model_folder(folder: Path, job: str, owner: str | None) -> Path:
    """Where `job` writes its model, given `owner`: the job whose model `folder` holds now (None: no model)."""
    if not job or "/" in job or job in {".", ".."}:
        raise ValueError(f"{job!r} cannot name a model folder: a job name is needed")
    if owner is None or owner == job:
        return folder
    return folder / MODEL_JOBS_FOLDER / job


@contextlib.contextmanager
def model_lock(folder: Path, *, timeout: float = _LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive lock of the model folder `folder` (``.<name>.lock`` beside it); TimeoutError after `timeout` s.

    flock has no timeout of its own and no event to wait on, so a busy lock is polled (a few ms at
    first, at most 0.2 s apart). flock locks belong to an open file, so two threads of one process
    exclude each other as two processes do, and a writer that dies releases its lock with its files.
    The holder removes the lock file when it is done, so nothing is left beside the model; a waiter
    that then gets the lock of the removed file sees that the name no longer leads to it, and retries.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"another save has held {path} for {timeout:g} s") from None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.2)
            continue
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder had removed: lock the current one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while holding it: see above
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
