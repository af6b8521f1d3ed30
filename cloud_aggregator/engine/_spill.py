"""In-flight transfers kept on disk instead of in memory: the intake's spill (bounded memory for many uploads).

`Overflow` keeps at most its budget of in-flight chunks in `broker.Assembler` (used only through its public
API); a chunk that does not fit goes to its transfer's `SpilledTransfer`, appended to a `SpillFile` (the
service: a file under ``ROOT/state/<job>/inflight/``, `Port.open_spill`). A transfer may so be *mixed*:
its first chunks in the assembler, the rest on disk. When its manifest is known and the disk holds every
chunk the assembler misses, those are fed to the assembler, which completes it (one blob in memory, for
the moment it is decoded and folded); nothing is dropped or asked for again. A transfer that starts when
the budget is full (or whose manifest, sent first, says it does not fit) lives on disk alone.

A spilled chunk is checked as the assembler checks its own: kept only when its SHA-256 (computed once, on
arrival) is the manifest's for its index; before the manifest is known, the newest two candidates per index
are kept; a blob on disk alone is handed over when every chunk is in and the whole SHA-256 matches
(computed while the chunks arrive in order, else in one pass at the end). Chunks come in order almost
always, so the file is the blob and is read back in one piece.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from broker import Assembler, TransferError
from schemas import TransferManifest

__all__ = ["Overflow", "SpillFile", "SpilledTransfer"]

# (manifest, blob, the SHA-256 of its tensor bytes if hashed on the way in); a memoryview: the assembler's blob, not copied
Done = tuple[TransferManifest, bytes | memoryview, str | None]
_DONE_REMEMBERED = 1024  # completed spilled transfers remembered, to ignore their duplicate chunks

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

    def held(self) -> set[int]:
        """The indexes of the chunks on disk that are the manifest's (empty while it is unknown)."""
        manifest = self.manifest
        if manifest is None:
            return set()
        return {i for i, c in self._chunks.items() if i < manifest.chunks and manifest.chunk_sha256[i] in c}

    def chunk(self, index: int) -> bytes:
        """Chunk `index` as the manifest names it (one of `held`)."""
        assert self.manifest is not None
        offset, length = self._chunks[index][self.manifest.chunk_sha256[index]]
        return self._file.read(offset, length)

    def add_manifest(self, manifest: TransferManifest) -> bytes | None:
        """Take the manifest (a different one under the same key replaces it); the blob if that completes it."""
        self.manifest = manifest
        for index, candidates in self._chunks.items():
            keep = manifest.chunk_sha256[index] if index < manifest.chunks else None
            for digest in [d for d in candidates if d != keep]:
                del candidates[digest]  # stale: its bytes stay in the file until the transfer ends
        return self._finish_if_complete()

    def add_chunk(self, index: int, data: bytes, digest: str | None = None) -> bytes | None:
        """Record chunk `index` (`digest`: its SHA-256 if known already); the blob if it completes the transfer
        (TransferError: an inconsistent manifest)."""
        if index < 0 or not data:
            return None
        digest = digest or hashlib.sha256(data).hexdigest()
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


class Overflow:
    """A memory budget over the intake's assembler, with the transfers (or their ends) that do not fit on disk."""

    def __init__(
        self,
        assembler: Assembler[str],
        budget: int,
        open_file: Callable[[], SpillFile],
        log: FilteringBoundLogger,
    ) -> None:
        self._assembler = assembler
        self._budget = budget
        self._open = open_file
        self._log = log
        self._spilled: dict[str, SpilledTransfer] = {}
        self._done: OrderedDict[str, None] = OrderedDict()

    def holds(self, key: str) -> bool:
        return key in self._spilled

    def add_chunk(self, key: str, round_: int, index: int, data: bytes, digest: str | None = None) -> Done | None:
        """A chunk into memory while the budget allows, else to disk; the transfer if it completes (TransferError:
        an inconsistent manifest). An error of the disk (`AggregatorError`) drops the chunk: asked for again."""
        spilled = self._spilled.get(key)
        if spilled is None:
            if key in self._done:
                return None  # a duplicate chunk of a spilled transfer that completed
            if self._assembler.buffered_bytes + len(data) <= self._budget:
                done = self._assembler.add_chunk(key, index, data, digest=digest)
                return None if done is None else (done.manifest, done.view, done.payload_sha256)
            spilled = self._spill(key, round_)
        blob = spilled.add_chunk(index, data, digest)
        return self._finished(key, spilled, blob) if blob is not None else self._merge(key, spilled)

    def takes_manifest(self, key: str, manifest: TransferManifest) -> bool:
        """Whether the manifest is this overflow's: its transfer is (partly) on disk, or it is announced too large
        for the budget before any chunk came (then the whole transfer goes to disk)."""
        if key in self._spilled:
            return True
        # Completed here before yet neither stored nor refused (the intake answers those first): taken again,
        # so its chunks are no longer duplicates.
        self._done.pop(key, None)
        fits = self._assembler.buffered_bytes + manifest.total_bytes <= self._budget
        return not (fits or key in self._assembler.pending)

    def add_manifest(self, key: str, round_: int, manifest: TransferManifest) -> Done | None:
        """The manifest of a transfer `takes_manifest` said is this overflow's; the transfer if it completes."""
        spilled = self._spilled.get(key) or self._spill(key, round_)
        mixed = key in self._assembler.pending
        if mixed:
            done = self._assembler.add_manifest(key, manifest)
            if done is not None:
                self.discard(key)
                return done.manifest, done.view, done.payload_sha256
        blob = spilled.add_manifest(manifest)
        if blob is not None:
            return self._finished(key, spilled, blob)
        return self._merge(key, spilled) if mixed else None

    def manifest(self, key: str) -> TransferManifest | None:
        spilled = self._spilled.get(key)
        return None if spilled is None else spilled.manifest

    def missing(self, key: str) -> list[int] | None:
        """The chunks of `key` neither in memory nor on disk (None: its manifest is unknown)."""
        spilled = self._spilled.get(key)
        if spilled is None:
            return self._assembler.missing(key)
        in_memory = self._assembler.missing(key)
        if in_memory is None:
            return spilled.missing()
        held = spilled.held()
        return [i for i in in_memory if i not in held]

    def discard(self, key: str) -> None:
        spilled = self._spilled.pop(key, None)
        if spilled is not None:
            spilled.discard()
        self._assembler.discard(key)

    def discard_rounds(self, upto: int | None) -> None:
        """Forget the spilled transfers of rounds up to `upto` (None: all)."""
        for key in [k for k, t in self._spilled.items() if upto is None or t.round <= upto]:
            self.discard(key)

    def _spill(self, key: str, round_: int) -> SpilledTransfer:
        spilled = SpilledTransfer(self._open, round_)
        self._spilled[key] = spilled
        self._log.info("transfer spilled to disk", key=key, buffered_bytes=self._assembler.buffered_bytes)
        return spilled

    def _merge(self, key: str, spilled: SpilledTransfer) -> Done | None:
        """A mixed transfer completes when the disk holds every chunk the assembler misses: fed to it then."""
        missing = self._assembler.missing(key)
        if missing is None or spilled.manifest is None or not set(missing) <= spilled.held():
            return None
        done = None
        for index in missing:
            done = self._assembler.add_chunk(key, index, spilled.chunk(index))
        self._finished(key, spilled, None)
        return None if done is None else (done.manifest, done.view, done.payload_sha256)

    def _finished(self, key: str, spilled: SpilledTransfer, blob: bytes | None) -> Done | None:
        spilled.discard()
        del self._spilled[key]
        self._done[key] = None
        while len(self._done) > _DONE_REMEMBERED:
            self._done.popitem(last=False)
        return None if blob is None or spilled.manifest is None else (spilled.manifest, blob, None)
