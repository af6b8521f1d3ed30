"""Fixed-point encoding of float updates into the ring secure aggregation masks in: integers mod 2**32.

Why a ring, and why this one:
- Masks cancel only under exact arithmetic: `x + m - m == x` bit for bit, which floats do not give (and a
  float mask would have to be huge to hide anything). So each edge encodes its update as integers mod M
  before masking, and the aggregator decodes only the unmasked sum.
- M = 2**32: numpy's uint32 adds and subtracts mod 2**32 by itself (no `%`, no int64 detours), a masked
  update is exactly as large on the wire as the float32 it replaces (4 bytes per value), and a
  keystream's 32-bit words are uniform mod M with no reduction bias (a prime field would need rejection
  sampling for uniform masks).
- Signed fixed point: a value x (clipped to [-clip, clip]) becomes round(x * scale) mod M, and a decoded
  word w >= 2**31 means w - 2**32. The sum of at most `max_parties` encodings must not wrap past ±2**31,
  so every encoded value is at most `limit = (2**31 - 1) // max_parties` in magnitude, `scale = limit /
  max(clip, 1)`, and any sum of up to `max_parties` encodings lies in [-(2**31 - 1), 2**31 - 1]: decoding
  is exact in the ring. (The max with 1 is for the weight slot below, which holds a ratio in (0, 1].)
- Error: rounding moves each value by at most 1 / (2 * scale) (`step / 2`), so a sum of n encodings
  decodes within n * step / 2 of the sum of the clipped values. With clip 1 and 10 parties, step is
  4.7e-9; with clip 8 and 1000 parties, 3.7e-6. Values beyond ±clip are clipped (for DP-clipped deltas,
  choose clip >= the L2 clip norm plus a few noise stds; an L2 bound C bounds every coordinate by C).

Weighted FedAvg: masking hides each update, so the aggregator cannot weigh them after the fact. An edge
with n_k samples multiplies its delta by `ratio = n_k / max_weight` (<= 1, so the clip bound still holds)
and sends the ratio as one extra value (`encode_weighted`); the unmasked sum is then [sum ratio_k * x_k,
sum ratio_k], and `decode_weighted_mean` divides the first by the second: the sample-weighted mean. An
edge with more than `max_weight` samples is refused (its ratio would pass 1); an equal-weight mean sends
ratio 1 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from runtime._errors import SecAggError

__all__ = ["SECAGG_MODULUS", "FixedPoint"]

SECAGG_MODULUS = 2**32
_HALF = 2**31


@dataclass(frozen=True)
class FixedPoint:
    """The encoding one job's edges and aggregator agree on: `clip` per value, sums of <= `max_parties`."""

    clip: float
    max_parties: int
    limit: int = field(init=False)
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise SecAggError(f"fixed point: clip must be a positive finite number, got {self.clip!r}")
        if not 1 <= self.max_parties <= 2**20:
            raise SecAggError(f"fixed point: max_parties must be in 1..{2**20}, got {self.max_parties}")
        limit = (_HALF - 1) // self.max_parties
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "scale", limit / max(self.clip, 1.0))

    @property
    def step(self) -> float:
        """The quantisation step: each encoded value is within step / 2 of its clipped input."""
        return 1.0 / self.scale

    def encode(self, values: ArrayLike) -> NDArray[np.uint32]:
        """A flat float vector (any shape is flattened) as ring elements; values clipped to [-clip, clip]."""
        return self._to_ring(self._clipped(values))

    def _clipped(self, values: ArrayLike) -> NDArray[np.float64]:
        array = np.asarray(values, dtype=np.float64).ravel()
        if not np.all(np.isfinite(array)):
            raise SecAggError("fixed point: the update holds NaN or infinite values; nothing to encode")
        return np.clip(array, -self.clip, self.clip)

    def _to_ring(self, values: NDArray[np.float64]) -> NDArray[np.uint32]:
        # The integer clip guards against x * scale rounding one past the limit (float products are inexact).
        integers = np.clip(np.rint(values * self.scale).astype(np.int64), -self.limit, self.limit)
        return np.mod(integers, SECAGG_MODULUS).astype(np.uint32)

    def decode(self, total: NDArray[np.uint32]) -> NDArray[np.float64]:
        """The floats a ring vector (an unmasked sum of at most `max_parties` encodings) stands for."""
        if total.dtype != np.uint32:
            raise SecAggError(f"fixed point: decode expects a uint32 ring vector, got dtype {total.dtype}")
        signed = total.astype(np.int64)
        signed[signed >= _HALF] -= SECAGG_MODULUS
        return signed / self.scale

    def encode_weighted(self, values: ArrayLike, weight: float, max_weight: float) -> NDArray[np.uint32]:
        """`values * weight / max_weight`, then that ratio as one extra value (see the module's docstring)."""
        if not (np.isfinite(max_weight) and max_weight > 0):
            raise SecAggError(f"fixed point: max_weight must be a positive finite number, got {max_weight!r}")
        if not (np.isfinite(weight) and 0 < weight <= max_weight):
            raise SecAggError(f"fixed point: weight must be in (0, max_weight={max_weight}], got {weight!r}")
        ratio = weight / max_weight
        # Clip before scaling (the bound is on the update), and not the ratio itself: it is <= 1 <= the bound.
        return self._to_ring(np.append(self._clipped(values) * ratio, ratio))

    def decode_weighted_mean(self, total: NDArray[np.uint32]) -> NDArray[np.float64]:
        """The weighted mean from the unmasked sum of `encode_weighted` vectors (the last value: sum of ratios)."""
        decoded = self.decode(total)
        if decoded.size < 2 or decoded[-1] <= 0:
            raise SecAggError("fixed point: the sum's weight slot (its last value) is not positive: no weights summed")
        mean: NDArray[np.float64] = decoded[:-1] / decoded[-1]
        return mean
