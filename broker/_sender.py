"""Sending weights blobs as chunked transfers: a manifest plus chunks, each on its own topic.

`BlobSender.send`:

1. cut the blob into chunks of ``min(chunk_size, session.max_payload)`` bytes; chunk ``i`` is bytes
   ``[i*chunk_size, (i+1)*chunk_size)``; the manifest (`schemas.manifest_for`: sizes, the blob's
   SHA-256 and every chunk's) describes them;
2. publish the chunks (QoS 1) keeping at most `window` of them un-acknowledged, waiting on their
   `PublishResult`s, all bounded by `timeout`;
3. publish the manifest once every chunk is acknowledged, and wait for its acknowledgement;
4. global models are sent with ``retain=True`` so a late subscriber still gets them; `clear` deletes
   such a transfer again (empty retained payloads).

A sender that must store a transfer before publishing it (the edge's outbox) calls `prepare`, stores,
then `resend` with every index; `resend` also republishes the chunks a receiver names missing.
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
from schemas import TransferManifest, TransferOrigin, manifest_for

__all__ = ["BlobSender", "new_transfer_id"]


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

    def send(
        self,
        manifest_topic: str,
        chunk_topic: Callable[[int], str],
        blob: bytes,
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
        manifest = self.prepare(blob, origin, transfer=transfer)
        self._publish(
            manifest_topic, chunk_topic, blob, manifest, range(manifest.chunks), retain=retain, timeout=timeout
        )
        return manifest

    def prepare(self, blob: bytes, origin: TransferOrigin, *, transfer: str | None = None) -> TransferManifest:
        """The manifest `send` would publish for `blob` (same chunking), without publishing anything:
        for a sender that stores the transfer before it publishes it (then `resend` with all indices)."""
        if not blob:
            raise TransferError("cannot send an empty blob")
        chunk_size = max(1, min(self.chunk_size, self.session.max_payload))
        return manifest_for(blob, origin, chunk_size=chunk_size, transfer=transfer or new_transfer_id())

    def resend(
        self,
        manifest_topic: str,
        chunk_topic: Callable[[int], str],
        blob: bytes,
        manifest: TransferManifest,
        indices: Iterable[int] | None = None,
        *,
        retain: bool = False,
        timeout: float = 120.0,
    ) -> None:
        """Publish chunks `indices` of `blob` as `manifest` cut it (all of them if None, none if empty),
        with the same bounded window, then `manifest` itself (the same bytes every time); return once the
        broker acknowledged everything. For resuming a transfer: the receiver names what it misses.

        Raises TransferError if `blob` is not the manifest's blob, an index is out of range, or the broker
        does not acknowledge within `timeout`; PublishError if it refuses a message.
        """
        if len(blob) != manifest.total_bytes or hashlib.sha256(blob).hexdigest() != manifest.sha256:
            raise TransferError(f"transfer {manifest.transfer}: the blob does not match its manifest")
        wanted = range(manifest.chunks) if indices is None else sorted(set(indices))
        bad = [i for i in wanted if not 0 <= i < manifest.chunks]
        if bad:
            raise TransferError(
                f"transfer {manifest.transfer}: chunk indices {bad} out of range 0..{manifest.chunks - 1}"
            )
        self._publish(manifest_topic, chunk_topic, blob, manifest, wanted, retain=retain, timeout=timeout)

    def _publish(
        self,
        manifest_topic: str,
        chunk_topic: Callable[[int], str],
        blob: bytes,
        manifest: TransferManifest,
        indices: Iterable[int],
        *,
        retain: bool,
        timeout: float,
    ) -> None:
        """Chunks `indices` with at most `window` unacknowledged, then the manifest; all within `timeout`."""
        deadline = time.monotonic() + timeout
        size = manifest.chunk_size
        in_flight: deque[tuple[int, PublishResult]] = deque()
        for index in indices:
            if len(in_flight) >= self.window:
                self._wait(in_flight.popleft(), deadline, manifest, timeout)
            chunk = blob[index * size : (index + 1) * size]
            in_flight.append((index, self.session.publish(chunk_topic(index), chunk, qos=1, retain=retain)))
        while in_flight:
            self._wait(in_flight.popleft(), deadline, manifest, timeout)
        self._wait(
            (-1, self.session.publish(manifest_topic, manifest.to_json(), qos=1, retain=retain)),
            deadline,
            manifest,
            timeout,
        )

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
    def _wait(item: tuple[int, PublishResult], deadline: float, manifest: TransferManifest, timeout: float) -> None:
        index, result = item
        try:
            result.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            what = "manifest" if index < 0 else f"chunk {index}/{manifest.chunks}"
            raise TransferError(f"transfer {manifest.transfer}: {what} not acknowledged within {timeout} s") from exc
