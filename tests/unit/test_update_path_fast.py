"""The per-update path without needless passes: finite checks by one sum, no copy of the blob, and no hash at
decode when the intake's assembler took the tensor bytes' SHA-256 on the way in (`payload_at`); the header's
hash is compared always, so a payload that is not what the encoder wrote is refused even when its transfer
vouches for it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloud_aggregator import UpdateRejectedError
from cloud_aggregator.engine import all_finite, decode_checked
from cloud_aggregator.testing import make_transfer


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_all_finite_is_exact(dtype: str) -> None:
    values = np.linspace(-3, 3, 1001).astype(dtype)
    assert all_finite(values)
    for bad in (np.nan, np.inf, -np.inf):
        broken = values.copy()
        broken[517] = bad
        assert not all_finite(broken)
    both = values.copy()
    both[3], both[4] = np.inf, -np.inf  # their sum is NaN: still not finite
    assert not all_finite(both)
    big = np.full(8, np.finfo(dtype).max, dtype=dtype)  # finite values whose sum overflows
    assert all_finite(big)


def _blob() -> tuple[object, bytes]:
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(5, dtype=np.float64)]
    return make_transfer(arrays, kind="update", job="j", uid="u" * 32, round_=1, sender="edge1", num_samples=3)


def test_a_blob_decodes_to_views_on_it_without_another_copy() -> None:
    manifest, blob = _blob()
    _, arrays, _ = decode_checked(manifest, blob, node="edge1", job="j")  # type: ignore[arg-type]
    for array in arrays:
        assert not array.flags.writeable and not array.flags.owndata
        assert np.shares_memory(array, np.frombuffer(blob, dtype=np.uint8))


def test_a_blob_whose_payload_is_not_its_headers_is_refused() -> None:
    """A flipped payload byte is refused, whether the bytes come from a transfer (whose manifest may vouch for
    them: the sender hashed them after the flip) or from the spool."""
    manifest, blob = _blob()
    corrupt = bytearray(blob)
    corrupt[-1] ^= 0x01
    with pytest.raises(UpdateRejectedError, match="sha256"):
        decode_checked(manifest, bytes(corrupt), node="edge1", job="j")  # type: ignore[arg-type]


def test_a_payload_digest_taken_on_the_way_in_is_used_instead_of_hashing_again() -> None:
    """The intake's assembler hashes the tensor bytes as they arrive: decode compares that digest with the
    header's and does not hash again (a wrong digest is refused, so it is the one compared)."""
    manifest, blob = _blob()
    header_sha = json.loads(bytes(blob[8 : 8 + int.from_bytes(blob[4:8], "big")]))["sha256"]
    decode_checked(manifest, blob, node="edge1", job="j", payload_sha256=header_sha)  # type: ignore[arg-type]
    with pytest.raises(UpdateRejectedError, match="sha256"):
        decode_checked(manifest, blob, node="edge1", job="j", payload_sha256="0" * 64)  # type: ignore[arg-type]
