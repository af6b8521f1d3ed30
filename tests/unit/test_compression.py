"""Update compression in the weights codec: float16, int8 and top-k round-trips within their stated error,
top-k's error feedback, raw blobs unchanged, and encoded blobs that lie refused (schemas only)."""

from __future__ import annotations

import json
import struct

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_trainer.engine import Residuals
from schemas import (
    WireError,
    compress_update,
    decode_weights,
    encode_weights,
    read_header,
    update_compression,
)

Arrays = list[npt.NDArray[np.generic]]

finite32 = st.floats(-1e3, 1e3, allow_nan=False, width=32)
tensors = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12), elements=finite32)


def blob_of(arrays: Arrays, round_: int = 2) -> bytes:
    return encode_weights(arrays, kind="update", job="j", round_=round_, sender="e1", num_samples=5)


@settings(max_examples=60, deadline=None)
@given(base=tensors, data=st.data())
def test_float16_and_int8_decode_within_their_stated_error(base: npt.NDArray[np.float32], data: st.DataObject) -> None:
    """float16: each delta within half a float16 ulp (relative 2**-11, or 2**-25 absolute near zero);
    int8: within scale / 2 = (max - min) / 510 of the tensor's delta; plus the float32 rounding of the sum and
    the float64 rounding of the delta."""
    update = data.draw(hnp.arrays(np.float32, base.shape, elements=finite32))
    true_delta = update.astype(np.float64) - base.astype(np.float64)
    for codec in ("float16", "int8"):
        blob, residual = compress_update(blob_of([update]), [base], codec)
        assert residual is None
        header, [decoded] = decode_weights(blob, base=[base])
        assert decoded.dtype == np.float32 and decoded.shape == update.shape
        assert header.layout() == (("w0", "float32", update.shape),)  # the layout is what it decodes to
        error = np.abs(decoded.astype(np.float64) - update.astype(np.float64))
        # the cast of base + delta to float32 rounds by half an ulp of the result, and the delta itself is a
        # float64 (update - base): near update ~ 0 with base ~ 1 that rounding, an ulp of the base in float64,
        # is what is left (found by hypothesis on a fresh clone: base 1, update 3.6e-15, error 3.3e-17)
        ulp32 = np.spacing(np.maximum(np.abs(update), np.abs(decoded)).astype(np.float32)).astype(np.float64)
        ulp32 = ulp32 + np.spacing(np.abs(base).astype(np.float64))
        if codec == "float16":
            bound = np.maximum(np.abs(true_delta) * 2.0**-11, 2.0**-25)
        else:
            bound = np.full(true_delta.shape, (true_delta.max() - true_delta.min()) / 510 * (1 + 1e-9))
        assert (error <= bound + 2 * ulp32).all(), (codec, float(error.max()))


def test_bytes_on_the_wire_per_codec() -> None:
    """A 100k-parameter float32 model: 0.5x, 0.25x and (1 % top-k, 8 bytes an entry) 0.02x, plus the header."""
    rng = np.random.default_rng(1)
    base = [rng.normal(size=(250, 400)).astype(np.float32)]
    raw = blob_of([base[0] + rng.normal(scale=0.01, size=(250, 400)).astype(np.float32)])
    sizes = {codec: len(compress_update(raw, base, codec)[0]) / len(raw) for codec in ("float16", "int8", "topk")}
    assert 0.5 < sizes["float16"] <= 0.51
    assert 0.25 < sizes["int8"] <= 0.26
    assert 0.02 < sizes["topk"] <= 0.03


def test_non_float_tensors_pass_unchanged() -> None:
    base: Arrays = [np.zeros(4, np.float32), np.arange(3, dtype=np.int64)]
    update: Arrays = [np.ones(4, np.float32), np.array([7, 8, 9], np.int64)]
    blob, _ = compress_update(blob_of(update), base, "int8")
    header, arrays = decode_weights(blob, base=base)
    assert header.tensors[1].encoding is None and header.tensors[0].encoding is not None
    assert arrays[1].tolist() == [7, 8, 9]


def test_top_k_error_feedback_carries_the_residual() -> None:
    """Over five rounds, what was sent plus the residual left equals the sum of the true deltas, and every
    round sends exactly ceil(fraction * n) entries per tensor."""
    rng = np.random.default_rng(7)
    shapes = [(20, 10), (7,)]
    model: Arrays = [rng.normal(size=s).astype(np.float32) for s in shapes]
    sent_total = [np.zeros(s) for s in shapes]
    true_total = [np.zeros(s) for s in shapes]
    residual = None
    for round_ in range(1, 6):
        trained = [m + rng.normal(scale=0.1, size=m.shape).astype(np.float32) for m in model]
        for i, (a, m) in enumerate(zip(trained, model, strict=True)):
            true_total[i] += a.astype(np.float64) - m.astype(np.float64)
        blob, residual = compress_update(blob_of(trained, round_), model, "topk", fraction=0.05, residual=residual)
        header, _ = read_header(blob)
        assert [t.encoding.count for t in header.tensors if t.encoding] == [10, 1]
        # The sparse deltas themselves (what the aggregator adds to its base), from a zero base:
        _, sparse = decode_weights(blob, base=[np.zeros(s) for s in shapes])
        for i, d in enumerate(sparse):
            sent_total[i] += d.astype(np.float64)
            assert np.count_nonzero(d) <= max(1, int(np.ceil(0.05 * d.size)))
        model = trained  # the next round trains from a model; any one will do for the identity
        assert residual is not None
        for s, r, t in zip(sent_total, residual, true_total, strict=True):
            np.testing.assert_allclose(s + r, t, rtol=0, atol=1e-6)


def test_top_k_keeps_the_largest_changes() -> None:
    base: Arrays = [np.zeros(10, np.float32)]
    update: Arrays = [np.array([0, 5, 0, -9, 1, 0, 0, 2, 0, 0], np.float32)]
    blob, residual = compress_update(blob_of(update), base, "topk", fraction=0.2)
    _, [decoded] = decode_weights(blob, base=base)
    assert decoded.tolist() == [0, 5, 0, -9, 0, 0, 0, 0, 0, 0]
    assert residual is not None and residual[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 2, 0, 0]


def test_a_raw_blob_is_written_as_before_encodings_existed() -> None:
    """No `encoding` key in a raw blob's header, and a header written without one decodes as raw."""
    blob = blob_of([np.arange(3, dtype=np.float32)])
    _, offset = read_header(blob)
    spec = json.loads(blob[8:offset])["tensors"][0]
    assert spec == {"name": "w0", "dtype": "float32", "shape": [3]}
    assert decode_weights(blob)[1][0].tolist() == [0, 1, 2]


def test_a_delta_needs_its_base() -> None:
    blob, _ = compress_update(blob_of([np.ones(3, np.float32)]), [np.zeros(3, np.float32)], "float16")
    with pytest.raises(WireError, match="holds deltas; no base model given"):
        decode_weights(blob)
    with pytest.raises(WireError, match="base"):
        decode_weights(blob, base=[np.zeros(4, np.float32)])
    with pytest.raises(WireError, match="encoded already"):
        compress_update(blob, [np.zeros(3, np.float32)], "int8")


def _rewrite(blob: bytes, edit: dict[str, object], payload: bytes | None = None) -> bytes:
    """`blob` with its first tensor's encoding fields replaced (and its payload, sha256 left stale)."""
    _, offset = read_header(blob)
    head = json.loads(blob[8:offset])
    head["tensors"][0]["encoding"] = {**head["tensors"][0].get("encoding", {}), **edit}
    data = json.dumps(head).encode()
    return struct.pack(">4sI", b"FLW1", len(data)) + data + (blob[offset:] if payload is None else payload)


def test_encodings_that_lie_are_refused() -> None:
    base: Arrays = [np.zeros(4, np.float32)]
    topk, _ = compress_update(blob_of([np.array([1, 2, 3, 4], np.float32)]), base, "topk", fraction=0.5)
    _, offset = read_header(topk)
    swapped = struct.pack("<2I", 3, 2) + topk[offset + 8 :]
    with pytest.raises(WireError, match="ascending"):
        decode_weights(_rewrite(topk, {}, swapped), verify=False, base=base)
    with pytest.raises(WireError, match="exceeds"):
        decode_weights(_rewrite(topk, {"count": 5}), verify=False, base=base)
    int8, _ = compress_update(blob_of([np.ones(4, np.float32)]), base, "int8")
    with pytest.raises(WireError, match="int8 needs scale"):
        decode_weights(_rewrite(int8, {"scale": None}), base=base)
    ints = blob_of([np.ones(4, np.int32)])
    with pytest.raises(WireError, match="only floating-point"):
        decode_weights(_rewrite(ints, {"codec": "float16"}), base=base)


def test_compression_parameters() -> None:
    assert update_compression({}) == (None, 0.01)
    assert update_compression({"compression": "none"}) == (None, 0.01)
    assert update_compression({"COMPRESSION": "TopK", "topk_fraction": "0.05"}) == ("topk", 0.05)
    assert update_compression({"compression": "int8", "topk_fraction": "2"}) == ("int8", 0.01)


def test_residuals_persist_per_run(tmp_path: object) -> None:
    from pathlib import Path

    residuals = Residuals(Path(str(tmp_path)))
    assert residuals.load("job", "uid1") is None
    arrays = [np.arange(6, dtype=np.float64).reshape(2, 3), np.zeros(0)]
    residuals.save("job", "uid1", 3, arrays)
    loaded = residuals.load("job", "uid1")
    assert loaded is not None and [a.tolist() for a in loaded] == [a.tolist() for a in arrays]
    assert residuals.load("job", "uid2") is None  # another run's residual is not ours
    residuals.path("job").write_bytes(b"torn")
    assert residuals.load("job", "uid1") is None  # unreadable: start from zero
    residuals.clear("job")
    assert not residuals.path("job").exists()
