"""Aggregation strategies: pure, streaming and restartable.

A strategy turns the updates of one round into the next global model in three steps::

    state = strategy.begin(layout)                    # empty accumulator for this tensor layout
    state = strategy.fold(state, arrays, num_samples)  # once per accepted update, in any order
    weights = strategy.finish(state, previous)         # the round's global model

Rules every strategy keeps:

- **Pure.** No I/O, no clocks, no randomness that is not in the state. Inputs (the state, the arrays,
  the previous weights) are never mutated; `fold` returns a new state and the arrays it holds are
  read-only.
- **Streaming.** `fold` keeps an accumulator of the model's size, never the updates themselves, so
  memory does not grow with the number of edges.
- **Restartable.** Everything a strategy knows mid-round is in `AggregationState`, a frozen value that
  serialises to bytes (`to_bytes` / `from_bytes`, an ``.npz`` without pickle), so an aggregator that
  restarts can resume a round exactly.

`finish` also receives the previous global model, which server-side optimisers need (FedAdam, FedYogi:
the pseudo-gradient is ``previous - mean``; FedProx needs nothing on the server); strategy-specific
accumulators live in `AggregationState.extra`. Strategies are found by name with `get_strategy`
(case-insensitive; ``-`` and ``_`` are ignored, so ``fedavg`` and ``Fed_Avg`` both name FedAvg).
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import StrategyError
from schemas import MAX_NUM_SAMPLES

__all__ = [
    "AggregationState",
    "FedAvg",
    "Layout",
    "Strategy",
    "get_strategy",
    "register_strategy",
    "strategy_names",
]

#: Names, dtypes and shapes of a model's tensors, in order (`schemas.WeightsHeader.layout()`).
Layout = tuple[tuple[str, str, tuple[int, ...]], ...]
Arrays = Sequence[npt.NDArray[Any]]
F64 = npt.NDArray[np.float64]


def _frozen(array: F64) -> F64:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class AggregationState:
    """What a strategy knows mid-round: a value, never mutated, serialisable without pickle.

    `sums` holds one float64 accumulator per tensor of `layout`; `total_samples` and `count` say how
    many samples and updates were folded; `extra` is for strategy-specific accumulators.
    """

    strategy: str
    layout: Layout
    sums: tuple[F64, ...]
    total_samples: int = 0
    count: int = 0
    extra: Mapping[str, F64] = field(default_factory=lambda: MappingProxyType({}))

    def to_bytes(self) -> bytes:
        """Serialise as an ``.npz`` archive (no pickle): the arrays plus a small JSON description."""
        meta = {
            "strategy": self.strategy,
            "layout": [[name, dtype, list(shape)] for name, dtype, shape in self.layout],
            "totalSamples": self.total_samples,
            "count": self.count,
            "extra": sorted(self.extra),
        }
        arrays: dict[str, npt.NDArray[Any]] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        arrays.update({f"sum{i}": s for i, s in enumerate(self.sums)})
        arrays.update({f"extra{i}": self.extra[k] for i, k in enumerate(sorted(self.extra))})
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> AggregationState:
        """The inverse of `to_bytes`; raise StrategyError when the bytes are not such an archive."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes().decode())
                layout: Layout = tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in meta["layout"])
                sums = tuple(_frozen(np.array(archive[f"sum{i}"], dtype=np.float64)) for i in range(len(layout)))
                extra = {
                    k: _frozen(np.array(archive[f"extra{i}"], dtype=np.float64)) for i, k in enumerate(meta["extra"])
                }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StrategyError(f"not a serialised aggregation state: {exc}") from exc
        return cls(
            strategy=str(meta["strategy"]),
            layout=layout,
            sums=sums,
            total_samples=int(meta["totalSamples"]),
            count=int(meta["count"]),
            extra=MappingProxyType(extra),
        )


class Strategy(ABC):
    """An aggregation strategy. Subclasses set `name` and implement `fold` and `finish`."""

    name: ClassVar[str]

    def begin(self, layout: Layout, previous: Arrays | None = None) -> AggregationState:
        """An empty accumulator for `layout`. `previous` (the current global model) is for strategies that need it."""
        if not layout:
            raise StrategyError("a model layout needs at least one tensor")
        sums = tuple(_frozen(np.zeros(shape, dtype=np.float64)) for _, _, shape in layout)
        return AggregationState(strategy=self.name, layout=layout, sums=sums)

    @abstractmethod
    def fold(self, state: AggregationState, arrays: Arrays, num_samples: int) -> AggregationState:
        """Fold one update (trained on `num_samples` samples) into `state`; return the new state."""

    @abstractmethod
    def finish(self, state: AggregationState, previous: Arrays | None = None) -> list[npt.NDArray[Any]]:
        """The aggregated model: one new array per tensor of the layout, in each tensor's dtype."""

    def check(self, state: AggregationState, arrays: Arrays, num_samples: int) -> None:
        """Raise StrategyError unless `arrays` match the state's layout and `num_samples` > 0."""
        if state.strategy != self.name:
            raise StrategyError(f"state belongs to strategy {state.strategy!r}, not {self.name!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer) or num_samples <= 0:
            raise StrategyError(f"num_samples must be a whole number > 0, got {num_samples!r}")
        # The wire already caps sample counts; the strategy checks again because it is also called
        # directly: 10**400 made `fold` raise OverflowError, 10**300 let one update outweigh the rest.
        if num_samples > MAX_NUM_SAMPLES:
            raise StrategyError(f"num_samples {num_samples} is absurd (more than {MAX_NUM_SAMPLES})")
        if len(arrays) != len(state.layout):
            raise StrategyError(f"expected {len(state.layout)} tensors, got {len(arrays)}")
        for i, (array, (name, dtype, shape)) in enumerate(zip(arrays, state.layout, strict=True)):
            if tuple(array.shape) != shape or np.dtype(array.dtype).name != dtype:
                raise StrategyError(
                    f"tensor {i} ({name}): expected {dtype}{list(shape)}, got {np.dtype(array.dtype).name}{list(array.shape)}"
                )


class FedAvg(Strategy):
    """Sedna's FedAvg: the sample-weighted mean of the updates, accumulated in float64.

    ``w = sum_k(n_k * w_k) / sum_k(n_k)`` per tensor, cast back to the tensor's dtype (integers are
    rounded to the nearest value; booleans are true where the weighted mean is at least one half).
    """

    name: ClassVar[str] = "FedAvg"

    def fold(self, state: AggregationState, arrays: Arrays, num_samples: int) -> AggregationState:
        self.check(state, arrays, num_samples)
        weight = float(num_samples)
        sums = tuple(
            _frozen(np.add(s, np.multiply(np.asarray(a, dtype=np.float64), weight)))
            for s, a in zip(state.sums, arrays, strict=True)
        )
        return AggregationState(
            strategy=state.strategy,
            layout=state.layout,
            sums=sums,
            total_samples=state.total_samples + int(num_samples),
            count=state.count + 1,
            extra=state.extra,
        )

    def finish(self, state: AggregationState, previous: Arrays | None = None) -> list[npt.NDArray[Any]]:
        if state.count == 0 or state.total_samples <= 0:
            raise StrategyError("no update was folded: there is nothing to average")
        out: list[npt.NDArray[Any]] = []
        for total, (_, dtype_name, _) in zip(state.sums, state.layout, strict=True):
            mean = total / float(state.total_samples)
            dtype = np.dtype(dtype_name)
            if dtype.kind == "b":
                out.append(mean >= 0.5)
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                out.append(np.clip(np.rint(mean), info.min, info.max).astype(dtype))
            else:
                out.append(mean.astype(dtype))
        return out


# -- registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Strategy]] = {}
_CANONICAL: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register_strategy(cls: type[Strategy], *aliases: str) -> type[Strategy]:
    """Make `cls` available to `get_strategy` under its `name` and `aliases` (case-insensitive)."""
    for alias in (cls.name, *aliases):
        key = _key(alias)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise StrategyError(f"aggregation name {alias!r} is already taken by {_REGISTRY[key].name}")
        _REGISTRY[key] = cls
    _CANONICAL[cls.name] = cls.name
    return cls


register_strategy(FedAvg)


def strategy_names() -> list[str]:
    """The canonical names of every registered strategy, sorted."""
    return sorted(_CANONICAL)


def get_strategy(name: str) -> Strategy:
    """A new strategy instance by name; raise StrategyError listing the known names if there is none."""
    cls = _REGISTRY.get(_key(name)) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(strategy_names())
        raise StrategyError(f"unknown aggregation algorithm {name!r}; known: {known}")
    return cls()
