"""Robust aggregation: coordinate-wise median, trimmed mean, Krum, Multi-Krum and Bulyan.

These rules need every update of a round at once, so they cannot stream like FedAvg. Their `fold`
only counts (the engine keeps each accepted update in the durable spool anyway, for recovery), and the
round closes with `RobustStrategy.aggregate(updates, previous)`, where `updates` are read back from the
spool (their arrays read-only views on the memory-mapped blobs: `engine/_robust_close`). It is a pure function of the updates and the previous
global model, so an aggregator killed mid-close re-runs it identically.

**Memory.** The rules work on deltas ``Δ_k = w_k - previous`` tensor by tensor: for each tensor they
stack that one tensor of the m updates (float64), so the working set is ``m x the largest tensor``,
never ``m x the model``. Krum adds an m x m distance matrix, summed tensor by tensor.

**Weighting** follows Flower: FedMedian, FedTrimmedAvg and Krum ignore the sample counts; Multi-Krum
averages the kept updates weighted by them. Updates are ordered by node name first, so the spool's
order never changes a result (Krum's ties go to the first name).

Clipping (`Strategy.clip_norm`) applies here too, before the rule: each update's delta is scaled by
``min(1, C/‖Δ‖)`` (see `clip_scale`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import StrategyError
from cloud_aggregator._strategy import (
    AggregationState,
    Arrays,
    Layout,
    Strategy,
    _clippable,
    cast_to,
    clip_note,
    clip_scale,
    register_strategy,
)

__all__ = [
    "Bulyan",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "RobustResult",
    "RobustStrategy",
    "RobustUpdate",
]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RobustUpdate:
    """One accepted update of the round: who sent it, its sample count, its tensors (read-only)."""

    node: str
    num_samples: int
    arrays: Arrays


@dataclass(frozen=True)
class RobustResult:
    """A robust round's global model, each worker's audit note, and the workers left out of it."""

    weights: list[npt.NDArray[Any]]
    notes: dict[str, str] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()


class RobustStrategy(Strategy):
    """A rule that needs the round's updates at close: `fold` counts, `aggregate` computes."""

    def begin(self, layout: Layout, previous: Arrays | None = None) -> AggregationState:
        if not layout:
            raise StrategyError("a model layout needs at least one tensor")
        # No accumulator: the updates are in the spool. Empty sums keep the state small and serialisable.
        empty = tuple(np.zeros(0, dtype=np.float64) for _ in layout)
        return AggregationState(strategy=self.name, layout=layout, sums=empty)

    def fold(self, state: AggregationState, arrays: Arrays, num_samples: int, scale: float = 1.0) -> AggregationState:
        self.check(state, arrays, num_samples, scale)
        return AggregationState(
            strategy=state.strategy,
            layout=state.layout,
            sums=state.sums,
            total_samples=state.total_samples + int(num_samples),
            count=state.count + 1,
            extra=state.extra,
            total_weight=state.total_weight + float(num_samples) * float(scale),
        )

    def finish(self, state: AggregationState, previous: Arrays | None = None) -> list[npt.NDArray[Any]]:
        raise StrategyError(f"{self.name} needs the round's updates: it closes with aggregate(), not finish()")

    def aggregate(self, updates: Sequence[RobustUpdate], previous: Arrays) -> RobustResult:
        """The round's global model from all its `updates` and the `previous` global model."""
        if not updates:
            raise StrategyError("no update was folded: there is nothing to aggregate")
        ordered = sorted(updates, key=lambda u: u.node)
        notes: dict[str, str] = {}
        scales: list[float] = []
        for update in ordered:
            scale, norm = clip_scale(update.arrays, previous, self.clip_norm)
            scales.append(scale)
            if scale < 1.0:
                notes[update.node] = clip_note(norm, self.clip_norm)
        deltas = _Deltas(ordered, previous, scales)
        weights, more, excluded = self.combine(deltas)
        for node, note in more.items():
            notes[node] = f"{notes[node]}; {note}" if node in notes else note
        return RobustResult(weights=weights, notes=notes, excluded=tuple(excluded))

    def combine(self, deltas: _Deltas) -> tuple[list[npt.NDArray[Any]], dict[str, str], list[str]]:
        """The new model from the (clipped) deltas, audit notes by node, and the excluded nodes."""
        raise NotImplementedError


class _Deltas:
    """The m clipped deltas of a round, handed out one tensor at a time (m x that tensor, float64)."""

    def __init__(self, updates: Sequence[RobustUpdate], previous: Arrays, scales: Sequence[float]) -> None:
        self.updates = updates
        self.previous = previous
        self.scales = scales
        self.nodes = [u.node for u in updates]

    def __len__(self) -> int:
        return len(self.updates)

    def tensor(self, t: int) -> F64:
        """Tensor `t` of every delta, stacked: shape (m, *shape)."""
        prev = np.asarray(self.previous[t], dtype=np.float64)
        rows = []
        for update, scale in zip(self.updates, self.scales, strict=True):
            array = update.arrays[t]
            delta = np.asarray(array, dtype=np.float64) - prev
            rows.append(delta * scale if _clippable(array) else delta)
        return np.stack(rows)

    def model(self, t: int, delta: F64) -> npt.NDArray[Any]:
        """Tensor `t` of the new model: previous + `delta`, in the tensor's dtype."""
        return cast_to(np.asarray(self.previous[t], dtype=np.float64) + delta, np.dtype(self.previous[t].dtype).name)


class FedMedian(RobustStrategy):
    """Coordinate-wise median of the deltas (Yin et al. 2018); an even count takes the middle two's mean."""

    name: ClassVar[str] = "FedMedian"

    def combine(self, deltas: _Deltas) -> tuple[list[npt.NDArray[Any]], dict[str, str], list[str]]:
        weights = [deltas.model(t, np.median(deltas.tensor(t), axis=0)) for t in range(len(deltas.previous))]
        return weights, {}, []


class FedTrimmedAvg(RobustStrategy):
    """Per coordinate, drop the ``int(beta·m)`` lowest and highest deltas and average the rest (Flower's rule)."""

    name: ClassVar[str] = "FedTrimmedAvg"
    defaults: ClassVar[dict[str, float]] = {"trim_beta": 0.2}

    def combine(self, deltas: _Deltas) -> tuple[list[npt.NDArray[Any]], dict[str, str], list[str]]:
        m = len(deltas)
        k = int(self.hyper["trim_beta"] * m)
        trimmed = np.zeros(m, dtype=np.int64)
        coordinates = 0
        weights = []
        for t in range(len(deltas.previous)):
            stack = deltas.tensor(t).reshape(m, -1)
            coordinates += stack.shape[1]
            order = np.argsort(stack, axis=0, kind="stable")
            kept = np.take_along_axis(stack, order[k : m - k], axis=0)
            if k:
                cut = np.concatenate([order[:k], order[m - k :]]).ravel()
                trimmed += np.bincount(cut, minlength=m)
            shape = deltas.previous[t].shape
            weights.append(deltas.model(t, kept.mean(axis=0).reshape(shape)))
        notes = {
            node: f"trimmed at {int(n)} of {coordinates} coordinates"
            for node, n in zip(deltas.nodes, trimmed, strict=True)
            if n
        }
        return weights, notes, []


class Krum(RobustStrategy):
    """Krum (Blanchard et al. 2017): keep the update closest to its ``m-f-2`` nearest others; needs m > 2f+2."""

    name: ClassVar[str] = "Krum"
    defaults: ClassVar[dict[str, float]] = {"krum_f": 1}

    def keep(self, m: int) -> int:
        return 1

    def combine(self, deltas: _Deltas) -> tuple[list[npt.NDArray[Any]], dict[str, str], list[str]]:
        m, f = len(deltas), int(self.hyper["krum_f"])
        if m <= 2 * f + 2:
            raise StrategyError(f"{self.name} with krum_f={f} needs more than {2 * f + 2} updates, the round has {m}")
        keep = self.keep(m)
        if not 1 <= keep <= m:
            raise StrategyError(f"{self.name}: krum_m={keep} must be between 1 and the round's {m} updates")
        distances = squared_distances(deltas)
        scores = krum_scores(distances, list(range(m)), f)
        chosen = sorted(np.argsort(scores, kind="stable")[:keep].tolist())
        samples = np.array([deltas.updates[i].num_samples for i in chosen], dtype=np.float64)
        share = samples / samples.sum() if self.weighted else np.full(len(chosen), 1.0 / len(chosen))
        weights = []
        for t in range(len(deltas.previous)):
            stack = deltas.tensor(t)[chosen]
            weights.append(deltas.model(t, np.tensordot(share, stack, axes=1)))
        notes, excluded = {}, []
        for i, node in enumerate(deltas.nodes):
            if i in chosen:
                notes[node] = f"kept by {self.name} (score {scores[i]:.6g})"
            else:
                notes[node] = f"excluded by {self.name} (score {scores[i]:.6g})"
                excluded.append(node)
        return weights, notes, excluded

    weighted: ClassVar[bool] = False


def squared_distances(deltas: _Deltas) -> F64:
    """The m x m squared L2 distances between the (clipped) deltas, summed tensor by tensor."""
    m = len(deltas)
    distances = np.zeros((m, m), dtype=np.float64)
    for t in range(len(deltas.previous)):
        flat = deltas.tensor(t).reshape(m, -1)
        for i in range(m):
            distances[i] += np.sum(np.square(flat - flat[i]), axis=1)
    return distances


def krum_scores(distances: F64, among: Sequence[int], f: int) -> F64:
    """Krum's score of each update in `among`: the sum of its ``len(among) - f - 2`` smallest squared
    distances to the others in `among` (each row without its own entry, by index, not by value: identical
    updates must still count as neighbours)."""
    neighbours = max(0, len(among) - f - 2)
    return np.array([np.sort(distances[i, [j for j in among if j != i]])[:neighbours].sum() for i in among])


class MultiKrum(Krum):
    """Multi-Krum: average (by samples) the ``krum_m`` lowest-scoring updates (0: m - f)."""

    name: ClassVar[str] = "MultiKrum"
    defaults: ClassVar[dict[str, float]] = {"krum_f": 1, "krum_m": 0}
    weighted: ClassVar[bool] = True

    def keep(self, m: int) -> int:
        wanted = int(self.hyper["krum_m"])
        return wanted if wanted > 0 else m - int(self.hyper["krum_f"])


class Bulyan(RobustStrategy):
    """Bulyan (El Mhamdi et al. 2018): pick ``θ = m - 2f`` updates by Krum again and again (each time the
    best-scoring of those left), then per coordinate average the ``β = θ - 2f`` of them closest to their
    median. Needs m >= 4f + 3; ignores sample counts (as Flower's Bulyan)."""

    name: ClassVar[str] = "Bulyan"
    defaults: ClassVar[dict[str, float]] = {"krum_f": 1}

    def combine(self, deltas: _Deltas) -> tuple[list[npt.NDArray[Any]], dict[str, str], list[str]]:
        m, f = len(deltas), int(self.hyper["krum_f"])
        if m < 4 * f + 3:
            raise StrategyError(f"Bulyan with krum_f={f} needs at least {4 * f + 3} updates, the round has {m}")
        distances = squared_distances(deltas)
        left, picked = list(range(m)), list[int]()
        while len(picked) < m - 2 * f:
            scores = krum_scores(distances, left, f)
            best = left[int(np.argmin(scores))]  # ties: the first name (the updates are ordered by node)
            picked.append(best)
            left.remove(best)
        chosen = sorted(picked)
        beta = len(chosen) - 2 * f
        weights = []
        for t in range(len(deltas.previous)):
            stack = deltas.tensor(t)[chosen].reshape(len(chosen), -1)
            gap = np.abs(stack - np.median(stack, axis=0))
            closest = np.argsort(gap, axis=0, kind="stable")[:beta]
            mean = np.take_along_axis(stack, closest, axis=0).mean(axis=0)
            weights.append(deltas.model(t, mean.reshape(deltas.previous[t].shape)))
        notes = {
            node: (
                f"selected by Bulyan ({picked.index(i) + 1} of {len(picked)})" if i in picked else "excluded by Bulyan"
            )
            for i, node in enumerate(deltas.nodes)
        }
        excluded = [node for i, node in enumerate(deltas.nodes) if i not in picked]
        return weights, notes, excluded


register_strategy(FedMedian, "median")
register_strategy(FedTrimmedAvg, "trimmedmean", "trimmedavg")
register_strategy(Krum)
register_strategy(MultiKrum)
register_strategy(Bulyan)
