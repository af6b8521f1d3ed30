"""Sending weights blobs as chunked transfers: a manifest plus chunks, each on its own topic.

`BlobSender.send`:

1. cut the blob into chunks of ``min(chunk_size, session.max_payload)`` bytes; chunk ``i`` is bytes
   ``[i*chunk_size, (i+1)*chunk_size)``, a memoryview of the blob (the only copy is the one paho needs);
2. publish the chunks (QoS 1) keeping at most `window` of them un-acknowledged, waiting on their
   `PublishResult`s, all bounded by `timeout`. Each chunk is hashed right after it is handed to paho, so
   hashing overlaps with paho's network thread writing it (hashlib releases the GIL), and the blob's
   SHA-256 is fed the same chunk in the same pass: the blob is read once;
3. publish the manifest (`schemas.ChunkedBlob.manifest`: sizes, the blob's SHA-256 and every chunk's) once
   every chunk is acknowledged, and wait for its acknowledgement. The manifest goes last anyway (a receiver
   that sees it may ask for what it misses), so the hashes are ready when it is due;
4. global models are sent with ``retain=True`` so a late subscriber still gets them; `clear` deletes
   such a transfer again (empty retained payloads).

A sender that must store a transfer before publishing it (the edge's outbox) calls `prepare` (one pass:
`schemas.manifest_for`), stores, then `resend` with every index; `resend` also republishes the chunks a
receiver names missing. `resend` never hashes the whole blob: it checks each chunk it publishes against
the manifest (so a wrong blob is refused before its first bad chunk leaves), except for the blob this very
sender just prepared for that manifest, which it sends without hashing at all.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable

from broker._errors import TransferError
from broker._messages import PublishResult
from broker._session import Session
from schemas import ChunkedBlob, TransferManifest, TransferOrigin, manifest_for

__all__ = ["BlobSender", "new_transfer_id"]

Blob = bytes | bytearray | memoryview


def new_transfer_id() -> str:
    """A random transfer id (16 lowercase hex digits), valid in topics and manifests."""
    return secrets.token_hex(8)


class BlobSender:
    """Publishes blobs as chunked transfers through a `Session`."""

    def __init__(self, session: Session, chunk_size: int = 512 * 1024, window: int = 16) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size {chunk_size} must be >= 1")
        if not 1 <= window <= 20:
            raise ValueError(f"window {window} must be in 1..20 (paho's and the broker's in-flight limit)")
        self.session = session
        self.chunk_size = chunk_size
        self.window = window
        # The last blob `prepare` hashed and its manifest: `resend` of exactly that pair needs no hashing.
        self._prepared: tuple[Blob, TransferManifest] | None = None

    def send(
        self,
        manifest_topic: str,
        chunk_topic: Callable[[int], str],
        blob: Blob,
        origin: TransferOrigin,
        *,
        retain: bool = False,
        timeout: float = 120.0,
        transfer: str | None = None,
    ) -> TransferManifest:
        """Publish `blob`'s chunks (bounded window), then its manifest; return the manifest once the broker
        acknowledged everything. `transfer` is the id (random if None; pass the one in the topic).

        Raises TransferError if the broker does not acknowledge within `timeout` seconds, PublishError if
        it refuses a message (e.g. not authorized).
        """
        if not len(blob):
            raise TransferError("cannot send an empty blob")
        chunked = ChunkedBlob(blob, self._chunk_size())
        transfer = transfer or new_transfer_id()
        deadline = time.monotonic() + timeout
        in_flight: deque[tuple[int, PublishResult]] = deque()
        for index, piece in chunked.pieces():
            if len(in_flight) >= self.window:
                self._wait(in_flight.popleft(), deadline, transfer, chunked.count, timeout)
            # Published first, hashed (its own hash and the blob's) while paho's thread writes it.
            in_flight.append((index, self.session.publish(chunk_topic(index), piece, qos=1, retain=retain)))
        manifest = chunked.manifest(origin, transfer)
        self._finish(manifest_topic, manifest, in_flight, deadline, retain=retain, timeout=timeout)
        return manifest

    def prepare(self, blob: Blob, origin: TransferOrigin, *, transfer: str | None = None) -> TransferManifest:
        """The manifest `send` would publish for `blob` (same chunking), without publishing anything:
        for a sender that stores the transfer before it publishes it (then `resend` with all indices)."""
        if not len(blob):
            raise TransferError("cannot send an empty blob")
        manifest = manifest_for(blob, origin, chunk_size=self._chunk_size(), transfer=transfer or new_transfer_id())
        self._prepared = (blob, manifest)
        return manifest

    def adopt(self, blob: Blob, manifest: TransferManifest) -> None:
        """Take `manifest` as what `prepare` would have returned for `blob`: the next `resend` of exactly this
        pair publishes without hashing the chunks again. For a caller that hashed `blob` itself, earlier
        (`schemas.manifest_for` on these very bytes, kept unchanged since); a `resend` of another blob, or of
        this one with another manifest, still checks every chunk it publishes."""
        _same_size(memoryview(blob).cast("B"), manifest)
        self._prepared = (blob, manifest)

    def _chunk_size(self) -> int:
        return max(1, min(self.chunk_size, self.session.max_payload))

    def resend(
        self,
        manifest_topic: str,
        chunk_topic: Callable[[int], str],
        blob: Blob,
        manifest: TransferManifest,
        indices: Iterable[int] | None = None,
        *,
        retain: bool = False,
        timeout: float = 120.0,
    ) -> None:
        """Publish chunks `indices` of `blob` as `manifest` cut it (all of them if None, none if empty),
        with the same bounded window, then `manifest` itself (the same bytes every time); return once the
        broker acknowledged everything. For resuming a transfer: the receiver names what it misses.

        Each chunk is checked against its hash in the manifest before it leaves (not the whole blob: a
        resend of two chunks hashes two chunks), unless `blob` and `manifest` are what this sender's
        `prepare` just returned (hashed a moment ago).

        Raises TransferError if `blob` is not the manifest's blob (its size, or a chunk it was about to
        publish), an index is out of range, or the broker does not acknowledge within `timeout`;
        PublishError if it refuses a message.
        """
        view = memoryview(blob).cast("B")
        _same_size(view, manifest)
        wanted = range(manifest.chunks) if indices is None else sorted(set(indices))
        bad = [i for i in wanted if not 0 <= i < manifest.chunks]
        if bad:
            raise TransferError(
                f"transfer {manifest.transfer}: chunk indices {bad} out of range 0..{manifest.chunks - 1}"
            )
        prepared = self._prepared
        trusted = prepared is not None and prepared[0] is blob and prepared[1] is manifest
        if trusted:
            self._prepared = None  # once: the reference would otherwise keep a large blob alive
        deadline = time.monotonic() + timeout
        size = manifest.chunk_size
        in_flight: deque[tuple[int, PublishResult]] = deque()
        for index in wanted:
            piece = view[index * size : (index + 1) * size]
            # Hashed before it is published (a wrong chunk never leaves), while earlier ones are on the wire.
            if not trusted and hashlib.sha256(piece).hexdigest() != manifest.chunk_sha256[index]:
                self._drain(in_flight, deadline, manifest.transfer, manifest.chunks, timeout)
                raise TransferError(
                    f"transfer {manifest.transfer}: the blob does not match its manifest (chunk {index} differs)"
                )
            if len(in_flight) >= self.window:
                self._wait(in_flight.popleft(), deadline, manifest.transfer, manifest.chunks, timeout)
            in_flight.append((index, self.session.publish(chunk_topic(index), piece, qos=1, retain=retain)))
        self._finish(manifest_topic, manifest, in_flight, deadline, retain=retain, timeout=timeout)

    def _finish(
        self,
        manifest_topic: str,
        manifest: TransferManifest,
        in_flight: deque[tuple[int, PublishResult]],
        deadline: float,
        *,
        retain: bool,
        timeout: float,
    ) -> None:
        """Wait for the chunks still in flight, then publish the manifest and wait for it."""
        self._drain(in_flight, deadline, manifest.transfer, manifest.chunks, timeout)
        result = self.session.publish(manifest_topic, manifest.to_json(), qos=1, retain=retain)
        self._wait((-1, result), deadline, manifest.transfer, manifest.chunks, timeout)

    def _drain(
        self, in_flight: deque[tuple[int, PublishResult]], deadline: float, transfer: str, chunks: int, timeout: float
    ) -> None:
        while in_flight:
            self._wait(in_flight.popleft(), deadline, transfer, chunks, timeout)

    def clear(
        self, manifest_topic: str, chunk_topic: Callable[[int], str], chunks: int, *, timeout: float = 30.0
    ) -> None:
        """Delete a retained transfer: empty retained payloads on the manifest (first) and every chunk topic."""
        deadline = time.monotonic() + timeout
        results = [self.session.publish(manifest_topic, b"", qos=1, retain=True)]
        results += [self.session.publish(chunk_topic(i), b"", qos=1, retain=True) for i in range(chunks)]
        for result in results:
            try:
                result.wait(max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise TransferError(f"clearing {manifest_topic!r}: not acknowledged within {timeout} s") from exc

    @staticmethod
    def _wait(item: tuple[int, PublishResult], deadline: float, transfer: str, chunks: int, timeout: float) -> None:
        index, result = item
        try:
            result.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            what = "manifest" if index < 0 else f"chunk {index}/{chunks}"
            raise TransferError(f"transfer {transfer}: {what} not acknowledged within {timeout} s") from exc


def _same_size(view: memoryview, manifest: TransferManifest) -> None:
    if len(view) != manifest.total_bytes:
        raise TransferError(
            f"transfer {manifest.transfer}: the blob does not match its manifest "
            f"({len(view)} bytes, the manifest says {manifest.total_bytes})"
        )
