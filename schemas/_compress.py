"""Update compression: a raw update blob rewritten as the encoded delta from the model it was trained from.

The edge's node service calls `compress_update` on the blob its training script sent (the script needs
no change); the aggregator decodes with `decode_weights(blob, base=...)`, `base` being the global model
of the update's round - 1 (what the edge handed to the script). Only floating-point tensors are encoded;
the header keeps every other field of the script's blob (job, round, sender, samples, creation time).

Top-k keeps *error feedback*: what a round did not send (its delta plus the carried residual, minus the
kept entries) is the `residual` the next round adds before choosing its top entries, so every change is
sent eventually. Over any number of rounds, the sum of what was sent plus the residual equals the sum of
the true deltas (up to float64 rounding). float16 and int8 carry no residual: their error is bounded per
value (`schemas._encoding`) and unbiased enough for FedAvg (measured in benchmarks/compression.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import cast, get_args

import numpy as np
import numpy.typing as npt

from schemas._encoding import Codec, encode_tensor
from schemas._errors import WireError
from schemas._tensors import decode_weights, join_blob, read_header

__all__ = ["DEFAULT_TOPK_FRACTION", "compress_update", "update_compression"]

Residual = list[npt.NDArray[np.float64]]


def compress_update(
    blob: bytes,
    base: Sequence[npt.NDArray[np.generic]],
    codec: Codec,
    *,
    fraction: float = 0.01,
    residual: Sequence[npt.NDArray[np.float64]] | None = None,
) -> tuple[bytes, Residual | None]:
    """`blob` (raw weights) as `codec`-encoded deltas from `base`; for top-k also the new residual.

    `fraction`: top-k's share of each tensor's entries kept (at least one). `residual`: top-k's carried
    residual (None or a different layout: start from zero). Raises WireError when `blob` is not a raw blob
    of `base`'s layout."""
    if read_header(blob)[0].encoded:
        raise WireError("weights", "the blob is encoded already")
    header, arrays = decode_weights(blob)
    if len(arrays) != len(base):
        raise WireError("weights", f"{len(arrays)} tensors, the base model has {len(base)}")
    carried = residual if residual is not None and _fits(residual, arrays) else None
    specs = list(header.tensors)
    parts: list[bytes] = []
    left: Residual = []
    digest = hashlib.sha256()
    for i, (spec, array) in enumerate(zip(header.tensors, arrays, strict=True)):
        if np.shape(base[i]) != array.shape:
            raise WireError(
                "weights", f"tensor {i} ({spec.name}) is {array.shape}, the base model's {np.shape(base[i])}"
            )
        if array.dtype.kind != "f":
            data = array.tobytes()
            left.append(np.zeros(0))
        else:
            delta = np.asarray(array, dtype=np.float64) - np.asarray(base[i], dtype=np.float64)
            if carried is not None:
                delta = delta + carried[i]
            encoding, data, sent = encode_tensor(delta, codec, delta=True, fraction=fraction)
            specs[i] = spec.model_copy(update={"encoding": encoding})
            left.append((delta.reshape(-1) - sent).reshape(array.shape))
        digest.update(data)
        parts.append(data)
    encoded = header.model_copy(update={"tensors": tuple(specs), "sha256": digest.hexdigest()})
    return join_blob(encoded, parts), (left if codec == "topk" else None)


def _fits(residual: Sequence[npt.NDArray[np.float64]], arrays: Sequence[npt.NDArray[np.generic]]) -> bool:
    return len(residual) == len(arrays) and all(
        r.shape == a.shape for r, a in zip(residual, arrays, strict=True) if a.dtype.kind == "f"
    )


DEFAULT_TOPK_FRACTION = 0.01


def update_compression(parameters: Mapping[str, str]) -> tuple[Codec | None, float]:
    """A training worker's update encoding from its parameters (``compression``, ``topk_fraction``; either
    spelling, as `Context.get_parameters` reads them): (None: raw, top-k's fraction). Spec validation checked
    the values (`PARAMETER_CHOICES`, `PARAMETER_BOUNDS`); anything else here means raw / the default."""
    lowered = {k.lower(): v for k, v in parameters.items() if k in (k.lower(), k.upper())}
    codec = str(lowered.get("compression", "none")).strip().lower()
    try:
        fraction = float(lowered.get("topk_fraction", DEFAULT_TOPK_FRACTION))
    except ValueError:
        fraction = DEFAULT_TOPK_FRACTION
    if not 0 < fraction <= 1:
        fraction = DEFAULT_TOPK_FRACTION
    return (cast(Codec, codec) if codec in get_args(Codec) else None), fraction
