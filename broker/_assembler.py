"""Receiving chunked transfers: the manifest and the chunks in any order, every hash verified, memory bounded.

`Assembler` takes the manifest and the chunks of each transfer under a key of the receiver's choosing
(any hashable: the topic prefix `transfer_key(topic)`, or a tuple such as (round, node, transfer)). A
chunk is kept only if its SHA-256 matches the manifest's entry for its index (once both are known): a
mismatching chunk may be a stale retained one, so it is dropped and the transfer waits for the right
one. The blob is handed over (`CompletedTransfer`) only when every chunk is present and the whole
SHA-256 matches. Memory is bounded: at most `max_bytes` buffered and `max_transfers` incomplete
transfers; beyond that the oldest incomplete transfer is evicted with a warning.

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
from typing import Generic, TypeVar

import pydantic
from structlog.typing import FilteringBoundLogger

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
    """A verified blob: every chunk matched its hash and the whole SHA-256 matched the manifest."""

    key: K
    manifest: TransferManifest
    blob: bytes = field(repr=False)


@dataclass
class _Pending:
    manifest: TransferManifest | None = None
    # index -> verified chunk (manifest known) or candidates by sha256, newest last (manifest unknown)
    chunks: dict[int, bytes] = field(default_factory=dict)
    candidates: dict[int, OrderedDict[str, bytes]] = field(default_factory=dict)
    size: int = 0


class Assembler(Generic[K]):
    """Reassembles chunked transfers received in any order, verifying every hash, with bounded memory.

    Not thread-safe: feed it from the one thread that handles the inbox.
    """

    def __init__(
        self, max_bytes: int = 512 * 1024 * 1024, max_transfers: int = 256, log: FilteringBoundLogger | None = None
    ) -> None:
        if max_bytes < 1 or max_transfers < 1:
            raise ValueError("max_bytes and max_transfers must be >= 1")
        self.max_bytes = max_bytes
        self.max_transfers = max_transfers
        self._log = log.bind(component="assembler") if log is not None else get_logger(component="assembler")
        self._pending: OrderedDict[K, _Pending] = OrderedDict()  # oldest first
        self._buffered = 0
        # Recently completed transfers, to recognise duplicates (QoS 1 redelivery, retained re-delivery).
        self._completed: OrderedDict[K, TransferManifest] = OrderedDict()
        self._completed_max = 4 * max_transfers

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

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
        if problem is None and manifest.total_bytes > self.max_bytes:
            problem = f"totalBytes {manifest.total_bytes} exceeds this receiver's limit of {self.max_bytes}"
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
            # Verified chunks of the old manifest become candidates for the new one.
            for index, data in pending.chunks.items():
                pending.candidates.setdefault(index, OrderedDict())[hashlib.sha256(data).hexdigest()] = data
            pending.chunks = {}
        pending.manifest = manifest
        for index, candidates in list(pending.candidates.items()):
            if index < manifest.chunks and manifest.chunk_sha256[index] in candidates:
                # already accounted as a candidate
                pending.chunks[index] = candidates.pop(manifest.chunk_sha256[index])
            for stale in candidates.values():
                self._account(pending, -len(stale))
            if candidates:
                self._log.info(
                    "stale chunks dropped: hash does not match the manifest",
                    key=key,
                    index=index,
                    dropped=len(candidates),
                )
        pending.candidates = {}
        return self._finish_if_complete(key, pending)

    def add_chunk(self, key: K, index: int, data: bytes) -> CompletedTransfer[K] | None:
        """Record chunk `index` of `key`; return the transfer if it completes it. A chunk that does not
        match the manifest's hash is dropped (the transfer keeps waiting for the right one)."""
        if index < 0 or not data:
            return None  # an empty retained payload is a deleted chunk
        if self._is_completed_duplicate(key, index, data):
            return None
        pending = self._pending.get(key) or self._new(key)
        manifest = pending.manifest
        if manifest is None:
            self._add_candidate(key, pending, index, data)
            return None
        if index >= manifest.chunks:
            self._log.warning("chunk index beyond the manifest dropped", key=key, index=index, chunks=manifest.chunks)
        elif index in pending.chunks:
            pass  # duplicate (QoS 1 is at-least-once)
        elif hashlib.sha256(data).hexdigest() != manifest.chunk_sha256[index]:
            self._log.info("chunk dropped: hash does not match the manifest (stale or corrupt)", key=key, index=index)
        else:
            pending.chunks[index] = data
            self._account(pending, len(data))
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

    def discard_where(self, predicate: Callable[[K], bool]) -> list[K]:
        """Forget every incomplete transfer whose key matches (e.g. all of a job, or of a round); return their keys."""
        keys = [key for key in self._pending if predicate(key)]
        for key in keys:
            self.discard(key)
        return keys

    # -- helpers ---------------------------------------------------------------------------------

    def _is_completed_duplicate(self, key: K, index: int, data: bytes) -> bool:
        done = self._completed.get(key)
        if done is None or key in self._pending or index >= done.chunks:
            return False
        return hashlib.sha256(data).hexdigest() == done.chunk_sha256[index]

    def _add_candidate(self, key: K, pending: _Pending, index: int, data: bytes) -> None:
        """Keep a chunk whose manifest is unknown: the newest few per index, by hash."""
        digest = hashlib.sha256(data).hexdigest()
        candidates = pending.candidates.setdefault(index, OrderedDict())
        if digest in candidates:
            return
        candidates[digest] = data
        self._account(pending, len(data))
        while len(candidates) > _CANDIDATES_PER_INDEX:
            _old, old_data = candidates.popitem(last=False)
            self._account(pending, -len(old_data))
        self._enforce_limits(keep=key)

    def _new(self, key: K) -> _Pending:
        pending = _Pending()
        self._pending[key] = pending
        self._enforce_limits(keep=key)
        return pending

    def _account(self, pending: _Pending, delta: int) -> None:
        pending.size += delta
        self._buffered += delta

    def _finish_if_complete(self, key: K, pending: _Pending) -> CompletedTransfer[K] | None:
        manifest = pending.manifest
        if manifest is None or len(pending.chunks) < manifest.chunks:
            return None
        self.discard(key)
        blob = b"".join(pending.chunks[i] for i in range(manifest.chunks))
        if len(blob) != manifest.total_bytes or hashlib.sha256(blob).hexdigest() != manifest.sha256:
            raise TransferError(
                f"transfer {manifest.transfer} at {key}: every chunk matches its hash but the blob does not match "
                "the manifest's size or SHA-256 (an inconsistent manifest)"
            )
        self._completed[key] = manifest
        self._completed.move_to_end(key)
        while len(self._completed) > self._completed_max:
            self._completed.popitem(last=False)
        return CompletedTransfer(key=key, manifest=manifest, blob=blob)

    def _enforce_limits(self, keep: K) -> None:
        while len(self._pending) > self.max_transfers or self._buffered > self.max_bytes:
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
                transfers=len(self._pending),
                max_transfers=self.max_transfers,
            )
            self.discard(victim)
            if victim == keep:
                return
