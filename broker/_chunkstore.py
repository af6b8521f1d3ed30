"""Where the `Assembler` keeps one transfer's chunks: an append-only buffer, in memory or in a file.

Chunks are written once, when they arrive, in arrival order: into a growing ``bytearray`` (CPython grows it
in place; glibc moves large blocks with ``mremap``, not by copying), or, past the receiver's spill size,
into an unlinked temporary file (``os.pwrite``), so a large model costs page cache, not heap. The
message's own bytes are dropped right after, so a transfer is held once, not as chunks plus a joined copy.

A sender publishes chunk 0, 1, 2, ... and the manifest last, so chunks usually arrive in index order
before anyone knows their hashes. The store remembers the digests of the chunks written in index order;
at the end, if those are exactly the manifest's, the buffer *is* the blob in order: no join. Anything else
(a stale retained chunk, a resent one arriving late) falls back to laying the verified chunks out again
in order, one more copy; that is the rare path.

With `hash_blob` the store also checks the blob's SHA-256 against the manifest, fed chunk by chunk as they
are written (still in the CPU's cache), so even then there is no second pass over a joined blob. With
`payload_at` it hashes, the same way, the blob from the offset that function reads off the first chunk
(a weights blob's tensor bytes, whose SHA-256 its own header carries): `payload_sha256`.

With `background` those two running hashes are fed on one hashing thread shared by the process (FIFO, so
each store's chunks are hashed in order) instead of the caller's: the receiver's thread goes on with the
next message while the last one is hashed (hashlib releases the GIL), and `blob` waits for its own (and
raises what the hashing raised). A chunk is handed over with `runtime.WorkThreads` (a queue put and one
plain lock, not a `ThreadPoolExecutor` Future, whose own locking cost the receiving thread more at 100 edges).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from runtime import Pending, WorkThreads
from schemas import TransferManifest

__all__ = ["ChunkStore", "Piece"]


@dataclass(frozen=True)
class Piece:
    """One chunk written to a store: its SHA-256 (computed once, on arrival) and where its bytes are."""

    digest: str
    offset: int
    length: int


# The process's one hashing thread for stores made with `background`: ONE, so each store's chunks are fed
# to its running hashes in order.
_hasher = WorkThreads("blob-hash", 1)


class ChunkStore:
    """The bytes of one incoming transfer. Not thread-safe (the Assembler's thread only)."""

    def __init__(
        self,
        spill_dir: Path | None = None,
        *,
        hash_blob: bool = False,
        payload_at: Callable[[memoryview], int | None] | None = None,
        background: bool = False,
    ) -> None:
        self._mem: bytearray | None = bytearray()
        self._fd: int | None = None
        self.length = 0
        # The digests of the chunks written in index order 0, 1, 2, ..., and (hash_blob) their SHA-256.
        self._whole = hashlib.sha256() if hash_blob else None
        # (payload_at) the SHA-256 of the bytes from the offset it gives, and how many bytes are still to skip
        self._payload_at = payload_at
        self._payload: hashlib._Hash | None = None
        self._skip = 0
        self.payload_sha256: str | None = None  # set by `blob` when the payload was hashed whole
        self._hashed: list[str] = []
        self._in_order = True
        self._background = background and (hash_blob or payload_at is not None)
        self._last_hash: Pending[None] | None = None  # the newest chunk's hashing on the background thread
        self._hash_error: BaseException | None = None  # the first one raised there, raised by `blob`
        if spill_dir is not None:
            self.spill(spill_dir)

    @property
    def in_memory(self) -> int:
        """Bytes this store holds in memory (0 once spilled to a file)."""
        return len(self._mem) if self._mem is not None else 0

    @property
    def on_disk(self) -> int:
        return self.length if self._fd is not None else 0

    def append(self, index: int, data: bytes | memoryview, digest: str) -> Piece:
        """Write chunk `index` (whose SHA-256 is `digest`) at the end of the store."""
        offset = self.length
        if self._fd is not None:
            _pwrite_all(self._fd, memoryview(data), offset)
        else:
            assert self._mem is not None
            self._mem += data
        self.length += len(data)
        if self._in_order and index == len(self._hashed):
            if self._background:
                self._last_hash = _hasher.submit(partial(self._hash_in_order, index, data))
            else:
                self._hash_chunk(index, data)
            self._hashed.append(digest)
        else:
            self._in_order = False
        return Piece(digest, offset, len(data))

    def _hash_in_order(self, index: int, data: bytes | memoryview) -> None:
        """`_hash_chunk` on the hashing thread: the first error is kept for `blob` to raise (a later chunk's
        wait would not see an earlier chunk's), and the chunks after it are not hashed."""
        if self._hash_error is not None:
            return
        try:
            self._hash_chunk(index, data)
        except Exception as exc:
            self._hash_error = exc

    def _hash_chunk(self, index: int, data: bytes | memoryview) -> None:
        if self._whole is not None:
            self._whole.update(data)
        self._hash_payload(index, memoryview(data))

    def _hash_payload(self, index: int, data: memoryview) -> None:
        if index == 0 and self._payload_at is not None:
            offset = self._payload_at(data)
            if offset is not None and offset >= 0:
                self._payload, self._skip = hashlib.sha256(), offset
        if self._payload is None:
            return
        if self._skip >= len(data):
            self._skip -= len(data)
        else:
            self._payload.update(data[self._skip :])
            self._skip = 0

    def spill(self, directory: Path) -> None:
        """Move the store to an unlinked temporary file in `directory` (nothing to clean up after a crash)."""
        if self._fd is not None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="transfer-", suffix=".part", dir=directory)
        os.unlink(path)
        self._fd = fd
        if self._mem:
            _pwrite_all(fd, memoryview(self._mem), 0)
        self._mem = None

    def read(self, piece: Piece) -> bytes | memoryview:
        """The bytes of a piece (a view in memory, a copy of that one chunk from the file)."""
        if self._fd is not None:
            return os.pread(self._fd, piece.length, piece.offset)
        assert self._mem is not None
        return memoryview(self._mem)[piece.offset : piece.offset + piece.length]

    def blob(self, manifest: TransferManifest, pieces: list[Piece], spill_dir: Path | None) -> memoryview | None:
        """The blob of `pieces` (the verified chunks, in index order) as a read-only view, or None if its
        size (or, with `hash_blob`, its SHA-256) is not the manifest's. Usually the store itself; else laid
        out again (this store is closed either way)."""
        if self._last_hash is not None:
            self._last_hash.result()  # this store's running hashes are up to date (FIFO: its earlier chunks too)
            if self._hash_error is not None:
                raise self._hash_error  # as inline hashing would have, from the chunk that caused it
        store = self
        if not (self._in_order and self._hashed == manifest.chunk_sha256 and self.length == manifest.total_bytes):
            store = ChunkStore(
                spill_dir if self._fd is not None else None,
                hash_blob=self._whole is not None,
                payload_at=self._payload_at,
            )
            for index, piece in enumerate(pieces):
                store.append(index, self.read(piece), piece.digest)
            self.close()
        whole = store._whole
        if store.length != manifest.total_bytes or (whole is not None and whole.hexdigest() != manifest.sha256):
            store.close()
            return None
        if store._payload is not None and store._skip == 0:
            self.payload_sha256 = store._payload.hexdigest()  # read off this store, the one its Assembler holds
        view = store._view()
        store.close()
        return view

    def _view(self) -> memoryview:
        if self._fd is not None:
            # mmap keeps its own duplicate of the descriptor: the store may close its own.
            return memoryview(mmap.mmap(self._fd, self.length, access=mmap.ACCESS_READ))
        assert self._mem is not None
        return memoryview(self._mem).toreadonly()

    def __del__(self) -> None:
        # An Assembler dropped with transfers still pending must not keep their spill files' descriptors
        # (and disk space: the files are unlinked, so only the descriptor holds them).
        self.close()

    def close(self) -> None:
        """Release the store (a view handed out by `blob` stays valid)."""
        self._mem = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written
