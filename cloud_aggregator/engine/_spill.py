"""An in-flight transfer kept on disk instead of in memory: the intake's spill (bounded memory for many uploads).

The intake keeps at most its memory budget of in-flight chunks in `broker.Assembler`; a transfer that does
not fit goes to a `SpilledTransfer`, whose chunks are appended to a `SpillFile` (the service: a file under
``ROOT/state/<job>/inflight/``, `Port.open_spill`). Its checks are the assembler's: a chunk is kept only when
its SHA-256 (computed once, on arrival) is the manifest's for its index; before the manifest is known, the
newest two candidates per index are kept; the blob is handed over when every chunk is in and the whole
SHA-256 matches (computed while the chunks arrive in order, else in one pass at the end). Chunks come in
order almost always, so the file is the blob and is read back in one piece.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from broker import TransferError
from schemas import TransferManifest

__all__ = ["SpillFile", "SpilledTransfer"]

_CANDIDATES_PER_INDEX = 2  # as the assembler: a stale retained copy and the right one may both be in


class SpillFile(Protocol):
    """Bytes on disk for one in-flight transfer: appended, read back, deleted."""

    def append(self, data: bytes) -> None: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def delete(self) -> None: ...


class SpilledTransfer:
    """One transfer's chunks in a `SpillFile`, checked as `broker.Assembler` checks them."""

    def __init__(self, open_file: Callable[[], SpillFile], round_: int) -> None:
        self.round = round_
        self.manifest: TransferManifest | None = None
        # Chunks dropped from memory when the transfer was moved here: ask for them at once (`lost`).
        self.lost = False
        self._open = open_file
        self._file = open_file()
        self._end = 0
        # index -> sha256 -> (offset, length) in the file, newest last
        self._chunks: dict[int, dict[str, tuple[int, int]]] = {}
        # the whole blob's hash, over the chunks appended in index order from 0 (their digests in `_hashed`)
        self._running = hashlib.sha256()
        self._hashed: list[str] = []
        self._hashed_end = 0  # the file's size when the last hashed chunk was appended

    def missing(self) -> list[int] | None:
        """Chunk indexes still missing, or None while the manifest is unknown."""
        if self.manifest is None:
            return None
        return [i for i in range(self.manifest.chunks) if self.manifest.chunk_sha256[i] not in self._chunks.get(i, {})]

    def add_manifest(self, manifest: TransferManifest) -> bytes | None:
        """Take the manifest (a different one under the same key replaces it); the blob if that completes it."""
        self.manifest = manifest
        for index, candidates in self._chunks.items():
            keep = manifest.chunk_sha256[index] if index < manifest.chunks else None
            for digest in [d for d in candidates if d != keep]:
                del candidates[digest]  # stale: its bytes stay in the file until the transfer ends
        return self._finish_if_complete()

    def add_chunk(self, index: int, data: bytes) -> bytes | None:
        """Record chunk `index`; the blob if it completes the transfer (TransferError: an inconsistent manifest)."""
        if index < 0 or not data:
            return None
        digest = hashlib.sha256(data).hexdigest()
        manifest = self.manifest
        if manifest is not None and (index >= manifest.chunks or manifest.chunk_sha256[index] != digest):
            return None  # stale or corrupt: the transfer waits for the right one
        candidates = self._chunks.setdefault(index, {})
        if digest in candidates:
            return None  # a duplicate (QoS 1 is at-least-once)
        if manifest is None and len(candidates) >= _CANDIDATES_PER_INDEX:
            del candidates[next(iter(candidates))]
        candidates[digest] = (self._end, len(data))
        self._file.append(data)
        self._end += len(data)
        if index == len(self._hashed) and self._end - len(data) == self._hashed_end:
            self._running.update(data)
            self._hashed.append(digest)
            self._hashed_end = self._end
        return self._finish_if_complete()

    def discard(self) -> None:
        self._file.delete()
        self._chunks = {}

    def _finish_if_complete(self) -> bytes | None:
        manifest = self.manifest
        if manifest is None or self.missing():
            return None
        places = [self._chunks[i][manifest.chunk_sha256[i]] for i in range(manifest.chunks)]
        total, contiguous = 0, True
        for offset, length in places:
            contiguous = contiguous and offset == total
            total += length
        if contiguous:
            blob = self._file.read(0, total)
        else:  # chunks resent out of order: written in order once more, then read in one piece
            ordered = self._open()
            for offset, length in places:
                ordered.append(self._file.read(offset, length))
            blob = ordered.read(0, total)
            ordered.delete()
        whole = self._running.hexdigest() if self._hashed == list(manifest.chunk_sha256) else None
        self.discard()
        if total != manifest.total_bytes or (whole or hashlib.sha256(blob).hexdigest()) != manifest.sha256:
            raise TransferError(
                f"transfer {manifest.transfer}: every chunk matches its hash but the blob does not match "
                "the manifest's size or SHA-256 (an inconsistent manifest)"
            )
        return blob
