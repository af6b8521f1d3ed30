"""Local and distributed differential privacy on the edge: the update is noised where the data is.

When the job's aggregation worker sets ``dp_mode: local`` or ``distributed``, the plan gives every
training worker the parameters ``dp_mode``, ``dp_clip_norm`` (C) and ``dp_noise_std`` (local: z*C; each
of n edges in distributed DP: z*C/sqrt(n), so that the n independent shares sum to std z*C, the noise the
aggregator's accountant assumes; `cloud_aggregator._privacy`). The worker API then clips the delta of its
update from the global model it trained from to L2 norm C and adds N(0, std^2) to every floating
coordinate before the update leaves the training script: neither the node service, nor the broker, nor
the aggregator ever holds the un-noised weights.

The noise comes from ``numpy.random.default_rng()`` with no seed: fresh entropy from the operating system
(`numpy.random.SeedSequence` reads it from ``secrets``) for every update, so nobody can replay it. Neither
the noise nor the un-noised delta is ever logged or kept; only the settings are said in worker.log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_trainer._errors import WorkerError
from schemas import PARAMETER_BOUNDS, Context

__all__ = ["EdgePrivacy", "privatise_update"]

Arrays = Sequence[npt.NDArray[Any]]


def privatise_update(
    weights: Arrays,
    global_weights: Arrays,
    clip_norm: float,
    noise_std: float,
    rng: np.random.Generator | None = None,
) -> list[npt.NDArray[Any]]:
    """`weights` whose delta from `global_weights` is clipped to L2 norm `clip_norm` and noised with
    N(0, `noise_std`^2) per coordinate (floating tensors only; integer ones are returned as they are).

    `rng` is for tests only: without it every call draws from fresh operating-system entropy."""
    generator = rng if rng is not None else np.random.default_rng()
    floating = [np.dtype(w.dtype).kind == "f" for w in weights]
    deltas = [
        np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64) if f else None
        for w, g, f in zip(weights, global_weights, floating, strict=True)
    ]
    norm = float(np.sqrt(sum(float(np.sum(np.square(d))) for d in deltas if d is not None)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out: list[npt.NDArray[Any]] = []
    for w, g, d in zip(weights, global_weights, deltas, strict=True):
        if d is None:
            out.append(np.asarray(w))
            continue
        noised = d * scale
        if noise_std > 0:
            noised += generator.normal(0.0, noise_std, size=d.shape)
        out.append((np.asarray(g, dtype=np.float64) + noised).astype(w.dtype))
    return out


@dataclass(frozen=True)
class EdgePrivacy:
    """What the plan told this training worker to do to its updates (`from_parameters`)."""

    mode: str
    clip_norm: float
    noise_std: float

    @classmethod
    def from_parameters(cls) -> EdgePrivacy | None:
        """The worker's ``dp_mode``, ``dp_clip_norm`` and ``dp_noise_std`` parameters (None: no edge noise;
        a `WorkerError` naming the parameter when one is missing or out of its bound)."""
        mode = (Context.get_parameters("dp_mode") or "none").strip().lower()
        if mode not in ("local", "distributed"):
            return None  # none, or central DP: the aggregator clips and noises
        values: dict[str, float] = {}
        for name in ("dp_clip_norm", "dp_noise_std"):
            raw = (Context.get_parameters(name) or "").strip()
            problem = PARAMETER_BOUNDS[name].problem(raw) if raw else "missing"
            if problem is not None:
                raise WorkerError(f"parameter {name}={raw!r} (dp_mode {mode}): {problem}")
            values[name] = float(raw)
        return cls(mode=mode, clip_norm=values["dp_clip_norm"], noise_std=values["dp_noise_std"])

    def describe(self) -> str:
        return (
            f"differential privacy ({self.mode}): each update's delta clipped to L2 norm {self.clip_norm:g}, "
            f"Gaussian noise of std {self.noise_std:g} added before it leaves this script"
        )

    def apply(self, weights: Arrays, global_weights: Arrays) -> list[npt.NDArray[Any]]:
        """The update as it may leave the script."""
        return privatise_update(weights, global_weights, self.clip_norm, self.noise_std)
