"""Pure helpers of benchmarks/strategies.py: how a fleet's data is split, how an edge poisons its update,
how a strategy is written on the command line, and how results are summarised. numpy only (no
TensorFlow), so tests/unit/test_bench_fleet_data.py checks them in milliseconds.

Every split is a function of the labels and a `numpy.random.Generator`: the same seed gives the same
split, whatever strategy then trains on it (every strategy of a repeat sees exactly the same data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Indices = npt.NDArray[np.int64]
Arrays = Sequence[npt.NDArray[Any]]


def iid_split(n: int, edges: int, rng: np.random.Generator) -> list[Indices]:
    """Indices 0..n-1 shuffled and cut into `edges` parts whose sizes differ by at most one."""
    if edges < 1 or n < edges:
        raise ValueError(f"cannot split {n} samples over {edges} edges")
    return [np.asarray(part, dtype=np.int64) for part in np.array_split(rng.permutation(n), edges)]


def skewed_split(labels: npt.ArrayLike, edges: int, defect_share: float, rng: np.random.Generator) -> list[Indices]:
    """Label skew: edge 1 (index 0) gets `defect_share` of the defect images (label 1), the other edges
    share the remaining defects evenly; the defect-free images (label 0) are split evenly over all edges.

    With the synthetic set (about 29 % defects) and 0.8 over 5 edges, edge 1 holds about 62 % defects and
    every other edge about 9 %."""
    y = np.asarray(labels).reshape(-1)
    if edges < 2:
        raise ValueError("a skewed split needs at least 2 edges")
    if not 0.0 <= defect_share <= 1.0:
        raise ValueError(f"defect_share must be in [0, 1], got {defect_share}")
    defects = rng.permutation(np.flatnonzero(y == 1))
    free = rng.permutation(np.flatnonzero(y == 0))
    k = round(defect_share * len(defects))
    parts: list[list[npt.NDArray[np.int64]]] = [[defects[:k]]] + [[p] for p in np.array_split(defects[k:], edges - 1)]
    for part, share in zip(parts, np.array_split(free, edges), strict=True):
        part.append(share)
    split = [rng.permutation(np.concatenate(part)).astype(np.int64) for part in parts]
    if any(len(s) == 0 for s in split):
        raise ValueError(f"{len(y)} samples leave an edge empty in a skewed split over {edges} edges")
    return split


def sign_flip(update: Arrays, previous: Arrays, k: float = 1.0) -> list[npt.NDArray[Any]]:
    """The update's delta negated and scaled by `k`: ``previous - k * (update - previous)``."""
    return [(p - k * (u.astype(np.float64) - p)).astype(u.dtype) for u, p in zip(update, previous, strict=True)]


def scale_delta(update: Arrays, previous: Arrays, factor: float = 100.0) -> list[npt.NDArray[Any]]:
    """The update's delta multiplied by `factor`: ``previous + factor * (update - previous)``."""
    return [(p + factor * (u.astype(np.float64) - p)).astype(u.dtype) for u, p in zip(update, previous, strict=True)]


def delta_norm(update: Arrays, previous: Arrays) -> float:
    """The L2 norm of ``update - previous`` over every tensor (what `clip_norm` bounds)."""
    return math.sqrt(
        sum(
            float(np.sum(np.square(u.astype(np.float64) - p.astype(np.float64))))
            for u, p in zip(update, previous, strict=True)
        )
    )


@dataclass(frozen=True)
class Variant:
    """One strategy as a job would configure it: the aggregation worker's `aggregation_algorithm` and
    parameters, and the training workers' `mu` (FedProx, client-side)."""

    spec: str  # as written on the command line, e.g. "FedAdam:server_learning_rate=0.01"
    aggregation: str
    parameters: dict[str, str] = field(default_factory=dict)
    mu: float = 0.0


def parse_variant(spec: str) -> Variant:
    """``Name[:key=value,key=value]``. ``mu`` is the training workers' parameter; ``FedProx`` names FedAvg on
    the server with the edges' `mu` (FedProx is client-side; the aggregator has no such name)."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"strategy {spec!r}: expected Name[:key=value,...]")
    parameters: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"strategy {spec!r}: {item!r} is not key=value")
        parameters[key.strip()] = value.strip()
    mu = float(parameters.pop("mu", "0"))
    if name.lower() == "fedprox":
        if mu <= 0:
            raise ValueError(f"strategy {spec!r}: FedProx needs mu > 0 (FedProx:mu=0.01)")
        name = "FedAvg"
    return Variant(spec=spec, aggregation=name, parameters=parameters, mu=mu)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value); NaN values are ignored."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0


def pm(values: Sequence[float]) -> str:
    """``0.912 ± 0.013`` (``failed`` when no value is a number)."""
    mean, std = mean_std(values)
    return "failed" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
