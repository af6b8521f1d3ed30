"""The transfer fast path (issue 12): what makes it fast, guarded without timing anything.

- the sender hashes every chunk once while it publishes it, the blob's SHA-256 in the same pass, and
  `resend` hashes only the chunks it sends (none for the blob `prepare` just hashed);
- the receiver hashes every distinct chunk once (duplicates of verified chunks not at all), writes it
  once, and hands over a read-only view that `decode_weights` decodes without a copy;
- a large transfer received with a spill directory stays within a small, fixed heap;
- manifests and blobs written before the fast path still decode, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker import Assembler, BlobSender, PublishResult, Session, TransferError, manifest_from_payload
from schemas import (
    TransferManifest,
    TransferOrigin,
    decode_weights,
    encode_weights,
    manifest_for,
    read_header,
    weights_payload_offset,
)
from tests.helpers.manifests import reference_manifest

ORIGIN = TransferOrigin("update", "sdd", "uid-1", 1, "edge1", 10)


REAL_SHA256 = hashlib.sha256


class CountingSha256:
    """Stands in for `hashlib.sha256` while armed: counts sha256 objects and the bytes they hash."""

    def __init__(self) -> None:
        self.objects = 0
        self.bytes = 0
        self.armed = False

    def reset(self) -> None:
        self.objects = self.bytes = 0

    def sha256(self, data: Any = b"") -> Any:
        if not self.armed:
            return REAL_SHA256(data)
        self.objects += 1
        counter = self
        real = REAL_SHA256()

        class _Hash:
            def update(self, more: Any) -> None:
                counter.bytes += memoryview(more).nbytes
                real.update(more)

            def hexdigest(self) -> str:
                return real.hexdigest()

        h = _Hash()
        if len(data):
            h.update(data)
        return h


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingSha256]:
    """Every `hashlib.sha256` call (the broker's modules look it up at call time), counted while armed."""
    counter = CountingSha256()
    monkeypatch.setattr(hashlib, "sha256", counter.sha256)
    counter.armed = True
    yield counter
    counter.armed = False


class FakeSession:
    """Acknowledges every publish at once and keeps what was published."""

    def __init__(self, max_payload: int = 1 << 20) -> None:
        self.max_payload = max_payload
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes | memoryview, *, qos: int = 1, retain: bool = False) -> PublishResult:
        self.published.append((topic, bytes(payload)))
        result = PublishResult(topic)
        result.resolve()
        return result


def fake_sender(chunk_size: int) -> tuple[BlobSender, FakeSession]:
    session = FakeSession()
    return BlobSender(session, chunk_size=chunk_size), session  # type: ignore[arg-type]  # duck-typed Session


def two_pass_manifest(blob: bytes, chunk_size: int, transfer: str) -> TransferManifest:
    """The manifest as it was built before the fast path: the whole blob hashed, then every chunk."""
    return reference_manifest(blob, chunk_size, transfer=transfer, job="sdd", uid="uid-1", num_samples=10)


def same_but_time(a: TransferManifest, b: TransferManifest) -> bool:
    return a.model_copy(update={"created_at": b.created_at}) == b


def cut(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]


# -- sender ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "chunk"), [(1, 1), (1000, 1000), (1001, 1000), (10_000, 333)])
def test_one_pass_manifest_equals_the_two_pass_reference(size: int, chunk: int) -> None:
    blob = os.urandom(size)

    assert same_but_time(
        manifest_for(blob, ORIGIN, chunk_size=chunk, transfer="ab" * 8), two_pass_manifest(blob, chunk, "ab" * 8)
    )


def test_send_hashes_each_chunk_once_and_the_blob_in_the_same_pass(hashes: CountingSha256) -> None:
    """send: one sha256 per chunk plus one for the blob; every byte hashed twice (its chunk's, the blob's)
    and no more; the manifest goes last and is the two-pass reference."""
    blob = os.urandom(10_000)
    sender, session = fake_sender(1000)

    manifest = sender.send("t/manifest", lambda i: f"t/chunks/{i}", blob, ORIGIN, transfer="cd" * 8)

    assert hashes.objects == 10 + 1
    assert hashes.bytes == 2 * len(blob)
    assert same_but_time(manifest, two_pass_manifest(blob, 1000, "cd" * 8))
    assert [t for t, _ in session.published] == [f"t/chunks/{i}" for i in range(10)] + ["t/manifest"]
    assert b"".join(p for _, p in session.published[:-1]) == blob


def test_resend_never_rehashes_the_whole_blob(hashes: CountingSha256) -> None:
    """The blob prepare just hashed goes out unhashed; any other blob has only the chunks sent hashed."""
    blob = os.urandom(10_000)
    sender, session = fake_sender(1000)
    manifest = sender.prepare(blob, ORIGIN, transfer="ef" * 8)
    hashes.reset()

    sender.resend("t/manifest", lambda i: f"t/chunks/{i}", blob, manifest)
    assert (hashes.objects, hashes.bytes) == (0, 0)
    assert len(session.published) == 11

    other, _ = fake_sender(1000)
    other.resend("t/manifest", lambda i: f"t/chunks/{i}", blob, manifest, [7, 2])
    assert (hashes.objects, hashes.bytes) == (2, 2000)


def test_an_adopted_manifest_sends_its_blob_unhashed_once_and_only_that_pair(hashes: CountingSha256) -> None:
    """adopt: a manifest the caller made earlier for these bytes counts as prepared (one resend, no hashing);
    a resend with another manifest, or a second resend, checks its chunks; a manifest of another size is
    refused at once."""
    blob = os.urandom(10_000)
    manifest, other = two_pass_manifest(blob, 1000, "ab" * 8), two_pass_manifest(blob, 1000, "cd" * 8)
    sender, session = fake_sender(1000)
    hashes.reset()

    sender.adopt(blob, manifest)
    sender.resend("t/manifest", lambda i: f"t/chunks/{i}", blob, manifest)
    assert (hashes.objects, hashes.bytes) == (0, 0)
    assert b"".join(p for _, p in session.published[:-1]) == blob

    sender.resend("t/manifest", lambda i: f"t/chunks/{i}", blob, manifest, [3])
    assert (hashes.objects, hashes.bytes) == (1, 1000)

    sender.adopt(blob, manifest)
    sender.resend("t/manifest", lambda i: f"t/chunks/{i}", blob, other, [4])
    assert (hashes.objects, hashes.bytes) == (2, 2000)

    with pytest.raises(TransferError, match="10001 bytes, the manifest says 10000"):
        sender.adopt(blob + b"x", manifest)


# -- receiver --------------------------------------------------------------------------------------


def feed_in_order(asm: Assembler[str], manifest: TransferManifest, chunks: list[bytes], *, manifest_first: bool) -> Any:
    done = asm.add_manifest("k", manifest) if manifest_first else None
    for i, chunk in enumerate(chunks):
        done = asm.add_chunk("k", i, chunk) or done
    if not manifest_first:
        done = asm.add_manifest("k", manifest)
    return done


@pytest.mark.parametrize("verify_blob", [True, False])
@pytest.mark.parametrize("manifest_first", [False, True])
def test_every_chunk_is_hashed_once_duplicates_of_verified_ones_not_at_all(
    hashes: CountingSha256, manifest_first: bool, verify_blob: bool
) -> None:
    """Each chunk is hashed once on arrival (and, by default, fed once into the blob's hash); a redelivered
    duplicate of a verified chunk is not hashed at all."""
    blob = os.urandom(10_000)
    manifest = two_pass_manifest(blob, 1000, "12" * 8)
    asm: Assembler[str] = Assembler(verify_blob_sha256=verify_blob)
    hashes.reset()
    if manifest_first:
        asm.add_manifest("k", manifest)
        for i, chunk in enumerate(cut(blob, 1000)[:5]):
            asm.add_chunk("k", i, chunk)
            asm.add_chunk("k", i, chunk)  # QoS 1 redelivery
        chunks = cut(blob, 1000)[5:]
        done = None
        for i, chunk in enumerate(chunks, start=5):
            done = asm.add_chunk("k", i, chunk) or done
    else:
        done = feed_in_order(asm, manifest, cut(blob, 1000), manifest_first=False)

    assert done is not None and done.view == blob
    assert hashes.objects == (11 if verify_blob else 10)
    assert hashes.bytes == (2 if verify_blob else 1) * len(blob)


def test_the_blob_is_handed_over_without_a_copy_and_decoded_without_another() -> None:
    """In-order chunks land in one buffer: the view is that buffer, the decoded tensors are views on it."""
    arrays = [np.arange(3000, dtype=np.float32), np.ones((50, 20), dtype=np.float64)]
    blob = encode_weights(arrays, kind="update", job="sdd", round_=1, sender="edge1", num_samples=10)
    manifest = two_pass_manifest(blob, 1000, "34" * 8)

    done = feed_in_order(Assembler(), manifest, cut(blob, 1000), manifest_first=False)
    _header, decoded = decode_weights(done.view)

    assert done.view.readonly and done.view == blob
    buffer = np.frombuffer(done.view, dtype=np.uint8)
    assert all(np.shares_memory(a, buffer) for a in decoded)
    assert all(not a.flags.writeable for a in decoded)
    assert [a.tolist() for a in decoded] == [a.tolist() for a in arrays]
    assert done.blob == blob and isinstance(done.blob, bytes)  # the bytes copy, for callers that need one


def test_a_writable_buffer_is_copied_before_decoding() -> None:
    """decode_weights never returns views on memory the caller may still change."""
    blob = bytearray(
        encode_weights([np.zeros(4, np.float32)], kind="update", job="j", round_=1, sender="e", num_samples=1)
    )

    _, (array,) = decode_weights(blob)
    blob[-1] = 0x7F

    assert array.tolist() == [0.0] * 4


@pytest.mark.parametrize("spill", [False, True])
def test_out_of_order_stale_and_resent_chunks_still_give_the_exact_blob(tmp_path: Path, spill: bool) -> None:
    """The slow path (chunks not in index order, a stale candidate) lays the blob out again, exactly."""
    blob = os.urandom(20_000)
    manifest = two_pass_manifest(blob, 1000, "56" * 8)
    chunks = cut(blob, 1000)
    asm: Assembler[str] = Assembler(spill_dir=tmp_path if spill else None, spill_bytes=5000)
    asm.add_chunk("k", 3, b"stale retained bytes")
    order = list(range(20))
    random.Random(3).shuffle(order)
    for i in order[:-2]:
        assert asm.add_chunk("k", i, chunks[i]) is None
    assert asm.add_manifest("k", manifest) is None
    assert asm.missing("k") == sorted(order[-2:])
    assert asm.spilled_bytes > 0 if spill else asm.spilled_bytes == 0
    done = None
    for i in order[-2:]:
        done = asm.add_chunk("k", i, chunks[i]) or done

    assert done is not None and done.view == blob
    assert asm.buffered_bytes == 0 and asm.spilled_bytes == 0
    assert list(tmp_path.iterdir()) == []  # spill files are unlinked from the start


def test_inconsistent_blob_sha256_is_caught_unless_turned_off() -> None:
    """By default the whole SHA-256 is checked too (fed as the chunks arrive): a manifest whose blob hash
    contradicts its chunk hashes never completes; `verify_blob_sha256=False` trusts the chunk hashes."""
    blob = os.urandom(3000)
    bad = two_pass_manifest(blob, 1000, "78" * 8).model_copy(update={"sha256": "0" * 64})

    with pytest.raises(TransferError, match="inconsistent manifest"):
        feed_in_order(Assembler(), bad, cut(blob, 1000), manifest_first=False)
    done = feed_in_order(Assembler(verify_blob_sha256=False), bad, cut(blob, 1000), manifest_first=False)
    assert done is not None and done.view == blob


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("chunk", [64, 1000, 100_000])
@pytest.mark.parametrize("shuffled", [False, True])
def test_the_payload_of_a_weights_blob_is_hashed_as_it_arrives(
    tmp_path: Path, spill: bool, chunk: int, shuffled: bool
) -> None:
    """With `payload_at=weights_payload_offset` the assembler hands over the SHA-256 of the tensor bytes (what
    the weights header carries), in order or not, in memory or spilled, with a header longer than a chunk."""
    arrays = [np.arange(5000, dtype=np.float32), np.ones((30, 7), dtype=np.float64)]
    blob = encode_weights(arrays, kind="update", job="sdd", round_=1, sender="edge1", num_samples=3)
    header, offset = read_header(blob)
    manifest = two_pass_manifest(blob, chunk, "9a" * 8)
    asm: Assembler[str] = Assembler(
        spill_dir=tmp_path if spill else None, spill_bytes=1, payload_at=weights_payload_offset
    )
    order = list(range(manifest.chunks))
    if shuffled:
        random.Random(5).shuffle(order)
    pieces = cut(blob, chunk)
    done = asm.add_manifest("k", manifest)
    for i in order:
        done = asm.add_chunk("k", i, pieces[i]) or done

    assert done is not None and done.view == blob
    assert done.payload_sha256 == header.sha256 == hashlib.sha256(blob[offset:]).hexdigest()
    assert weights_payload_offset(blob[:8]) == offset and weights_payload_offset(b"FLW0" + blob[4:8]) is None
    assert weights_payload_offset(blob[:7]) is None
    plain = feed_in_order(Assembler(), manifest, pieces, manifest_first=True)
    assert plain.payload_sha256 is None  # only asked for


def chunk_stream(total: int, size: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for start in range(0, total, size):
        yield rng.randbytes(min(size, total - start))


@pytest.mark.parametrize("spill", [True, False])
def test_a_large_blob_received_into_a_file_keeps_the_heap_small(tmp_path: Path, spill: bool) -> None:
    """32 MiB in 256 KiB chunks with a spill directory: the heap peak stays under 2 MiB (the chunks being
    handed in, the bookkeeping); in memory it is the blob's size, so the bound means something."""
    total, size = 32 * 1024 * 1024, 256 * 1024
    expected = hashlib.sha256()
    digests = []
    for chunk in chunk_stream(total, size, 1):
        expected.update(chunk)
        digests.append(hashlib.sha256(chunk).hexdigest())
    manifest = two_pass_manifest(b"x", 1, "9a" * 8).model_copy(
        update={
            "total_bytes": total,
            "chunk_size": size,
            "chunks": len(digests),
            "sha256": expected.hexdigest(),
            "chunk_sha256": digests,
        }
    )
    asm: Assembler[str] = Assembler(
        max_bytes=64 * 1024 * 1024, spill_dir=tmp_path if spill else None, spill_bytes=1024 * 1024
    )

    tracemalloc.start()
    try:
        for i, chunk in enumerate(chunk_stream(total, size, 1)):
            assert asm.add_chunk("k", i, chunk) is None
            del chunk
        done = asm.add_manifest("k", manifest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert done is not None and hashlib.sha256(done.view).hexdigest() == expected.hexdigest()
    if spill:
        assert peak < 2 * 1024 * 1024
    else:
        assert peak > total


# -- compatibility ---------------------------------------------------------------------------------


def test_a_manifest_and_blob_written_before_the_fast_path_still_decode() -> None:
    """A manifest as JSON text and a blob as bytes, laid out by hand as the old writers wrote them."""
    tensor = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    head = json.dumps(
        {
            "version": 1,
            "kind": "update",
            "job": "sdd",
            "round": 1,
            "sender": "edge1",
            "numSamples": 10,
            "tensors": [{"name": "w0", "dtype": "float32", "shape": [2, 2]}],
            "sha256": hashlib.sha256(tensor).hexdigest(),
            "createdAt": "2026-11-01T00:00:00Z",
        }
    ).encode()
    blob = b"FLW1" + struct.pack(">I", len(head)) + head + tensor
    chunks = cut(blob, 100)
    payload = json.dumps(
        {
            "transfer": "0123456789abcdef",
            "kind": "update",
            "job": "sdd",
            "uid": "uid-1",
            "round": 1,
            "sender": "edge1",
            "totalBytes": len(blob),
            "chunkSize": 100,
            "chunks": len(chunks),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "chunkSha256": [hashlib.sha256(c).hexdigest() for c in chunks],
            "numSamples": 10,
            "createdAt": "2026-11-01T00:00:00Z",
        }
    ).encode()

    done = feed_in_order(Assembler(), manifest_from_payload(payload), chunks, manifest_first=False)
    header, (array,) = decode_weights(done.view)

    assert header.sender == "edge1" and array.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert decode_weights(blob)[1][0].tolist() == array.tolist()


def test_session_publish_accepts_a_memoryview() -> None:
    """BlobSender hands chunks as memoryviews; Session.publish takes them (it makes paho's one copy)."""
    import inspect

    assert "memoryview" in str(inspect.signature(Session.publish).parameters["payload"].annotation)


def test_spill_files_are_released_with_their_transfers(tmp_path: Path) -> None:
    """Discarded, evicted or abandoned (the Assembler dropped) transfers close their spill files."""
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    asm: Assembler[str] = Assembler(spill_dir=tmp_path, spill_bytes=100, max_transfers=2)
    for key in ("a", "b", "c", "d"):
        asm.add_chunk(key, 0, os.urandom(1000))
    assert asm.pending == ["c", "d"] and asm.spilled_bytes == 2000  # a and b evicted
    asm.discard("c")
    assert open_fds() == before + 1
    del asm
    gc.collect()
    assert open_fds() == before
