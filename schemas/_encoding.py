"""Tensor encodings: how one tensor of a weights blob may be stored smaller than its raw bytes.

A tensor spec without an ``encoding`` holds its raw little-endian bytes (every blob before issue 11).
With one, the spec's dtype and shape are still what the tensor *decodes to*; its stored bytes are:

- ``float16``: the values (or the delta, below) cast to IEEE half precision, 2 bytes each;
- ``int8``: affine quantisation, 1 byte each: ``value = offset + scale * (q + 128)`` with ``scale =
  (max - min) / 255`` and ``offset = min`` of the tensor (both in the header, as JSON numbers); the error
  of one value is at most ``scale / 2``;
- ``topk``: ``count`` uint32 indices (ascending, into the flattened tensor) then ``count`` float32 values;
  every other element is zero.

``delta: true`` says the decoded values are a *change* from a base model the reader must hold: for an
update of round r, the global model of round r - 1 it was trained from. Decoding adds the base (in float64)
and casts to the spec's dtype. Only floating-point tensors are encoded; integer and bool tensors are raw.
"""

from __future__ import annotations

import math
from typing import Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Codec", "TensorEncoding", "decode_tensor", "encode_tensor", "stored_bytes"]

Codec = Literal["float16", "int8", "topk"]

_INDEX = np.dtype("<u4")
_VALUE = np.dtype("<f4")


class TensorEncoding(BaseModel):
    """How one tensor's bytes are stored (absent from a spec: raw)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    codec: Codec
    delta: bool = False
    scale: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # int8
    offset: float | None = Field(default=None, allow_inf_nan=False)  # int8
    count: int | None = Field(default=None, ge=0)  # topk: entries kept

    @model_validator(mode="after")
    def _parameters(self) -> Self:
        if self.codec == "int8" and (self.scale is None or self.offset is None):
            raise ValueError("int8 needs scale and offset")
        if self.codec == "topk" and self.count is None:
            raise ValueError("topk needs count")
        return self


def stored_bytes(encoding: TensorEncoding, size: int) -> int:
    """The bytes a tensor of `size` elements takes in the payload under `encoding`."""
    if encoding.codec == "float16":
        return 2 * size
    if encoding.codec == "int8":
        return size
    return (encoding.count or 0) * (_INDEX.itemsize + _VALUE.itemsize)


def encode_tensor(
    values: npt.NDArray[np.floating], codec: Codec, *, delta: bool, fraction: float = 0.01
) -> tuple[TensorEncoding, bytes, npt.NDArray[np.float64]]:
    """Encode `values` (float64, any shape): the encoding, its stored bytes, and what a reader decodes to.

    The third result is exact: what `decode_tensor` gives before any base is added, in float64 (the
    edge's error feedback subtracts it from what it meant to send)."""
    flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if codec == "float16":
        half = flat.astype("<f2")
        return TensorEncoding(codec="float16", delta=delta), half.tobytes(), half.astype(np.float64)
    if codec == "int8":
        low = float(flat.min()) if flat.size else 0.0
        high = float(flat.max()) if flat.size else 0.0
        scale = (high - low) / 255.0
        q = np.zeros(flat.shape, dtype=np.int16) if scale == 0 else np.rint((flat - low) / scale)
        q8 = (np.clip(q, 0, 255) - 128).astype("<i1")
        encoding = TensorEncoding(codec="int8", delta=delta, scale=scale, offset=low)
        return encoding, q8.tobytes(), _dequantise(q8, scale, low)
    count = min(flat.size, max(1, math.ceil(fraction * flat.size))) if flat.size else 0
    # argpartition picks the `count` largest magnitudes in O(n); ascending indices make the blob canonical.
    top = np.argpartition(np.abs(flat), flat.size - count)[flat.size - count :] if count else np.zeros(0, np.int64)
    index = np.sort(top).astype(_INDEX)
    kept = flat[index].astype(_VALUE)
    sent = np.zeros(flat.shape, dtype=np.float64)
    sent[index] = kept
    return TensorEncoding(codec="topk", delta=delta, count=count), index.tobytes() + kept.tobytes(), sent


def decode_tensor(encoding: TensorEncoding, data: memoryview | bytes, size: int) -> npt.NDArray[np.float64]:
    """The flat float64 values `data` holds under `encoding` (a delta still without its base)."""
    if encoding.codec == "float16":
        return np.frombuffer(data, dtype="<f2", count=size).astype(np.float64)
    if encoding.codec == "int8":
        q8 = np.frombuffer(data, dtype="<i1", count=size)
        return _dequantise(q8, encoding.scale or 0.0, encoding.offset or 0.0)
    count = encoding.count or 0
    index = np.frombuffer(data, dtype=_INDEX, count=count)
    kept = np.frombuffer(data, dtype=_VALUE, count=count, offset=count * _INDEX.itemsize)
    if count and (int(index.max()) >= size or bool((np.diff(index.astype(np.int64)) <= 0).any())):
        raise ValueError(f"top-k indices must be ascending and below {size}")
    out = np.zeros(size, dtype=np.float64)
    out[index] = kept
    return out


def _dequantise(q8: npt.NDArray[np.int8], scale: float, offset: float) -> npt.NDArray[np.float64]:
    return offset + scale * (q8.astype(np.float64) + 128.0)
