"""The aggregator's durable state under the node root: spooled updates and per-round checkpoints.

Layout (one folder per job, ``ROOT/state/<job>/``)::

    spool/<round>/<node>-<transfer>.blob   every accepted update, stored before it is folded and acknowledged
    spool/<round>/secagg.json              a secure aggregation round's protocol record (dropped with the spool)
    inflight/<random>.part                 an in-flight transfer spilled to disk (`open_spill`); not durable:
                                           deleted when it completes, is dropped, or the service starts again
    global-<r>.blob                        the global model of the last closed round r (a weights blob; the
                                           asynchronous mode keeps the last max_staleness + 1 rounds)
    server-<r>.npz                         the strategy's server state after round r (FedAdam's moments, ...)
    checkpoint.json                        `engine.Checkpoint`: which round closed, what was folded, the JobStatus

Beside the jobs' folders, ``ROOT/state/_kept/`` is `KeptStore`'s (the kept copy of the retained state; no
job name has an underscore).

Every file is written to a temporary sibling, fsynced, renamed over its name (``os.replace``) and its
folder fsynced, so a reader (the aggregator restarted after kill -9) sees either the old or the new
file, never half of one. Spooled updates are stored in groups (`store_updates`, group commit: every file
of the group written, then each fsynced and renamed, then each folder fsynced once); each gets an
explicit, strictly increasing mtime in the order given, which is the order they were folded in, so the
spool's listing (`spooled_updates`, by mtime) refolds them in that order even when a group is written
within one tick of the filesystem's clock. The order of a round's commit is: global blob, server state, checkpoint (the
commit point: it names round r, so the files of round r are read with it), older rounds' files, (publish),
spool deleted; a crash anywhere in between leaves a state the restart can resume from.

`StateStore` is the file side; the job engine reaches it only through the `Port` (`store_update`,
`spooled_updates`, `read_spooled_update`, `drop_spool`, `save_checkpoint`, `load_checkpoint`, `load_global`,
`save_secagg`, `load_secagg`, `clear_state`).
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from cloud_aggregator._errors import StateError
from cloud_aggregator.engine import Checkpoint, SpooledUpdate
from runtime import TMP_PREFIX, fsync_dir, write_atomic

__all__ = ["FileSpill", "SpoolItem", "StateStore"]

_DROPPED = ".drop-"  # a spool folder set aside for deletion (never a round's name: those are digits)
_SETTLE_SECONDS = 30.0  # how long clearing a job's state waits for its spool deletions still running
_SECAGG_RECORD = "secagg.json"  # not a spooled update's name (`_SPOOL_NAME`): the spool's listing skips it
_SPOOL_NAME = re.compile(r"^(?P<node>[a-z0-9]([a-z0-9.-]*[a-z0-9])?)-(?P<transfer>[0-9a-f]{8,64})\.blob$")


class FileSpill:
    """One in-flight transfer's chunks in an unlinked-on-delete file: appended, read back with pread.

    The bytes live in the page cache, not in the service's memory, so ten concurrent uploads of a large
    model cost the aggregator a bounded amount of memory (`engine.SpilledTransfer`)."""

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
        except OSError as exc:
            raise StateError(f"cannot spill a transfer to {folder}: {exc}") from exc
        self._fd: int | None = fd
        self.path = Path(name)

    def append(self, data: bytes) -> None:
        try:
            os.write(self._open(), data)
        except OSError as exc:
            raise StateError(f"cannot write the spilled transfer {self.path.name}: {exc}") from exc

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._open(), length, offset)
        except OSError as exc:
            raise StateError(f"cannot read the spilled transfer {self.path.name}: {exc}") from exc
        if len(data) != length:
            raise StateError(f"the spilled transfer {self.path.name} is short: {len(data)} of {length} bytes")
        return data

    def delete(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)

    def _open(self) -> int:
        if self._fd is None:
            raise StateError(f"the spilled transfer {self.path.name} was deleted")
        return self._fd


@dataclass(frozen=True)
class SpoolItem:
    """One update to store in the spool of `round` (the round that folds it)."""

    job: str
    round: int
    node: str
    transfer: str
    blob: bytes | memoryview


class StateStore:
    """The files under ``ROOT/state``; every OSError becomes a `StateError`."""

    def __init__(self, root: Path) -> None:
        self.base = root / "state"
        self._drops: list[threading.Thread] = []  # spool deletions running in the background
        self._mtime_lock = threading.Lock()
        self._last_mtime = 0  # the newest spooled update's mtime (ns): the next one gets a later one

    def job_dir(self, job: str) -> Path:
        return self.base / job

    def _spool(self, job: str, round_: int) -> Path:
        return self.job_dir(job) / "spool" / str(round_)

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        error = self.store_updates([SpoolItem(job, round_, node, transfer, blob)])[0]
        if error is not None:
            raise error

    def store_updates(self, items: Sequence[SpoolItem]) -> list[StateError | None]:
        """Store `items` durably as one group; per item, None (stored and durable) or why it was not.

        One fsync per file still, but issued after every file of the group is written: the filesystem's
        journal commits once for the group instead of once per update, and each folder is fsynced once."""
        errors: list[StateError | None] = [None] * len(items)
        written: list[tuple[int, int, Path, Path]] = []  # (item, fd, temporary, final path)
        for i, item in enumerate(items):
            path = self._spool(item.job, item.round) / f"{item.node}-{item.transfer}.blob"
            tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
            fd = -1
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                _write_all(fd, memoryview(item.blob))
                mtime = self._next_mtime()
                os.utime(fd, ns=(mtime, mtime))  # the fold order (see the module's docstring)
                written.append((i, fd, tmp, path))
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                errors[i] = self._store_error(item, exc)
        folders: set[Path] = set()
        for i, fd, tmp, path in written:
            try:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                folders.update((path.parent, path.parent.parent))  # the round's folder may be new itself
            except OSError as exc:
                errors[i] = self._store_error(items[i], exc)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)
        return errors

    def _next_mtime(self) -> int:
        with self._mtime_lock:
            self._last_mtime = max(time.time_ns(), self._last_mtime + 1)
            return self._last_mtime

    @staticmethod
    def _store_error(item: SpoolItem, exc: OSError) -> StateError:
        return StateError(f"cannot store the update of {item.node} for round {item.round}: {exc}")

    def open_spill(self, job: str) -> FileSpill:
        """A new file for an in-flight transfer of `job` (``inflight/``; `clear_spills` empties the folder)."""
        return FileSpill(self.job_dir(job) / "inflight")

    def clear_spills(self) -> None:
        """Delete every job's spilled transfers (best effort): one in flight when the service stopped is asked for again."""
        for folder in self.base.glob("*/inflight"):
            shutil.rmtree(folder, ignore_errors=True)

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        folder = self._spool(job, round_)
        out: list[SpooledUpdate] = []
        try:
            entries = sorted(folder.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name)) if folder.is_dir() else []
            for path in entries:
                match = _SPOOL_NAME.match(path.name)
                if match is None:
                    continue  # temporaries of an interrupted write, foreign files
                out.append(SpooledUpdate(match["node"], match["transfer"], path.read_bytes()))
        except OSError as exc:
            raise StateError(f"cannot read the spool of round {round_}: {exc}") from exc
        return out

    def read_spooled_update(self, job: str, round_: int, node: str, transfer: str) -> memoryview:
        """The stored blob, memory-mapped read-only: pages come in as they are read and, being clean and
        file-backed, the OS can drop them again, so reading m updates tensor by tensor keeps only what is
        in use resident. (Deleting the file later is safe: the mapping keeps its inode.)"""
        path = self._spool(job, round_) / f"{node}-{transfer}.blob"
        try:
            with path.open("rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise StateError(f"cannot read the spooled update of {node} for round {round_}: {exc}") from exc
        return memoryview(mapped)

    def save_secagg(self, job: str, round_: int, data: bytes) -> None:
        """The round's secure aggregation record, beside its spool (so it goes when the round's spool goes)."""
        path = self._spool(job, round_) / _SECAGG_RECORD
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise StateError(f"cannot store the secure aggregation record of round {round_}: {exc}") from exc

    def load_secagg(self, job: str, round_: int) -> bytes | None:
        path = self._spool(job, round_) / _SECAGG_RECORD
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError as exc:
            raise StateError(f"cannot read the secure aggregation record of round {round_}: {exc}") from exc

    def drop_spool(self, job: str, upto: int) -> None:
        """Delete the spool of every round <= `upto` (those rounds are in a checkpoint now).

        Each such round's folder is renamed aside at once and deleted by a background thread: removing a
        round's 100 update files took about 0.2 s of the logic thread between two rounds at 100 edges. A
        folder set aside and not yet deleted is no round's spool any more; one a crash left goes at the next
        drop."""
        spool = self.job_dir(job) / "spool"
        doomed: list[Path] = []
        try:
            if not spool.is_dir():
                return
            for folder in spool.iterdir():
                if folder.name.startswith(_DROPPED):
                    doomed.append(folder)
                elif folder.name.isdigit() and int(folder.name) <= upto:
                    aside = spool / f"{_DROPPED}{folder.name}-{secrets.token_hex(4)}"
                    folder.rename(aside)
                    doomed.append(aside)
        except OSError as exc:
            raise StateError(f"cannot clean the spool: {exc}") from exc
        if doomed:
            thread = threading.Thread(target=_remove_all, args=(doomed,), name=f"spool-drop-{job}", daemon=True)
            self._drops = [t for t in self._drops if t.is_alive()] + [thread]
            thread.start()

    def settle(self, timeout: float = _SETTLE_SECONDS) -> bool:
        """Wait (at most `timeout` seconds) until the spool deletions started so far are done; whether they are."""
        deadline = time.monotonic() + timeout
        for thread in self._drops:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._drops = [t for t in self._drops if t.is_alive()]
        return not self._drops

    def save_checkpoint(
        self, checkpoint: Checkpoint, global_blob: bytes, server_state: bytes | None = None, *, keep_globals: int = 1
    ) -> None:
        folder = self.job_dir(checkpoint.job)
        r = checkpoint.closed_round
        try:
            write_atomic(folder / f"global-{r}.blob", global_blob)
            if server_state is not None:
                write_atomic(folder / f"server-{r}.npz", server_state)
            write_atomic(folder / "checkpoint.json", checkpoint.to_json())
            # Only after the checkpoint names round r: the files of older rounds (a crash before this
            # leaves them, harmless, and the next commit removes them). The asynchronous mode keeps the
            # global blobs of its last `keep_globals` rounds: updates trained from them are rebased onto them.
            for prefix, suffix in (("global-", ".blob"), ("server-", ".npz")):
                for old in folder.glob(f"{prefix}*{suffix}"):
                    number = old.name[len(prefix) : -len(suffix)]
                    if not number.isdigit():
                        continue
                    if prefix == "global-":
                        stale = not r - max(1, keep_globals) < int(number) <= r
                    else:
                        stale = int(number) != r or server_state is None
                    if stale:
                        old.unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(f"cannot write the checkpoint of round {r}: {exc}") from exc

    def load_global(self, job: str, round_: int) -> bytes | None:
        path = self.job_dir(job) / f"global-{round_}.blob"
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError as exc:
            raise StateError(f"cannot read the global model of round {round_}: {exc}") from exc

    def load_server_state(self, job: str, round_: int) -> bytes | None:
        path = self.job_dir(job) / f"server-{round_}.npz"
        try:
            return path.read_bytes() if path.is_file() else None
        except OSError as exc:
            raise StateError(f"cannot read the server state of round {round_}: {exc}") from exc

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        folder = self.job_dir(job)
        path = folder / "checkpoint.json"
        try:
            if not path.is_file():
                return None
            checkpoint = Checkpoint.model_validate_json(path.read_bytes())
            blob = (folder / f"global-{checkpoint.closed_round}.blob").read_bytes()
        except (OSError, ValidationError) as exc:
            raise StateError(f"cannot read the checkpoint of job {job}: {exc}") from exc
        return checkpoint, blob

    def clear_state(self, job: str) -> None:
        self.settle()  # a spool deletion still running would race this one
        try:
            shutil.rmtree(self.job_dir(job), ignore_errors=False)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"cannot clear the state of job {job}: {exc}") from exc


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _remove_all(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)  # what stays (an error) goes at the next drop of the job
