"""The fold's arithmetic: ``total += float64(update) * weight`` in place, in cache-sized blocks.

Kept apart from the strategies so the one place that must match the pure fold bit for bit is small.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BLOCK", "add_weighted", "weighted_sum"]

F64 = npt.NDArray[np.float64]

# Elements folded per block by `add_weighted`: the float64 temporary of a block (512 KiB) stays in the
# CPU cache, so an update and the accumulator are each streamed through memory once.
BLOCK = 1 << 16


def add_weighted(total: F64, array: npt.NDArray[Any], weight: float, scratch: F64 | None = None) -> None:
    """``total += float64(array) * weight`` in place, block by block through `scratch` (a float64 buffer).

    The same two roundings per element as the pure fold's ``np.add(total, np.multiply(float64(array),
    weight))``, so the result is equal bit for bit, without a temporary of the tensor's size."""
    flat_total = total.reshape(-1)
    flat = np.asarray(array).reshape(-1)
    if scratch is None or scratch.size == 0:
        scratch = np.empty(min(BLOCK, max(1, flat.size)), dtype=np.float64)
    step = scratch.size
    for start in range(0, flat.size, step):
        stop = min(start + step, flat.size)
        buffer = scratch[: stop - start]
        # dtype=float64: the product is computed in float64 (a float32 update times a Python float would
        # otherwise be multiplied in float32 and only then widened).
        np.multiply(flat[start:stop], weight, out=buffer, dtype=np.float64)
        np.add(flat_total[start:stop], buffer, out=flat_total[start:stop])


def weighted_sum(total: F64, array: npt.NDArray[Any], weight: float) -> F64:
    """A new writable ``float64(array) * weight + total`` (the first fold of a round)."""
    out: F64 = np.multiply(np.asarray(array), weight, dtype=np.float64)
    np.add(out, total, out=out)
    return out
