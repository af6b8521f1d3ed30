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
delivered: a restarted edge never trains a delivered round again. Cleared with the job.

What an aggregator's ack means for an entry is `Deliveries`' business (`_deliveries.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_trainer._errors import OutboxError
from runtime import TMP_PREFIX, fsync_dir, write_atomic
from schemas import TransferManifest, check_name

__all__ = ["Outbox", "OutboxEntry"]

_BLOB = ".blob"
_META = ".json"
_DELIVERED = "delivered.json"


@dataclass(frozen=True)
class OutboxEntry:
    """One stored update: its manifest (job, uid, round, sender, transfer, hashes) and where its blob is.

    Entries are listed by `round` and found by `transfer` (their files' stem, their key in `Deliveries`), so
    those two are at hand; everything else is read from the manifest."""

    manifest: TransferManifest
    blob_path: Path

    @property
    def round(self) -> int:
        return self.manifest.round

    @property
    def meta_path(self) -> Path:
        return self.blob_path.with_suffix(_META)

    @property
    def transfer(self) -> str:
        return self.manifest.transfer


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
        m = entry.manifest
        if self.delivered_round(m.job, m.uid) >= m.round:
            return
        path = self.record_path(m.job)
        try:
            write_atomic(path, json.dumps({"uid": m.uid, "round": m.round}).encode())
        except OSError as exc:
            raise OutboxError(f"cannot record the delivery of round {m.round} in {path}: {exc}") from exc

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

    def read(self, entry: OutboxEntry, chunks: Sequence[int] | None = None) -> bytes:
        """The entry's blob, checked against its manifest: the whole blob's SHA-256, or with `chunks` only
        those chunks' hashes (a resend of a few chunks does not hash a large blob again; the chunks not
        resent are the aggregator's already, verified there)."""
        try:
            blob = entry.blob_path.read_bytes()
        except OSError as exc:
            raise OutboxError(f"outbox entry {entry.transfer} cannot be read: {exc}") from exc
        m = entry.manifest
        if chunks is None:
            intact = hashlib.sha256(blob).hexdigest() == m.sha256
        else:
            view = memoryview(blob)
            intact = len(blob) == m.total_bytes and all(
                0 <= i < m.chunks
                and hashlib.sha256(view[i * m.chunk_size : (i + 1) * m.chunk_size]).hexdigest() == m.chunk_sha256[i]
                for i in chunks
            )
        if not intact:
            what = "its SHA-256 does" if chunks is None else f"chunks {list(chunks)} do"
            raise OutboxError(f"outbox entry {entry.transfer} is corrupt: {what} not match its manifest")
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
