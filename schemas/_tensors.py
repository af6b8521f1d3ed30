"""The weights codec: model weights as binary tensors behind a small typed header.

A blob is::

    b"FLW1" | u32 big-endian header length | header (UTF-8 JSON, `WeightsHeader`) | tensor bytes

The tensor bytes are each tensor's little-endian, C-order bytes, one after another, in header order.
The header names every tensor with its dtype and shape, says who sent it for which job and round,
and carries the SHA-256 of the tensor bytes. A tensor spec may also name an ``encoding``
(`schemas._encoding`: float16, int8, top-k; optionally a delta from the base model the update was trained
from): its dtype and shape are then what it decodes to, and its stored bytes are the encoding's. A spec
without one is raw, as in every blob written before encodings existed; the header of a raw blob is
byte for byte what it was (absent fields are not written). The blob is within a kilobyte or two of the raw
float32 size (Sedna's JSON float lists are about five times larger) and is never pickled.

This is the one module of the contract that needs numpy: the codec is part of the wire format.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas._encoding import TensorEncoding, decode_tensor, encode_tensor, stored_bytes
from schemas._errors import WireError

MAGIC = b"FLW1"
_PREFIX = struct.Struct(">4sI")
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 100_000
MAX_DIMS = 8
# FedAvg weights each update by its sample count: one absurd count would outweigh every other edge.
# No edge inspection dataset comes near a billion images.
MAX_NUM_SAMPLES = 10**9

DType = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "bool"]
# "partial": a site aggregator's partial aggregate of a hierarchical job (the weighted mean of its site's
# updates, `num_samples` their total, `WeightsHeader.parts` the per-edge breakdown).
WeightsKind = Literal["init", "update", "global", "partial"]
# Edges one partial aggregate may cover (schemas.MAX_TRAINING_WORKERS per job; a site holds at most all of them).
MAX_PARTS = 1000


class PartShare(BaseModel):
    """One edge's share of a partial aggregate: its node and the sample count its update was folded with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node: str = Field(min_length=1, max_length=253)
    samples: int = Field(ge=1, le=MAX_NUM_SAMPLES, strict=True)


class TensorSpec(BaseModel):
    """One tensor's name, dtype and shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=512)
    dtype: DType
    # Dimensions are >= 0. A negative one made `payload_bytes` negative, so a header could balance
    # a bad dimension against another tensor and reach numpy, which raised ValueError instead of
    # WireError (found and fixed in test review).
    shape: tuple[Annotated[int, Field(ge=0)], ...] = Field(max_length=MAX_DIMS)
    encoding: TensorEncoding | None = None  # None: raw bytes

    @model_validator(mode="after")
    def _encodable(self) -> Self:
        if self.encoding is not None:
            if not self.dtype.startswith("float"):
                raise ValueError(f"only floating-point tensors are encoded, not {self.dtype}")
            if self.encoding.count is not None and self.encoding.count > self.size:
                raise ValueError(f"top-k count {self.encoding.count} exceeds the tensor's {self.size} elements")
        return self

    @property
    def size(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        """The tensor's decoded size in bytes."""
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def stored_bytes(self) -> int:
        """What the tensor takes in the payload: its raw bytes, or its encoding's."""
        return self.nbytes if self.encoding is None else stored_bytes(self.encoding, self.size)


class WeightsHeader(BaseModel):
    """The typed header in front of the tensor bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    version: Literal[1] = 1
    kind: WeightsKind
    job: str
    # Strict: JSON `true` is not round 1 (lax pydantic coerces it, and True == 1 passes the round checks).
    round: int = Field(ge=0, strict=True)
    sender: str
    num_samples: int = Field(ge=0, le=MAX_NUM_SAMPLES, alias="numSamples", strict=True)
    tensors: tuple[TensorSpec, ...] = Field(max_length=MAX_TENSORS)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime = Field(alias="createdAt")
    # A partial aggregate's per-edge breakdown (kind "partial" only; absent from every other blob, whose
    # header is byte for byte what it was). It rides in the blob, so a spooled partial keeps it.
    parts: tuple[PartShare, ...] | None = Field(default=None, max_length=MAX_PARTS)

    @model_validator(mode="after")
    def _parts_match(self) -> Self:
        if (self.kind == "partial") != (self.parts is not None):
            raise ValueError("a partial aggregate, and only one, lists its parts")
        if self.parts is not None:
            nodes = [p.node for p in self.parts]
            if not nodes or len(set(nodes)) != len(nodes):
                raise ValueError(f"a partial aggregate lists each edge once, at least one: {nodes}")
            total = sum(p.samples for p in self.parts)
            if total != self.num_samples:
                raise ValueError(f"the parts' samples add up to {total}, the header says numSamples={self.num_samples}")
        return self

    @property
    def payload_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors)

    @property
    def encoded(self) -> bool:
        """Some tensor is stored encoded (not its raw bytes)."""
        return any(t.encoding is not None for t in self.tensors)

    @property
    def needs_base(self) -> bool:
        """Some tensor is a delta: decoding it needs the base model (`decode_weights`' `base`)."""
        return any(t.encoding is not None and t.encoding.delta for t in self.tensors)

    def to_json(self) -> bytes:
        # Absent fields (a raw tensor's encoding) are left out: a raw blob's header is what it always was.
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    def layout(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """Names, dtypes and shapes: what two blobs must share to be averaged together."""
        return tuple((t.name, t.dtype, t.shape) for t in self.tensors)


def tensor_specs(arrays: Sequence[npt.NDArray[np.generic]], names: Sequence[str] | None = None) -> list[TensorSpec]:
    """Describe arrays; unnamed tensors are called ``w0``, ``w1``, ... in order."""
    if names is not None and len(names) != len(arrays):
        raise WireError("weights", f"{len(names)} names for {len(arrays)} tensors")
    specs = []
    for i, arr in enumerate(arrays):
        dtype = np.dtype(arr.dtype).name
        try:
            specs.append(TensorSpec(name=names[i] if names else f"w{i}", dtype=dtype, shape=arr.shape))
        except ValidationError as exc:
            raise WireError("weights", f"tensor {i}: unsupported dtype or shape ({dtype}, {arr.shape})") from exc
    return specs


def encode_weights(
    arrays: Sequence[npt.NDArray[np.generic]],
    *,
    kind: WeightsKind,
    job: str,
    round_: int,
    sender: str,
    num_samples: int,
    names: Sequence[str] | None = None,
    float16: bool = False,
    parts: Sequence[PartShare] | None = None,
) -> bytes:
    """Encode arrays as a blob. The arrays are copied once into the payload, little-endian, C order.

    `float16`: floating-point tensors are stored as half precision (a compressed global model); they
    decode to their own dtype again. `parts`: a partial aggregate's per-edge breakdown (kind "partial")."""
    specs = tensor_specs(arrays, names)
    digest = hashlib.sha256()
    payload: list[bytes] = []
    for i, (spec, arr) in enumerate(zip(specs, arrays, strict=True)):
        if float16 and spec.dtype.startswith("float"):
            encoding, data, _ = encode_tensor(np.asarray(arr, dtype=np.float64), "float16", delta=False)
            specs[i] = spec.model_copy(update={"encoding": encoding})
        else:
            data = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype).newbyteorder("<")).tobytes()
        digest.update(data)
        payload.append(data)
    header = WeightsHeader(
        kind=kind,
        job=job,
        round=round_,
        sender=sender,
        num_samples=num_samples,
        tensors=tuple(specs),
        sha256=digest.hexdigest(),
        created_at=datetime.now(UTC),
        parts=tuple(parts) if parts is not None else None,
    )
    return join_blob(header, payload)


def join_blob(header: WeightsHeader, parts: Sequence[bytes]) -> bytes:
    """The blob of `header` and its tensors' stored bytes (`header.sha256` must be theirs)."""
    head = header.to_json()
    return b"".join([_PREFIX.pack(MAGIC, len(head)), head, *parts])


def weights_payload_offset(first: bytes | bytearray | memoryview) -> int | None:
    """Where a weights blob's tensor bytes start, read off its first bytes (the 8-byte prefix suffices), or
    None when they are not a weights blob's: a receiver hashes the payload as the chunks arrive, and
    `read_header`'s checks follow once the blob is whole."""
    view = memoryview(first).cast("B")
    if len(view) < _PREFIX.size:
        return None
    magic, head_len = _PREFIX.unpack_from(view)
    if magic != MAGIC or head_len > MAX_HEADER_BYTES:
        return None
    return int(_PREFIX.size + head_len)


def read_header(blob: bytes | bytearray | memoryview) -> tuple[WeightsHeader, int]:
    """Parse and check the header; return it and the offset of the tensor bytes."""
    view = memoryview(blob).cast("B")
    if len(view) < _PREFIX.size:
        raise WireError("weights", f"blob of {len(view)} bytes is shorter than its {_PREFIX.size}-byte prefix")
    magic, head_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError("weights", f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if head_len > MAX_HEADER_BYTES or _PREFIX.size + head_len > len(view):
        raise WireError("weights", f"header length {head_len} does not fit the blob of {len(view)} bytes")
    start = _PREFIX.size + head_len
    try:
        header = WeightsHeader.model_validate_json(bytes(view[_PREFIX.size : start]))
    except ValidationError as exc:
        raise WireError("weights header", _first_error(exc)) from exc
    if header.payload_bytes != len(view) - start:
        raise WireError(
            "weights",
            f"tensors declare {header.payload_bytes} bytes but the blob carries {len(view) - start}",
        )
    return header, start


def decode_weights(
    blob: bytes | bytearray | memoryview,
    *,
    verify: bool = True,
    base: Sequence[npt.NDArray[np.generic]] | None = None,
) -> tuple[WeightsHeader, list[npt.NDArray[np.generic]]]:
    """Decode a blob into its header and arrays (an encoded tensor decodes into an array of its own).

    Raw tensors are read-only views on the blob itself when nobody can change it (``bytes``, or a read-only
    memoryview such as `broker.CompletedTransfer.view`): no copy, so a 100 MB model is not held twice. A
    writable buffer is copied first, so the arrays never change under the caller. `base`: the model a
    delta-encoded blob is relative to."""
    header, offset = read_header(blob)
    view = memoryview(blob).cast("B")
    payload = view[offset:] if view.readonly else memoryview(bytes(view[offset:]))
    if verify and hashlib.sha256(payload).hexdigest() != header.sha256:
        raise WireError("weights", "tensor bytes do not match the header's sha256")
    return header, decode_tensors(header, payload, base=base)


def decode_tensors(
    header: WeightsHeader, payload: memoryview, *, base: Sequence[npt.NDArray[np.generic]] | None = None
) -> list[npt.NDArray[np.generic]]:
    """The tensors of `payload` (a blob's bytes after its header): raw ones as read-only views on it (no
    copy), encoded ones decoded to their spec's dtype and shape, a delta added to `base`'s tensor."""
    if header.needs_base:
        if base is None:
            raise WireError("weights", f"the {header.kind} of round {header.round} holds deltas; no base model given")
        if len(base) != len(header.tensors):
            raise WireError("weights", f"{len(header.tensors)} tensors, the base model has {len(base)}")
    arrays: list[npt.NDArray[np.generic]] = []
    pos = 0
    for i, spec in enumerate(header.tensors):
        data = payload[pos : pos + spec.stored_bytes]
        pos += spec.stored_bytes
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        if spec.encoding is None:
            arrays.append(np.frombuffer(data, dtype=dtype, count=spec.size).reshape(spec.shape))
            continue
        try:
            values = decode_tensor(spec.encoding, data, spec.size).reshape(spec.shape)
        except ValueError as exc:
            raise WireError("weights", f"tensor {i} ({spec.name}): {exc}") from exc
        if spec.encoding.delta:
            assert base is not None  # checked above
            if np.shape(base[i]) != spec.shape:
                raise WireError("weights", f"tensor {i} ({spec.name}) is {spec.shape}, its base {np.shape(base[i])}")
            values = values + np.asarray(base[i], dtype=np.float64)
        with np.errstate(over="ignore"):  # a value past the dtype's range becomes inf: refused as non-finite
            array = values.astype(dtype)
        array.flags.writeable = False
        arrays.append(array)
    return arrays


def weights_digest(arrays: Sequence[npt.NDArray[np.generic]]) -> str:
    """SHA-256 over the tensors' canonical bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for arr in arrays:
        digest.update(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def header_json(header: WeightsHeader) -> str:
    """The header as readable JSON (for logs and `mosquitto_sub`-style debugging)."""
    return json.dumps(header.model_dump(mode="json", by_alias=True), indent=2)
