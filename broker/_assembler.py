"""Receiving chunked transfers: the manifest and the chunks in any order, every hash verified, memory bounded.

`Assembler` takes the manifest and the chunks of each transfer under a key of the receiver's choosing
(any hashable: the topic prefix `transfer_key(topic)`, or a tuple such as (round, node, transfer)). A
chunk is kept only if its SHA-256 matches the manifest's entry for its index (once both are known): a
mismatching chunk may be a stale retained one, so it is dropped and the transfer waits for the right
one. The blob is handed over (`CompletedTransfer`) only when every chunk is present, verified and the
sizes add up to the manifest's. Memory is bounded: at most `max_bytes` buffered and `max_transfers` incomplete
transfers; beyond that the oldest incomplete transfer is evicted with a warning.

Each chunk is hashed exactly once, when it arrives, and written once into its transfer's `ChunkStore`
(`broker._chunkstore`): a complete transfer is a read-only view on that store (`CompletedTransfer.view`), decoded by `schemas.decode_weights`
without another copy. With a `spill_dir`, a transfer larger than `spill_bytes` is written to an unlinked
file instead of memory (bounded by `max_spill_bytes` on disk), and handed over as a view on its mmap.

The whole blob's SHA-256 is checked too, by default (`verify_blob_sha256`), fed chunk by chunk as they arrive
(no extra pass over a joined blob): a manifest whose blob hash contradicts its chunk hashes (a buggy or
hostile sender) never completes, so what a node's ledger and the residency audit record as the blob's
hash is the blob's. It costs the receiver a second SHA-256 over the data (every chunk already matched its
own hash, and a weights blob's tensors carry their own SHA-256): `verify_blob_sha256=False` saves it where
the sender is trusted (measured in benchmarks/transfer.py).

Duplicates (QoS 1 redelivery, retained messages re-sent on every resubscribe) of a transfer completed
recently are recognised by key and hash and ignored, so they neither complete it twice nor pile up as
incomplete transfers. A key is meant to carry one transfer (update keys contain a random transfer id);
if a *different* transfer later reuses a completed key, chunks identical to the old one's that arrive
before its manifest are taken for duplicates, and the receiver has to ask for them again.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Generic, TypeVar

import pydantic
from structlog.typing import FilteringBoundLogger

from broker._chunkstore import ChunkStore, Piece
from broker._errors import TransferError
from runtime import get_logger
from schemas import TopicError, TransferManifest, WireError

__all__ = ["Assembler", "CompletedTransfer", "chunk_index", "manifest_from_payload", "transfer_key"]

_KEY_RE = re.compile(r"^(?P<key>.+)/(?:manifest|chunks/(?P<index>\d+))$")
# Candidates kept per chunk index while the manifest is unknown (a stale retained copy and the
# right one may both arrive before it).
_CANDIDATES_PER_INDEX = 2

K = TypeVar("K", bound=Hashable)


def transfer_key(topic: str) -> str:
    """The key of the transfer a manifest or chunk topic belongs to: the topic before ``/manifest`` or
    ``/chunks/<i>``. Raises `schemas.TopicError` for any other topic."""
    match = _KEY_RE.match(topic)
    if match is None:
        raise TopicError(topic, "not a transfer manifest or chunk topic (…/manifest or …/chunks/<i>)")
    return match.group("key")


def chunk_index(topic: str) -> int | None:
    """The chunk index of a chunk topic, None for a manifest topic; TopicError for any other topic."""
    match = _KEY_RE.match(topic)
    if match is None:
        raise TopicError(topic, "not a transfer manifest or chunk topic (…/manifest or …/chunks/<i>)")
    index = match.group("index")
    return None if index is None else int(index)


def _check_manifest(manifest: TransferManifest) -> str | None:
    """Why the manifest is inconsistent, or None."""
    expected = math.ceil(manifest.total_bytes / manifest.chunk_size)
    if manifest.chunks != expected:
        return f"chunks is {manifest.chunks} but totalBytes {manifest.total_bytes} / chunkSize {manifest.chunk_size} needs {expected}"
    if len(manifest.chunk_sha256) != manifest.chunks:
        return f"chunkSha256 has {len(manifest.chunk_sha256)} entries for {manifest.chunks} chunks"
    return None


def manifest_from_payload(payload: bytes) -> TransferManifest:
    """Parse and check a manifest message; raise `schemas.WireError` saying what is wrong."""
    if not payload:
        raise WireError("transfer manifest", "empty payload (a deleted retained manifest)")
    try:
        manifest = TransferManifest.model_validate_json(payload)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise WireError("transfer manifest", f"not a valid TransferManifest: {problems}") from exc
    problem = _check_manifest(manifest)
    if problem is not None:
        raise WireError(f"transfer manifest {manifest.transfer}", problem)
    return manifest


@dataclass(frozen=True)
class CompletedTransfer(Generic[K]):
    """A verified blob: every chunk matched its hash (and, with `verify_blob_sha256`, the whole SHA-256).

    `view` is the blob itself, read-only, with no copy (in memory, or an mmap of a spilled file): hand it to
    `schemas.decode_weights`. `blob` is a ``bytes`` copy of it, made on first use, for code that needs bytes.
    """

    key: K
    manifest: TransferManifest
    view: memoryview = field(repr=False)
    # With the Assembler's `payload_at`: the SHA-256 of the blob from that offset, hashed as the chunks came
    payload_sha256: str | None = None

    @cached_property
    def blob(self) -> bytes:
        return self.view.tobytes()


@dataclass
class _Pending:
    store: ChunkStore
    manifest: TransferManifest | None = None
    # index -> verified chunk (manifest known) or candidates by sha256, newest last (manifest unknown)
    chunks: dict[int, Piece] = field(default_factory=dict)
    candidates: dict[int, OrderedDict[str, Piece]] = field(default_factory=dict)
    size: int = 0  # bytes in memory, as last accounted
    spilled: int = 0  # bytes on disk, as last accounted


class Assembler(Generic[K]):
    """Reassembles chunked transfers received in any order, verifying every hash, with bounded memory.

    Not thread-safe: feed it from the one thread that handles the inbox.
    """

    def __init__(
        self,
        max_bytes: int = 512 * 1024 * 1024,
        max_transfers: int = 256,
        log: FilteringBoundLogger | None = None,
        *,
        spill_dir: Path | None = None,
        spill_bytes: int = 64 * 1024 * 1024,
        max_spill_bytes: int = 16 * 1024 * 1024 * 1024,
        verify_blob_sha256: bool = True,
        payload_at: Callable[[memoryview], int | None] | None = None,
        background_hashing: bool = False,
    ) -> None:
        if max_bytes < 1 or max_transfers < 1 or spill_bytes < 1 or max_spill_bytes < 1:
            raise ValueError("max_bytes, max_transfers, spill_bytes and max_spill_bytes must be >= 1")
        self.max_bytes = max_bytes
        self.max_transfers = max_transfers
        self.spill_dir = spill_dir
        self.spill_bytes = spill_bytes
        self.max_spill_bytes = max_spill_bytes
        self.verify_blob_sha256 = verify_blob_sha256
        self.payload_at = payload_at
        self.background_hashing = background_hashing  # the blob's running hashes off the caller's thread
        self._log = log.bind(component="assembler") if log is not None else get_logger(component="assembler")
        self._pending: OrderedDict[K, _Pending] = OrderedDict()  # oldest first
        self._buffered = 0
        self._spilled = 0
        # Recently completed transfers, to recognise duplicates (QoS 1 redelivery, retained re-delivery).
        self._completed: OrderedDict[K, TransferManifest] = OrderedDict()
        self._completed_max = 4 * max_transfers

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    @property
    def spilled_bytes(self) -> int:
        """Bytes of incomplete transfers held in spill files."""
        return self._spilled

    @property
    def pending(self) -> list[K]:
        """Keys of incomplete transfers, oldest first."""
        return list(self._pending)

    def missing(self, key: K) -> list[int] | None:
        """Chunk indexes still missing for `key`, or None if its manifest is unknown or it is not pending."""
        pending = self._pending.get(key)
        if pending is None or pending.manifest is None:
            return None
        return [i for i in range(pending.manifest.chunks) if i not in pending.chunks]

    def add_manifest(self, key: K, manifest: TransferManifest) -> CompletedTransfer[K] | None:
        """Record the manifest of `key`; return the transfer if it completes it. TransferError if the
        manifest is inconsistent or larger than `max_bytes`."""
        problem = _check_manifest(manifest)
        limit = self.max_bytes if self.spill_dir is None else max(self.max_bytes, self.max_spill_bytes)
        if problem is None and manifest.total_bytes > limit:
            problem = f"totalBytes {manifest.total_bytes} exceeds this receiver's limit of {limit}"
        if problem is not None:
            raise TransferError(f"transfer {manifest.transfer} at {key}: {problem}")
        done = self._completed.get(key)
        if done is not None and done.transfer == manifest.transfer and done.sha256 == manifest.sha256:
            self._log.debug("duplicate manifest of a completed transfer ignored", key=key, transfer=manifest.transfer)
            return None
        if done is not None:
            del self._completed[key]  # a new transfer under a used key: stop treating its chunks as duplicates
        pending = self._pending.get(key)
        if pending is None:
            pending = self._new(key)
        elif pending.manifest is not None:
            if pending.manifest.sha256 == manifest.sha256 and pending.manifest.chunk_sha256 == manifest.chunk_sha256:
                return None  # duplicate
            self._log.warning(
                "manifest replaced: a different transfer under the same key",
                key=key,
                old=pending.manifest.transfer,
                new=manifest.transfer,
            )
            # Verified chunks of the old manifest become candidates for the new one (their digests are known).
            for index, piece in pending.chunks.items():
                pending.candidates.setdefault(index, OrderedDict())[piece.digest] = piece
            pending.chunks = {}
        pending.manifest = manifest
        if self.spill_dir is not None and manifest.total_bytes > self.spill_bytes:
            pending.store.spill(self.spill_dir)  # the rest of this large blob goes straight to its file
            self._account(pending)
        for index, candidates in list(pending.candidates.items()):
            if index < manifest.chunks and manifest.chunk_sha256[index] in candidates:
                pending.chunks[index] = candidates.pop(manifest.chunk_sha256[index])
            # A stale candidate's bytes stay in the append-only store until the transfer ends (counted).
            if candidates:
                self._log.info(
                    "stale chunks dropped: hash does not match the manifest",
                    key=key,
                    index=index,
                    dropped=len(candidates),
                )
        pending.candidates = {}
        return self._finish_if_complete(key, pending)

    def add_chunk(self, key: K, index: int, data: bytes, *, digest: str | None = None) -> CompletedTransfer[K] | None:
        """Record chunk `index` of `key`; return the transfer if it completes it. A chunk that does not
        match the manifest's hash is dropped (the transfer keeps waiting for the right one).

        The chunk is hashed here once, whatever comes later (the manifest, a replaced manifest, the end);
        not at all when the caller passes its SHA-256 (hex) as `digest`, having hashed it for another
        purpose already (the aggregator's residency ledger): that digest is trusted as the chunk's."""
        if index < 0 or not data:
            return None  # an empty retained payload is a deleted chunk
        known = self._pending.get(key)
        if known is not None and index in known.chunks:
            return None  # a duplicate of a verified chunk (QoS 1 is at-least-once): not hashed again
        digest = digest or hashlib.sha256(data).hexdigest()
        if self._is_completed_duplicate(key, index, digest):
            return None
        pending = self._pending.get(key) or self._new(key)
        manifest = pending.manifest
        if manifest is None:
            self._add_candidate(key, pending, index, data, digest)
            return None
        if index >= manifest.chunks:
            self._log.warning("chunk index beyond the manifest dropped", key=key, index=index, chunks=manifest.chunks)
        elif index in pending.chunks:
            pass  # duplicate (QoS 1 is at-least-once)
        elif digest != manifest.chunk_sha256[index]:
            self._log.info("chunk dropped: hash does not match the manifest (stale or corrupt)", key=key, index=index)
        else:
            pending.chunks[index] = pending.store.append(index, data, digest)
            self._account(pending)
            completed = self._finish_if_complete(key, pending)
            if completed is None:
                self._enforce_limits(keep=key)
            return completed
        return None

    def discard(self, key: K) -> None:
        """Forget an incomplete transfer (e.g. its round closed)."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._buffered -= pending.size
            self._spilled -= pending.spilled
            pending.store.close()

    def discard_where(self, predicate: Callable[[K], bool]) -> list[K]:
        """Forget every incomplete transfer whose key matches (e.g. all of a job, or of a round); return their keys."""
        keys = [key for key in self._pending if predicate(key)]
        for key in keys:
            self.discard(key)
        return keys

    # -- helpers ---------------------------------------------------------------------------------

    def _is_completed_duplicate(self, key: K, index: int, digest: str) -> bool:
        done = self._completed.get(key)
        if done is None or key in self._pending or index >= done.chunks:
            return False
        return digest == done.chunk_sha256[index]

    def _add_candidate(self, key: K, pending: _Pending, index: int, data: bytes, digest: str) -> None:
        """Keep a chunk whose manifest is unknown: the newest few per index, by hash."""
        candidates = pending.candidates.setdefault(index, OrderedDict())
        if digest in candidates:
            return
        candidates[digest] = pending.store.append(index, data, digest)
        while len(candidates) > _CANDIDATES_PER_INDEX:
            candidates.popitem(last=False)  # forgotten; its bytes stay counted in the store
        self._account(pending)
        self._enforce_limits(keep=key)

    def _new(self, key: K) -> _Pending:
        pending = _Pending(
            ChunkStore(
                hash_blob=self.verify_blob_sha256, payload_at=self.payload_at, background=self.background_hashing
            )
        )
        self._pending[key] = pending
        self._enforce_limits(keep=key)
        return pending

    def _account(self, pending: _Pending) -> None:
        """Bring the totals up to date with `pending`'s store, spilling it once it outgrows `spill_bytes`."""
        store = pending.store
        if self.spill_dir is not None and store.in_memory > self.spill_bytes:
            store.spill(self.spill_dir)
        self._buffered += store.in_memory - pending.size
        self._spilled += store.on_disk - pending.spilled
        pending.size, pending.spilled = store.in_memory, store.on_disk

    def _finish_if_complete(self, key: K, pending: _Pending) -> CompletedTransfer[K] | None:
        manifest = pending.manifest
        if manifest is None or len(pending.chunks) < manifest.chunks:
            return None
        pieces = [pending.chunks[i] for i in range(manifest.chunks)]
        view = pending.store.blob(manifest, pieces, self.spill_dir)  # the view outlives the store
        payload_sha256 = pending.store.payload_sha256
        self.discard(key)
        if view is None:
            raise TransferError(
                f"transfer {manifest.transfer} at {key}: every chunk matches its hash but the blob does not match "
                "the manifest's size or SHA-256 (an inconsistent manifest)"
            )
        self._completed[key] = manifest
        self._completed.move_to_end(key)
        while len(self._completed) > self._completed_max:
            self._completed.popitem(last=False)
        return CompletedTransfer(key=key, manifest=manifest, view=view, payload_sha256=payload_sha256)

    def _enforce_limits(self, keep: K) -> None:
        while (
            len(self._pending) > self.max_transfers
            or self._buffered > self.max_bytes
            or self._spilled > self.max_spill_bytes
        ):
            victim = next((k for k in self._pending if k != keep), None)
            if victim is None:
                victim = keep  # the current transfer alone exceeds the memory bound
            pending = self._pending[victim]
            self._log.warning(
                "incomplete transfer evicted to bound memory",
                key=victim,
                transfer=pending.manifest.transfer if pending.manifest else None,
                buffered_bytes=self._buffered,
                max_bytes=self.max_bytes,
                spilled_bytes=self._spilled,
                transfers=len(self._pending),
                max_transfers=self.max_transfers,
            )
            self.discard(victim)
            if victim == keep:
                return
