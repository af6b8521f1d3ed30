"""Model versions under a Model url: the one layout both model writers (edge and cloud) follow, and its lock.

A job never overwrites another job's model (issue 9). Every save of a final model is a *version*,
named after the job run and the round (`version_name`: ``<job>-<uid8>-r<round>``), kept in its own
folder under the url, and the url's ``latest`` pointer names the newest one:

    <url>/<model files>, model.json      the latest version's files (hard links: no second copy)
    <url>/latest -> versions/<version>   a relative symlink, replaced atomically
    <url>/versions/<version>/            every version: its model files and its model.json

So a script that reads the model where Sedna's does (``/model/model.ckpt``) reads the latest model,
a reader that needs one exact version reads ``<url>/versions/<version>/`` (what the job's and the
worker's ``modelPath`` name), and ``<url>/latest/`` always leads to a whole version. For a url that
names a file (``/model/final.ckpt``), the folder holding that file plays the url's part.

Retention: each save keeps the newest `keep_versions()` versions of its url (``FL_MODEL_KEEP_VERSIONS``
in the node service's environment, default `DEFAULT_KEEP_VERSIONS`) and never removes the one
``latest`` names, so disks do not fill.

A version folder is built in ``versions/.tmp-<pid>.<random>`` and renamed into place
(`commit_version`); deciding, committing, pointing and pruning all happen under `model_lock`, an
exclusive ``flock`` on ``.<name>.lock`` beside the url's folder. A ``.tmp-`` folder seen under the lock
is a crashed writer's leftover (`remove_stale_versions`). The lock only serialises writers on one
machine: a Model url on a network filesystem shared by several nodes is not covered.

Both writers run that sequence through `write_version`, so its order is written once; they differ only
in the step that replaces the url's own files (the edge swaps the whole folder, the cloud replaces file
by file), which they pass in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from runtime._files import TMP_PREFIX, fsync_dir, fsync_tree
from schemas import WorkerEnv

__all__ = [
    "DEFAULT_KEEP_VERSIONS",
    "MODEL_LATEST",
    "MODEL_VERSIONS_FOLDER",
    "commit_version",
    "keep_versions",
    "latest_version",
    "list_versions",
    "model_lock",
    "new_version_folder",
    "prune_versions",
    "remove_stale_versions",
    "set_latest",
    "version_metadata",
    "version_name",
    "write_version",
]

MODEL_VERSIONS_FOLDER = "versions"
MODEL_LATEST = "latest"
DEFAULT_KEEP_VERSIONS = 5
_MAX_KEEP = 10_000
# A save of a big SavedModel takes seconds; minutes of waiting mean a writer is stuck, not busy.
_LOCK_TIMEOUT = 300.0
_OLD = ".old-"


def version_name(job: str, uid: str | None, round_: int) -> str:
    """``<job>-<first 8 of uid>-r<round>`` (``<job>-r<round>`` without a uid): one name per job run and round."""
    if not job or "/" in job or job.startswith(".") or job in {MODEL_VERSIONS_FOLDER, MODEL_LATEST}:
        raise ValueError(f"{job!r} cannot name a model version: a job name is needed")
    if round_ < 0:
        raise ValueError(f"round {round_} cannot name a model version: expected a round >= 0")
    run = "".join(c for c in (uid or "") if c.isalnum())[:8]
    return f"{job}-{run}-r{round_}" if run else f"{job}-r{round_}"


def keep_versions(env: Mapping[str, str] | None = None) -> int:
    """How many versions a save keeps per url: ``FL_MODEL_KEEP_VERSIONS`` (an integer >= 1), else the default."""
    raw = (os.environ if env is None else env).get(WorkerEnv.MODEL_KEEP_VERSIONS, "").strip()
    if not raw:
        return DEFAULT_KEEP_VERSIONS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_KEEP:
        raise ValueError(
            f"{WorkerEnv.MODEL_KEEP_VERSIONS}={raw!r}: expected a whole number of versions from 1 to {_MAX_KEEP}"
        )
    return value


# -- building and committing a version (under model_lock) -----------------------------------------


def new_version_folder(folder: Path) -> Path:
    """An empty ``<folder>/versions/.tmp-<pid>.<random>`` to build a version in (then `commit_version`)."""
    versions = folder / MODEL_VERSIONS_FOLDER
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f"{TMP_PREFIX}{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def commit_version(tmp: Path, version: str) -> Path:
    """Rename a built version folder into ``versions/<version>`` (fsynced first); return its path.

    A version of that name already there (the same job run saving the same round again, e.g. after a
    restart) is replaced whole: moved aside, the new one renamed in, the old one removed.
    """
    fsync_tree(tmp)
    target = tmp.parent / version
    old = tmp.parent / f"{_OLD}{version}.{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(tmp.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


def set_latest(folder: Path, version: str) -> None:
    """Point ``<folder>/latest`` at ``versions/<version>`` (a relative symlink, swapped with one rename)."""
    tmp = folder / f"{TMP_PREFIX}{MODEL_LATEST}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    os.symlink(f"{MODEL_VERSIONS_FOLDER}/{version}", tmp)
    os.replace(tmp, folder / MODEL_LATEST)
    fsync_dir(folder)


def latest_version(folder: Path) -> str | None:
    """The version ``<folder>/latest`` names, None when there is no pointer (or it is not ours)."""
    try:
        target = os.readlink(folder / MODEL_LATEST)
    except OSError:
        return None
    head, _, name = target.partition("/")
    return name if head == MODEL_VERSIONS_FOLDER and name and "/" not in name else None


def remove_stale_versions(folder: Path) -> None:
    """Undo what a crashed writer left in ``versions/`` and beside ``latest`` (call under the lock: every
    such folder is built and committed while the lock is held, so one seen then is a dead writer's): a
    version moved aside for a replacement that never came is put back; the rest is removed."""
    for link in folder.glob(f"{TMP_PREFIX}{MODEL_LATEST}.*"):
        link.unlink(missing_ok=True)
    versions = folder / MODEL_VERSIONS_FOLDER
    if not versions.is_dir():
        return
    for old in versions.glob(f"{_OLD}*"):
        # A version moved aside to be replaced (`commit_version`): put back when its replacement never came.
        original = versions / old.name.removeprefix(_OLD).rsplit(".", 1)[0]
        if original.name and not original.name.startswith(".") and not original.exists():
            os.rename(old, original)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for path in versions.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def version_metadata(version_folder: Path) -> dict[str, object] | None:
    """The version's metadata: its ``model.json`` (edge) or the one ``<model>.json`` naming a job (cloud)."""
    candidates = [version_folder / "model.json", *sorted(version_folder.glob("*.json"))]
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("job"), str):
            return data
    return None


def _created(version_folder: Path) -> tuple[str, float]:
    """Sort key, oldest first: the ``created`` time the metadata records, then the folder's mtime."""
    meta = version_metadata(version_folder) or {}
    created = meta.get("created") or meta.get("savedAt")
    try:
        mtime = version_folder.stat().st_mtime
    except OSError:
        mtime = 0.0
    return (created if isinstance(created, str) else "", mtime)


def list_versions(folder: Path) -> list[Path]:
    """The version folders under ``<folder>/versions``, newest first."""
    versions = folder / MODEL_VERSIONS_FOLDER
    if not versions.is_dir():
        return []
    found = [p for p in versions.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: (*_created(p), p.name), reverse=True)


def prune_versions(folder: Path, keep: int, *, protect: frozenset[str] = frozenset()) -> list[str]:
    """Remove all but the newest `keep` versions (never the one ``latest`` names, nor `protect`); return
    the names removed, oldest last. Call under the lock."""
    spared = {*protect, latest_version(folder)}
    removed = []
    for path in list_versions(folder)[max(keep, 1) :]:
        if path.name in spared:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    if removed:
        fsync_dir(folder / MODEL_VERSIONS_FOLDER)
    return removed


# -- the whole sequence ----------------------------------------------------------------------------


def write_version(
    folder: Path,
    version: str,
    *,
    fill: Callable[[Path], None],
    replace_url: Callable[[], None],
    keep: int,
    recover: Callable[[], None] | None = None,
    replaces_latest: bool = False,
) -> Path:
    """Write `version` under the Model url folder `folder` and make it the latest; return its folder.

    Under `model_lock(folder)`, in this order: `recover()` (the writer's own leftovers, e.g. its
    temporary files or an url folder a crash left aside), then `remove_stale_versions`; `fill(tmp)` puts
    the version's files into an empty ``versions/.tmp-`` folder (hard links: the files are written
    before the lock), which `commit_version` fsyncs and renames to ``versions/<version>``; then
    `replace_url()` replaces the url's own files with the version's (each change atomic); then
    ``latest`` is pointed at the version (`set_latest`), unless `replaces_latest` says the step already
    moved it in with the url's files; last, `prune_versions` keeps the newest `keep`.

    A failure or a crash at any step leaves whole versions: before the commit, only a ``.tmp-`` folder
    the next write removes; after it, the new version whole beside a url and a ``latest`` that still
    hold the previous one (nothing is pruned then). The error propagates and the lock is released.
    """
    with model_lock(folder):
        if recover is not None:
            recover()  # first: it may put back the url folder itself
        folder.mkdir(exist_ok=True)  # versions/ lives in it
        remove_stale_versions(folder)
        building = new_version_folder(folder)
        fill(building)
        committed = commit_version(building, version)
        # Crash here: the version is whole, the url still holds the previous latest (a consistent state).
        replace_url()
        if not replaces_latest:
            set_latest(folder, version)
        prune_versions(folder, keep, protect=frozenset({version}))
    return committed


# -- the lock ---------------------------------------------------------------------------------------


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
