"""The edge's outbox: every update it sends is on disk until the aggregator confirms it stored it.

Disk layout, per job (``ROOT/state/<job>/outbox/``)::

    <transfer>.blob     the weights blob, exactly as published (chunked by its manifest)
    <transfer>.json     its `TransferManifest` (the same bytes are published as the manifest again)

Both are written to a temporary sibling, fsynced and renamed; the blob first, the manifest last, then
the folder is fsynced: a ``.json`` is the commit mark, so a crash leaves either a whole entry or an
orphan blob / temporary file that `Outbox.entries` removes.

Beside the folder, ``ROOT/state/<job>/delivered.json`` (``{"uid": ..., "round": r}``) records the newest
round of the job run whose update (round 0: the init) the aggregator confirmed it stored. It is written
(crash-safe) before the confirmed entry is deleted, so after a restart at any point either the entry is
still there (sent again; the aggregator answers "already stored") or the record says the round is
delivered: a restarted edge never trains a delivered round again (issue 7). Cleared with the job.

`Deliveries` is the logic thread's bookkeeping of the entries not confirmed yet: whether a publish of
an entry is under way (the uploader thread works on it), when the ack timer of each runs out, and what
an `UpdateAck` means for it. It is pure (a clock is injected), so it is tested without a broker:

- ``accepted: true``                  -> the entry is done: delete it;
- ``accepted: false`` + ``missing``   -> resend exactly those chunks (same transfer), then the manifest;
- ``accepted: false``, no ``missing`` -> refused for good: delete it, say why;
- no ack within ``ack_timeout`` after the last publish of the entry -> republish its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError

from edge_trainer._errors import EdgeTrainerError
from runtime import TMP_PREFIX, fsync_dir, write_atomic
from schemas import TransferManifest, UpdateAck, check_name

__all__ = ["AckOutcome", "Deliveries", "Delivery", "Outbox", "OutboxEntry", "OutboxError"]

_BLOB = ".blob"
_META = ".json"
_DELIVERED = "delivered.json"


class OutboxError(EdgeTrainerError):
    """An outbox entry cannot be written or read back intact."""


@dataclass(frozen=True)
class OutboxEntry:
    """One stored update: its manifest (job, uid, round, sender, transfer, hashes) and where its blob is."""

    manifest: TransferManifest
    blob_path: Path

    @property
    def job(self) -> str:
        return self.manifest.job

    @property
    def uid(self) -> str:
        return self.manifest.uid

    @property
    def round(self) -> int:
        return self.manifest.round

    @property
    def transfer(self) -> str:
        return self.manifest.transfer

    @property
    def meta_path(self) -> Path:
        return self.blob_path.with_suffix(_META)


class Outbox:
    """The outbox folders under ``ROOT/state``. Thread-safe in the sense the service needs: the uploader
    thread writes and reads entries, the logic thread lists and removes them; no two touch one file at once
    except a remove racing a read, which the reader sees as OutboxError."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def folder(self, job: str) -> Path:
        return self.state_dir / check_name(job, "job name") / "outbox"

    def record_path(self, job: str) -> Path:
        """The job's delivery record (next to its outbox folder, not in it: the folder holds entries only)."""
        return self.state_dir / check_name(job, "job name") / _DELIVERED

    def mark_delivered(self, entry: OutboxEntry) -> None:
        """Record durably that the aggregator stored `entry` (call before `remove`); OutboxError if it cannot.

        Keeps the newest round of the entry's run: a late confirmation of an older round lowers nothing. A
        record of another run (uid) is replaced.
        """
        if self.delivered_round(entry.job, entry.uid) >= entry.round:
            return
        path = self.record_path(entry.job)
        try:
            write_atomic(path, json.dumps({"uid": entry.uid, "round": entry.round}).encode())
        except OSError as exc:
            raise OutboxError(f"cannot record the delivery of round {entry.round} in {path}: {exc}") from exc

    def delivered_round(self, job: str, uid: str) -> int:
        """The newest round of run `uid` whose update (0: the init) the aggregator confirmed; -1 for none.

        A missing or unreadable record, or one of another run, is no delivery (the worst case is the old
        behaviour: a round trained again, which the aggregator counts once).
        """
        try:
            record = json.loads(self.record_path(job).read_bytes())
        except (OSError, ValueError):
            return -1
        if not isinstance(record, dict) or record.get("uid") != uid:
            return -1
        round_ = record.get("round")
        return round_ if isinstance(round_, int) and not isinstance(round_, bool) and round_ >= 0 else -1

    def put(self, manifest: TransferManifest, blob: bytes) -> OutboxEntry:
        """Store `blob` under its manifest durably (temp, fsync, rename; manifest last). OutboxError if not."""
        folder = self.folder(manifest.job)
        blob_path = folder / f"{manifest.transfer}{_BLOB}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(blob_path, blob, sync_dir=False)
            write_atomic(blob_path.with_suffix(_META), manifest.to_json(), sync_dir=False)
            fsync_dir(folder)
        except OSError as exc:
            raise OutboxError(f"cannot store the {manifest.kind} of round {manifest.round} in {folder}: {exc}") from exc
        return OutboxEntry(manifest, blob_path)

    def entries(self, job: str) -> list[OutboxEntry]:
        """The complete entries of `job`, oldest round first; leftovers of an interrupted write are removed."""
        folder = self.folder(job)
        if not folder.is_dir():
            return []
        found: list[OutboxEntry] = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(TMP_PREFIX):
                path.unlink(missing_ok=True)
            elif path.suffix == _BLOB and not path.with_suffix(_META).exists():
                path.unlink(missing_ok=True)  # the write stopped before its manifest: never published
            elif path.suffix == _META:
                blob_path = path.with_suffix(_BLOB)
                try:
                    manifest = TransferManifest.model_validate_json(path.read_bytes())
                except (OSError, ValidationError):
                    manifest = None
                if manifest is None or not blob_path.exists() or manifest.transfer != path.stem:
                    path.unlink(missing_ok=True)
                    blob_path.unlink(missing_ok=True)
                    continue
                found.append(OutboxEntry(manifest, blob_path))
        return sorted(found, key=lambda e: (e.round, e.manifest.created_at))

    def read(self, entry: OutboxEntry) -> bytes:
        """The entry's blob, checked against its manifest's SHA-256."""
        try:
            blob = entry.blob_path.read_bytes()
        except OSError as exc:
            raise OutboxError(f"outbox entry {entry.transfer} cannot be read: {exc}") from exc
        if hashlib.sha256(blob).hexdigest() != entry.manifest.sha256:
            raise OutboxError(f"outbox entry {entry.transfer} is corrupt: its SHA-256 does not match its manifest")
        return blob

    def remove(self, entry: OutboxEntry) -> None:
        """Delete an entry (manifest first: without it the blob is an orphan, removed on the next listing)."""
        entry.meta_path.unlink(missing_ok=True)
        entry.blob_path.unlink(missing_ok=True)

    def clear(self, job: str) -> None:
        """Delete every entry and the delivery record of `job` (the job is gone or replaced by a new run)."""
        with contextlib.suppress(OSError):
            self.record_path(job).unlink(missing_ok=True)
        folder = self.folder(job)
        if folder.is_dir():
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()


# -- the logic thread's bookkeeping ----------------------------------------------------------------


class AckOutcome(StrEnum):
    IGNORED = "ignored"  # not ours, an earlier run, or an entry already done
    ACCEPTED = "accepted"  # stored by the aggregator: delete the entry
    RESEND = "resend"  # publish the missing chunks, then the manifest
    BUSY = "busy"  # chunks are missing but a publish of the entry is under way: it will tell
    REFUSED = "refused"  # refused for good: delete the entry


@dataclass
class Delivery:
    """One outbox entry the aggregator has not confirmed yet."""

    entry: OutboxEntry
    run_id: str
    publishing: bool = True
    deadline: float | None = None  # when to republish the manifest; None while publishing
    incomplete: bool = False  # the last publish was not acknowledged by the broker in time
    resends: int = 0
    missing: list[int] = field(default_factory=list)


class Deliveries:
    """Unconfirmed outbox entries by (job, transfer); all methods run on the logic thread."""

    def __init__(self, ack_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if ack_timeout <= 0:
            raise ValueError(f"ack_timeout {ack_timeout} must be > 0")
        self.ack_timeout = ack_timeout
        self._clock = clock
        self._items: dict[tuple[str, str], Delivery] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, entry: OutboxEntry, run_id: str) -> Delivery:
        """Track `entry`; a publish of it is about to start (`published` arms its timer)."""
        delivery = Delivery(entry, run_id)
        self._items[(entry.job, entry.transfer)] = delivery
        return delivery

    def get(self, job: str, transfer: str) -> Delivery | None:
        return self._items.get((job, transfer))

    def of_job(self, job: str) -> list[Delivery]:
        return [d for (j, _), d in self._items.items() if j == job]

    def rounds(self, job: str, uid: str) -> set[int]:
        """Rounds of `job` run `uid` whose update (or init, round 0) is in the outbox."""
        return {d.entry.round for d in self.of_job(job) if d.entry.uid == uid}

    def remove(self, job: str, transfer: str) -> Delivery | None:
        return self._items.pop((job, transfer), None)

    def drop_job(self, job: str) -> list[Delivery]:
        gone = self.of_job(job)
        for d in gone:
            del self._items[(job, d.entry.transfer)]
        return gone

    def start_publish(self, delivery: Delivery) -> None:
        delivery.publishing = True
        delivery.deadline = None

    def published(self, job: str, transfer: str, *, complete: bool) -> Delivery | None:
        """A publish of the entry ended (`complete`: the broker acknowledged all of it): arm the ack timer."""
        delivery = self.get(job, transfer)
        if delivery is None:
            return None
        delivery.publishing = False
        delivery.incomplete = not complete
        delivery.deadline = self._clock() + self.ack_timeout
        return delivery

    def on_ack(self, ack: UpdateAck) -> tuple[AckOutcome, Delivery | None]:
        """What `ack` means for its entry (the entry is forgotten when it is accepted or refused)."""
        delivery = self.get(ack.job, ack.transfer)
        if delivery is None or delivery.entry.uid != ack.uid or delivery.entry.round != ack.round:
            return AckOutcome.IGNORED, delivery
        if ack.accepted:
            self.remove(ack.job, ack.transfer)
            return AckOutcome.ACCEPTED, delivery
        if not ack.missing:
            self.remove(ack.job, ack.transfer)
            return AckOutcome.REFUSED, delivery
        missing = sorted({i for i in ack.missing if 0 <= i < delivery.entry.manifest.chunks})
        if delivery.publishing:
            return AckOutcome.BUSY, delivery
        delivery.missing = missing
        return AckOutcome.RESEND, delivery

    def next_deadline(self) -> float | None:
        deadlines = [d.deadline for d in self._items.values() if d.deadline is not None and not d.publishing]
        return min(deadlines) if deadlines else None

    def due(self) -> list[Delivery]:
        """Entries whose ack did not come within the timeout of their last publish."""
        now = self._clock()
        return [d for d in self._items.values() if not d.publishing and d.deadline is not None and d.deadline <= now]

    def rearm(self, delivery: Delivery) -> None:
        delivery.deadline = self._clock() + self.ack_timeout
