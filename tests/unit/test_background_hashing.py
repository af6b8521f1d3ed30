"""`Assembler(background_hashing=True)` (the aggregator's intake): the blob's and the payload's running SHA-256
are fed on the process's hashing thread instead of the caller's, with the same results as inline hashing:
interleaved transfers, chunks in order or not, in memory or spilled, and an inconsistent manifest still
refused."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from broker import Assembler, TransferError
from schemas import encode_weights, read_header, weights_payload_offset
from tests.unit.test_transfer_fastpath import cut, two_pass_manifest


def _blob(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(3000).astype(np.float32), rng.standard_normal((20, 9)).astype(np.float32)]
    return encode_weights(arrays, kind="update", job="sdd", round_=1, sender=f"edge{seed}", num_samples=3)


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("shuffled", [False, True])
def test_interleaved_transfers_hash_as_they_would_inline(tmp_path: Path, spill: bool, shuffled: bool) -> None:
    blobs = {f"t{i}": _blob(i) for i in range(6)}
    manifests = {k: two_pass_manifest(b, 500, f"{i:02x}" * 8) for i, (k, b) in enumerate(blobs.items())}
    asm: Assembler[str] = Assembler(
        spill_dir=tmp_path if spill else None,
        spill_bytes=2000,
        payload_at=weights_payload_offset,
        background_hashing=True,
    )
    arrivals = [(k, i) for k in blobs for i in range(manifests[k].chunks)]
    rng = random.Random(7)
    if shuffled:
        rng.shuffle(arrivals)
    else:  # each transfer in order, the transfers interleaved chunk by chunk
        arrivals.sort(key=lambda a: (a[1], a[0]))
    done = {}
    for key in blobs:
        assert asm.add_manifest(key, manifests[key]) is None
    for key, index in arrivals:
        finished = asm.add_chunk(key, index, cut(blobs[key], 500)[index])
        if finished is not None:
            done[key] = finished
    assert sorted(done) == sorted(blobs)
    for key, blob in blobs.items():
        header, offset = read_header(blob)
        assert done[key].view == blob
        assert done[key].payload_sha256 == header.sha256 == hashlib.sha256(blob[offset:]).hexdigest()


def test_an_inconsistent_manifest_is_still_refused() -> None:
    blob = _blob(9)
    bad = two_pass_manifest(blob, 700, "ab" * 8).model_copy(update={"sha256": "0" * 64})
    asm: Assembler[str] = Assembler(payload_at=weights_payload_offset, background_hashing=True)
    pieces = cut(blob, 700)
    for i in range(len(pieces) - 1):
        assert asm.add_chunk("k", i, pieces[i]) is None
    assert asm.add_manifest("k", bad) is None
    with pytest.raises(TransferError, match="inconsistent manifest"):
        asm.add_chunk("k", len(pieces) - 1, pieces[-1])


@pytest.mark.parametrize("background", [False, True])
def test_an_error_of_the_payload_offset_reaches_the_receiver_either_way(background: bool) -> None:
    """What `payload_at` raises on the hashing thread comes out of the call that completes the transfer, as it
    does inline (the hand-off is no Future, so it carries the error itself)."""

    def broken(_first: memoryview) -> int | None:
        raise ValueError("no header here")

    blob = _blob(3)
    manifest = two_pass_manifest(blob, 600, "cd" * 8)
    asm: Assembler[str] = Assembler(payload_at=broken, background_hashing=background)
    asm.add_manifest("k", manifest)
    pieces = cut(blob, 600)
    with pytest.raises(ValueError, match="no header here"):
        for i, piece in enumerate(pieces):
            asm.add_chunk("k", i, piece)
