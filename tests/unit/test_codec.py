"""The weights codec: `schemas._tensors` (docs/architecture.md, "Weights blob")."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas import TensorSpec, WeightsHeader, WireError, decode_weights, encode_weights, read_header, weights_digest

Arrays = list[npt.NDArray[Any]]

MAGIC = b"FLW1"
DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
# Sedna's surface-defect-detection model: kernel and bias of its two Conv2D and three Dense layers.
SDD_SHAPES = [(3, 3, 3, 64), (64,), (3, 3, 64, 32), (32,), (6272, 64), (64,), (64, 32), (32,), (32, 2), (2,)]
SDD_PARAMS = 423_874
SDD_BYTES = 1_695_496
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(arrays: Arrays, **overrides: Any) -> bytes:
    kwargs: dict[str, Any] = {"kind": "update", "job": "sdd", "round_": 2, "sender": "edge1", "num_samples": 522}
    kwargs.update(overrides)
    return encode_weights(arrays, **kwargs)


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The header as plain JSON data, and the tensor bytes."""
    (length,) = struct.unpack(">I", blob[4:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join(header: dict[str, Any] | bytes, payload: bytes) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + payload


def sample_arrays() -> Arrays:
    return [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([1, -2, 3], dtype=np.int16),
        np.array(7.5, dtype=np.float64),
        np.array([0, 255, 7, 9], dtype=np.uint8),
    ]


def assert_bit_identical(got: Arrays, want: Arrays) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert g.dtype.name == w.dtype.name
        assert g.tobytes() == np.ascontiguousarray(w, dtype=w.dtype.newbyteorder("<")).tobytes()


def decode_error(blob: bytes) -> WireError:
    with pytest.raises(WireError) as info:
        decode_weights(blob)
    return info.value


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4), (3, 0, 2), (1, 1, 1, 1, 1, 1, 1, 1)], ids=str)
def test_round_trip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    """Arrays of every supported dtype and shape (0-d and empty dims too) decode bit-identically."""
    # Arrange
    rng = np.random.default_rng(7)
    array = (rng.standard_normal(shape) * 100).astype(dtype)

    # Act
    header, arrays = decode_weights(encode([array]))

    # Assert
    assert_bit_identical(arrays, [array])
    assert header.tensors == (TensorSpec(name="w0", dtype=dtype, shape=shape),)


def test_round_trip_several_tensors_with_names() -> None:
    """Several tensors keep their order, names, dtypes and shapes."""
    # Arrange
    arrays = sample_arrays()
    names = ["dense/kernel", "dense/bias", "scale", "lut"]

    # Act
    header, decoded = decode_weights(encode(arrays, names=names))

    # Assert
    assert_bit_identical(decoded, arrays)
    assert [t.name for t in header.tensors] == names
    assert header.layout() == (
        ("dense/kernel", "float32", (2, 3)),
        ("dense/bias", "int16", (3,)),
        ("scale", "float64", ()),
        ("lut", "uint8", (4,)),
    )


def test_round_trip_no_tensors() -> None:
    """A blob with no tensors round-trips to an empty list."""
    # Arrange
    arrays: Arrays = []

    # Act
    header, decoded = decode_weights(encode(arrays))

    # Assert
    assert decoded == []
    assert header.payload_bytes == 0
    assert header.sha256 == hashlib.sha256(b"").hexdigest()


def test_big_endian_and_strided_inputs_are_canonicalised() -> None:
    """Big-endian and non-contiguous arrays encode to the same blob payload as their plain copies."""
    # Arrange
    plain: Arrays = [np.arange(12, dtype=np.float32).reshape(3, 4).T.copy(), np.arange(5, dtype=np.int64)]
    odd: Arrays = [np.arange(12, dtype=np.float32).reshape(3, 4).T, np.arange(5, dtype=">i8")]

    # Act
    _, from_plain = decode_weights(encode(plain))
    header, from_odd = decode_weights(encode(odd))

    # Assert
    assert_bit_identical(from_odd, plain)
    assert_bit_identical(from_plain, plain)
    assert header.layout() == (("w0", "float32", (4, 3)), ("w1", "int64", (5,)))


def test_decoded_arrays_are_read_only() -> None:
    """Decoded arrays are read-only views: nobody edits a received model in place by accident."""
    # Arrange
    blob = encode(sample_arrays())

    # Act
    _, arrays = decode_weights(blob)

    # Assert
    assert not any(a.flags.writeable for a in arrays)


def test_header_fields() -> None:
    """The header carries version, kind, job, round, sender, samples, tensors, sha256 and time."""
    # Arrange
    arrays = sample_arrays()
    before = datetime.now(UTC)

    # Act
    blob = encode(arrays, kind="global", job="surface-defect-detection", round_=3, sender="cloud0", num_samples=1045)
    header, offset = read_header(blob)

    # Assert
    assert blob[:4] == MAGIC
    assert (header.version, header.kind, header.job, header.round) == (1, "global", "surface-defect-detection", 3)
    assert (header.sender, header.num_samples) == ("cloud0", 1045)
    assert header.payload_bytes == sum(a.nbytes for a in arrays) == len(blob) - offset
    assert header.sha256 == hashlib.sha256(blob[offset:]).hexdigest()
    assert header.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= header.created_at <= datetime.now(UTC)


def test_header_is_camel_case_json() -> None:
    """The header on the wire is readable camelCase JSON."""
    # Arrange
    blob = encode(sample_arrays())

    # Act
    header, _ = split(blob)

    # Assert
    assert set(header) == {"version", "kind", "job", "round", "sender", "numSamples", "tensors", "sha256", "createdAt"}
    assert header["tensors"][0] == {"name": "w0", "dtype": "float32", "shape": [2, 3]}


def test_sedna_model_blob_is_raw_size_plus_small_header() -> None:
    """The example model's 10 float32 tensors (423,874 params) make a blob within 1 % of 1,695,496 bytes."""
    # Arrange
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in SDD_SHAPES]
    names = [
        f"{layer}/{part}"
        for layer in ("conv2d", "conv2d_1", "dense", "dense_1", "dense_2")
        for part in ("kernel:0", "bias:0")
    ]

    # Act
    blob = encode(arrays, names=names, job="surface-defect-detection")
    header, offset = read_header(blob)

    # Assert
    assert sum(a.size for a in arrays) == SDD_PARAMS
    assert header.payload_bytes == SDD_BYTES
    assert len(blob) == SDD_BYTES + offset
    assert SDD_BYTES < len(blob) <= SDD_BYTES * 1.01
    assert offset < 2048


# -- encoding refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, np.complex64),
        np.array(["a"]),
        np.array([object()]),
        np.zeros(2, "datetime64[s]"),
        np.zeros((1,) * 9),
    ],
    ids=["complex64", "str", "object", "datetime64", "9 dims"],
)
def test_unsupported_arrays_are_refused(array: npt.NDArray[Any]) -> None:
    """Arrays of an unsupported dtype or more than 8 dimensions raise WireError when encoding."""
    # Arrange
    arrays = [np.zeros(1, np.float32), array]

    # Act
    with pytest.raises(WireError) as info:
        encode(arrays)

    # Assert
    assert str(info.value).startswith("weights: tensor 1: unsupported dtype or shape")


def test_name_count_mismatch_is_refused() -> None:
    """Giving more or fewer names than tensors raises WireError."""
    # Arrange
    arrays = sample_arrays()

    # Act
    with pytest.raises(WireError) as info:
        encode(arrays, names=["a"])

    # Assert
    assert str(info.value) == "weights: 1 names for 4 tensors"


# -- decoding refusals -------------------------------------------------------------------------


def test_bad_magic_is_refused() -> None:
    """A blob that does not start with FLW1 raises WireError naming the magic."""
    # Arrange
    blob = b"PK\x03\x04" + encode(sample_arrays())[4:]

    # Act
    err = decode_error(blob)

    # Assert
    assert str(err) == "weights: bad magic b'PK\\x03\\x04', expected b'FLW1'"


@pytest.mark.parametrize("keep", [0, 3, 7])
def test_blob_shorter_than_prefix_is_refused(keep: int) -> None:
    """A blob shorter than its 8-byte prefix raises WireError."""
    # Arrange
    blob = encode(sample_arrays())[:keep]

    # Act
    err = decode_error(blob)

    # Assert
    assert str(err) == f"weights: blob of {keep} bytes is shorter than its 8-byte prefix"


def test_truncated_header_is_refused() -> None:
    """A blob cut inside its header raises WireError: the header length does not fit."""
    # Arrange
    full = encode(sample_arrays())
    blob = full[:40]

    # Act
    err = decode_error(blob)

    # Assert
    assert "does not fit the blob of 40 bytes" in str(err)


def test_truncated_payload_is_refused() -> None:
    """A blob cut inside its tensor bytes raises WireError naming both sizes."""
    # Arrange
    full = encode(sample_arrays())
    blob = full[:-3]

    # Act
    err = decode_error(blob)

    # Assert
    assert str(err) == "weights: tensors declare 42 bytes but the blob carries 39"


def test_header_length_longer_than_blob_is_refused() -> None:
    """A header length that points past the end of the blob raises WireError."""
    # Arrange
    header, payload = split(encode(sample_arrays()))
    head = json.dumps(header).encode()
    blob = MAGIC + struct.pack(">I", len(head) + len(payload) + 1) + head + payload

    # Act
    err = decode_error(blob)

    # Assert
    assert f"header length {len(head) + len(payload) + 1} does not fit the blob" in str(err)


def test_header_length_over_limit_is_refused() -> None:
    """A header length over the 1 MiB limit raises WireError even if the blob is that long."""
    # Arrange
    blob = MAGIC + struct.pack(">I", (1 << 20) + 1) + b" " * ((1 << 20) + 1)

    # Act
    err = decode_error(blob)

    # Assert
    assert "header length 1048577 does not fit" in str(err)


def test_header_length_shorter_than_header_is_refused() -> None:
    """A header length that cuts the JSON short raises WireError about the header."""
    # Arrange
    header, payload = split(encode(sample_arrays()))
    head = json.dumps(header).encode()
    blob = MAGIC + struct.pack(">I", len(head) - 5) + head + payload

    # Act
    err = decode_error(blob)

    # Assert
    assert str(err).startswith("weights header: Invalid JSON")


def test_extra_payload_bytes_are_refused() -> None:
    """Tensor bytes longer than the header declares raise WireError naming both sizes."""
    # Arrange
    blob = encode(sample_arrays()) + b"\x00"

    # Act
    err = decode_error(blob)

    # Assert
    assert str(err) == "weights: tensors declare 42 bytes but the blob carries 43"


def test_payload_size_mismatch_from_header_shape_is_refused() -> None:
    """A header shape that disagrees with the tensor bytes raises WireError."""
    # Arrange
    header, payload = split(encode(sample_arrays()))
    header["tensors"][0]["shape"] = [3, 3]

    # Act
    err = decode_error(join(header, payload))

    # Assert
    assert str(err) == "weights: tensors declare 54 bytes but the blob carries 42"


def test_sha256_mismatch_is_refused() -> None:
    """Changed tensor bytes fail the header's sha256 with WireError; verify=False skips the check."""
    # Arrange
    blob = bytearray(encode(sample_arrays()))
    blob[-1] ^= 0x01

    # Act
    err = decode_error(bytes(blob))
    _, unchecked = decode_weights(bytes(blob), verify=False)

    # Assert
    assert str(err) == "weights: tensor bytes do not match the header's sha256"
    assert unchecked[3].tolist() == [0, 255, 7, 8]


@pytest.mark.parametrize("dtype", ["complex128", "float128", "object", "str", "<f4", ""])
def test_unknown_dtype_is_refused(dtype: str) -> None:
    """A header naming an unsupported dtype raises WireError naming the field."""
    # Arrange
    header, payload = split(encode(sample_arrays()))
    header["tensors"][0]["dtype"] = dtype

    # Act
    err = decode_error(join(header, payload))

    # Assert
    assert str(err).startswith("weights header: tensors.0.dtype: Input should be 'float16', 'float32'")


@pytest.mark.parametrize(
    "shapes",
    [[[-6]], [[0, -5]], [[-2, -3]], [[-1], [7]]],
    ids=["negative", "zero and negative", "two negatives", "negative balanced by another tensor"],
)
def test_negative_dimensions_are_refused(shapes: list[list[int]]) -> None:
    """Negative dimensions in a header raise WireError, never a numpy error."""
    # Arrange
    header, _ = split(encode([np.arange(6, dtype=np.float32)]))
    header["tensors"] = [{"name": f"w{i}", "dtype": "float32", "shape": s} for i, s in enumerate(shapes)]
    payload = np.arange(6, dtype=np.float32).tobytes()
    header["sha256"] = hashlib.sha256(payload).hexdigest()

    # Act
    err = decode_error(join(header, payload))

    # Assert
    assert "Input should be greater than or equal to 0" in str(err)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"{not json", "weights header: Invalid JSON"),
        (b"[]", "weights header: Input should be an object"),
        (b'{"a":"\xff"}', "weights header: Invalid JSON"),
        (b"{}", "weights header: kind: Field required"),
        (b"", "weights header: Invalid JSON"),
    ],
    ids=["not json", "array", "not utf-8", "empty object", "empty"],
)
def test_bad_header_json_is_refused(head: bytes, expected: str) -> None:
    """A header that is not a JSON header object raises WireError about the header."""
    # Arrange
    blob = join(head, b"")

    # Act
    err = decode_error(blob)

    # Assert
    assert str(err).startswith(expected)


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("version", 2, "version"),
        ("kind", "delta", "kind"),
        ("round", -1, "round"),
        ("numSamples", -5, "numSamples"),
        ("sha256", "ABC", "sha256"),
        ("createdAt", "yesterday", "createdAt"),
        ("extra", 1, "extra"),
    ],
)
def test_bad_header_fields_are_refused(field: str, value: Any, where: str) -> None:
    """A header field with a bad value, or an unknown field, raises WireError naming it."""
    # Arrange
    header, payload = split(encode(sample_arrays()))
    header[field] = value

    # Act
    err = decode_error(join(header, payload))

    # Assert
    assert str(err).startswith(f"weights header: {where}: ")


# -- weights_digest ----------------------------------------------------------------------------


def test_weights_digest_equal_for_equal_arrays() -> None:
    """Equal arrays (separate copies, any byte order) have equal digests."""
    # Arrange
    arrays = sample_arrays()
    copies = [a.copy() for a in arrays]
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in arrays]

    # Act
    digests = {weights_digest(arrays), weights_digest(copies), weights_digest(swapped)}

    # Assert
    assert len(digests) == 1
    assert len(digests.pop()) == 64


def test_weights_digest_changes_after_one_flipped_bit() -> None:
    """Flipping one bit of one tensor changes the digest."""
    # Arrange
    arrays = sample_arrays()
    flipped = [a.copy() for a in arrays]
    flipped[0].view(np.uint8).reshape(-1)[5] ^= 0x10  # one bit of w0[0, 1]

    # Act
    before, after = weights_digest(arrays), weights_digest(flipped)

    # Assert
    assert before != after


def test_weights_digest_survives_the_codec() -> None:
    """Decoded arrays have the digest of the arrays that were encoded."""
    # Arrange
    arrays = sample_arrays()

    # Act
    _, decoded = decode_weights(encode(arrays))

    # Assert
    assert weights_digest(decoded) == weights_digest(arrays)


# -- properties --------------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
any_array = st.sampled_from(DTYPES).flatmap(lambda dtype: hnp.arrays(np.dtype(dtype), shapes))


@SETTINGS
@given(arrays=st.lists(any_array, max_size=5), round_=st.integers(0, 10**6), samples=st.integers(0, 10**9))
def test_random_arrays_round_trip_bit_exactly(arrays: Arrays, round_: int, samples: int) -> None:
    """Any list of supported arrays decodes bit-exactly, with the header's round and sample count."""
    # Arrange
    blob = encode(arrays, round_=round_, num_samples=samples)

    # Act
    header, decoded = decode_weights(blob)

    # Assert
    assert_bit_identical(decoded, arrays)
    assert (header.round, header.num_samples) == (round_, samples)
    assert weights_digest(decoded) == weights_digest(arrays)


BASE_ARRAYS = sample_arrays()
BASE_BLOB = encode(BASE_ARRAYS)


@SETTINGS
@given(data=st.data())
def test_single_byte_mutation_decodes_identically_or_raises_wire_error(data: st.DataObject) -> None:
    """Changing any one byte of a blob gives the identical arrays or WireError, never another exception."""
    # Arrange
    position = data.draw(st.integers(0, len(BASE_BLOB) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != BASE_BLOB[position]), label="value")
    blob = bytearray(BASE_BLOB)
    blob[position] = value

    # Act
    try:
        _, decoded = decode_weights(bytes(blob))
    except WireError:
        return

    # Assert
    assert_bit_identical(decoded, BASE_ARRAYS)


@SETTINGS
@given(keep=st.integers(0, len(BASE_BLOB) - 1))
def test_truncation_always_raises_wire_error(keep: int) -> None:
    """Any truncation of a blob raises WireError."""
    # Arrange
    blob = BASE_BLOB[:keep]

    # Act
    with pytest.raises(WireError):
        decode_weights(blob)

    # Assert
    assert len(blob) < len(BASE_BLOB)


@SETTINGS
@given(
    edits=st.lists(st.tuples(st.integers(0, len(BASE_BLOB) - 1), st.binary(max_size=4)), min_size=1, max_size=4),
    keep=st.integers(0, len(BASE_BLOB) + 16),
)
def test_arbitrary_mutations_raise_only_wire_error(edits: list[tuple[int, bytes]], keep: int) -> None:
    """Random splices and truncations either decode or raise WireError, never another exception."""
    # Arrange
    blob = bytearray(BASE_BLOB)
    for position, replacement in edits:
        blob[position : position + 1] = replacement
    blob = blob[:keep]

    # Act
    try:
        header, decoded = decode_weights(bytes(blob))
    except WireError:
        return

    # Assert
    assert [a.shape for a in decoded] == [t.shape for t in header.tensors]
    assert isinstance(header, WeightsHeader)


def test_manifest_for_describes_a_richer_origin_by_its_origin_fields_only() -> None:
    """A subclass of TransferOrigin (the edge's UploadRequest also holds the blob) gives the same manifest as
    its plain origin: only the origin's fields reach the manifest (an extra one made every upload fail)."""
    from edge_trainer.engine import UploadRequest
    from schemas import TransferOrigin, manifest_for

    blob = b"weights" * 100
    origin = TransferOrigin("update", "job1", "uid1", 2, "edge1", 8)
    request = UploadRequest("update", "job1", "uid1", 2, "edge1", 8, run_id="run", blob=blob, chunk_size=64)

    plain = manifest_for(blob, origin, chunk_size=64, transfer="ab" * 8)
    rich = manifest_for(blob, request, chunk_size=64, transfer="ab" * 8)

    assert rich.model_dump(exclude={"created_at"}) == plain.model_dump(exclude={"created_at"})
    assert (rich.chunk_size, rich.chunks, rich.num_samples) == (64, 11, 8)
