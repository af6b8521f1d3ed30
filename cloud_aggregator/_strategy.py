"""Aggregation strategies: pure, streaming and restartable.

A strategy turns the updates of one round into the next global model in three steps::

    state = strategy.begin(layout)                    # empty accumulator for this tensor layout
    state = strategy.fold(state, arrays, num_samples)  # once per accepted update, in any order
    weights = strategy.finish(state, previous)         # the round's global model

Rules every strategy keeps:

- **Pure.** No I/O, no clocks, no randomness that is not in the state. Inputs (the state, the arrays,
  the previous weights) are never mutated; `fold` returns a new state and the arrays it holds are
  read-only. The engine's fast path, `fold_in_place`, gives the same state bit for bit but adds into
  the accumulator it owns (three model-sized float64 allocations per update made the pure fold 0.38x a
  numpy in-place add): the state it is given must not be used again. Restarts do not need per-fold
  values: a round's accumulator is rebuilt from the checkpoint and the spool (`snapshot` copies one).
- **Streaming.** `fold` keeps an accumulator of the model's size, never the updates themselves, so
  memory does not grow with the number of edges.
- **Restartable.** Everything a strategy knows mid-round is in `AggregationState`, a frozen value that
  serialises to bytes (`to_bytes` / `from_bytes`, an ``.npz`` without pickle), so an aggregator that
  restarts can resume a round exactly.

`finish` also receives the previous global model, which server-side optimisers need (FedAdam, FedYogi:
the pseudo-gradient is ``previous - mean``; FedProx needs nothing on the server); strategy-specific
accumulators live in `AggregationState.extra`. Strategies are found by name with `get_strategy`
(case-insensitive; ``-`` and ``_`` are ignored, so ``fedavg`` and ``Fed_Avg`` both name FedAvg), their
hyper-parameters (`Strategy.defaults`) set from the aggregation worker's parameters of the same names.

**Cross-round server state.** A server-side optimiser (FedAvgM, FedAdam, FedYogi, FedAdagrad:
`cloud_aggregator._server_opt`) also carries state from one round to the next (momentum, moments). It
is a `ServerState`, a frozen value like `AggregationState`: `begin_server(layout)` makes the first one,
and a round closes with ``weights, server = strategy.step(state, previous, server)``. The engine keeps
it with the checkpoint of the round that produced it. A stateless strategy's `begin_server` is None and
its `step` is `finish`.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import StrategyError
from cloud_aggregator._fold import BLOCK, add_weighted, weighted_sum
from schemas import MAX_NUM_SAMPLES, PARAMETER_BOUNDS

__all__ = [
    "AggregationState",
    "FedAvg",
    "Layout",
    "ServerState",
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
    many samples and updates were folded; `total_weight` is what the sums are weighted by in all
    (``sum(num_samples * scale)``: the samples themselves unless an update was discounted, see `fold`);
    `extra` is for strategy-specific accumulators.
    """

    strategy: str
    layout: Layout
    sums: tuple[F64, ...]
    total_samples: int = 0
    count: int = 0
    extra: Mapping[str, F64] = field(default_factory=lambda: MappingProxyType({}))
    total_weight: float = 0.0
    # True when `sums` are writable accumulators private to this state (made by `fold_in_place`): the next
    # `fold_in_place` adds into them, so the state is a working value until `snapshot` copies it.
    owned: bool = field(default=False, repr=False, compare=False)

    def snapshot(self) -> AggregationState:
        """A value copy with read-only arrays (what a working state is at this point, whatever is folded later)."""
        if not self.owned:
            return self
        return replace(self, sums=tuple(_frozen(np.array(s, copy=True)) for s in self.sums), owned=False)

    def to_bytes(self) -> bytes:
        """Serialise as an ``.npz`` archive (no pickle): the arrays plus a small JSON description."""
        meta = {
            "strategy": self.strategy,
            "layout": [[name, dtype, list(shape)] for name, dtype, shape in self.layout],
            "totalSamples": self.total_samples,
            "totalWeight": self.total_weight,
            "count": self.count,
            "extra": sorted(self.extra),
        }
        arrays: dict[str, npt.NDArray[Any]] = {f"sum{i}": s for i, s in enumerate(self.sums)}
        arrays.update({f"extra{i}": self.extra[k] for i, k in enumerate(sorted(self.extra))})
        return _npz(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> AggregationState:
        """The inverse of `to_bytes`; raise StrategyError when the bytes are not such an archive."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes().decode())
                layout = _layout_of(meta)
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
            total_weight=float(meta.get("totalWeight", meta["totalSamples"])),
        )


def _npz(meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """An ``.npz`` archive (no pickle) of `arrays` plus `meta` as JSON."""
    named: dict[str, npt.NDArray[Any]] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    named.update(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **named)
    return buffer.getvalue()


def _layout_of(meta: Mapping[str, Any]) -> Layout:
    return tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in meta["layout"])


@dataclass(frozen=True)
class ServerState:
    """What a server-side optimiser carries from one round to the next: a value, serialisable without pickle.

    `slots` maps a slot name (``m``, ``v``) to one float64 array per tensor of `layout`; `steps` counts
    the server steps taken (the rounds closed with this state)."""

    strategy: str
    layout: Layout
    slots: Mapping[str, tuple[F64, ...]]
    steps: int = 0

    def to_bytes(self) -> bytes:
        """Serialise as an ``.npz`` archive (no pickle): the arrays plus a small JSON description."""
        meta = {
            "strategy": self.strategy,
            "layout": [[name, dtype, list(shape)] for name, dtype, shape in self.layout],
            "steps": self.steps,
            "slots": sorted(self.slots),
        }
        arrays = {f"{k}{i}": a for k in sorted(self.slots) for i, a in enumerate(self.slots[k])}
        return _npz(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerState:
        """The inverse of `to_bytes`; raise StrategyError when the bytes are not such an archive."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes().decode())
                layout = _layout_of(meta)
                slots = {
                    str(k): tuple(_frozen(np.array(archive[f"{k}{i}"], dtype=np.float64)) for i in range(len(layout)))
                    for k in meta["slots"]
                }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StrategyError(f"not a serialised server state: {exc}") from exc
        for k, arrays in slots.items():
            for a, (name, _, shape) in zip(arrays, layout, strict=True):
                if a.shape != shape:
                    raise StrategyError(
                        f"server state slot {k}, tensor {name}: shape {list(a.shape)}, not {list(shape)}"
                    )
        return cls(
            strategy=str(meta["strategy"]), layout=layout, slots=MappingProxyType(slots), steps=int(meta["steps"])
        )


class Strategy(ABC):
    """An aggregation strategy. Subclasses set `name` and implement `fold` and `finish`.

    `defaults` names the strategy's hyper-parameters and their defaults; `get_strategy` sets them from
    the aggregation worker's parameters (each checked against `schemas.PARAMETER_BOUNDS`)."""

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, float]] = MappingProxyType({})
    # Set by __init__; the class default serves a registered strategy whose own __init__ skips it.
    hyper: Mapping[str, float] = MappingProxyType({})
    # The L2 bound on each update's delta from the previous global model (0: none), for every strategy:
    # `get_strategy` sets it from the `clip_norm` parameter, the engine applies `clip` before `fold`.
    clip_norm: float = 0.0

    def __init__(self, **hyper: float) -> None:
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise StrategyError(f"{self.name} has no hyper-parameter {', '.join(unknown)} (it has: {known})")
        self.hyper = MappingProxyType({**self.defaults, **hyper})

    def describe(self) -> str:
        """`FedAdam (server_learning_rate=0.1, beta_1=0.9, ...)`, or the name alone without hyper-parameters."""
        settings = dict(self.hyper)
        if self.clip_norm > 0:
            settings["clip_norm"] = self.clip_norm
        if not settings:
            return self.name
        return f"{self.name} ({', '.join(f'{k}={v:g}' for k, v in settings.items())})"

    def clip(self, arrays: Arrays, previous: Arrays | None) -> tuple[list[npt.NDArray[Any]], str | None]:
        """`arrays` with their delta from `previous` clipped to `clip_norm`, and the audit note (None: untouched)."""
        scale, norm = clip_scale(arrays, previous, self.clip_norm)
        if scale >= 1.0 or previous is None:
            return list(arrays), None
        clipped = [
            cast_to(np.asarray(p, dtype=np.float64) + (np.asarray(a, dtype=np.float64) - p) * scale, a.dtype.name)
            if _clippable(a)
            else a
            for a, p in zip(arrays, previous, strict=True)
        ]
        return clipped, clip_note(norm, self.clip_norm)

    def begin_server(self, layout: Layout) -> ServerState | None:
        """The server state before the first round (None: the strategy keeps none across rounds)."""
        return None

    def step(
        self, state: AggregationState, previous: Arrays | None, server: ServerState | None
    ) -> tuple[list[npt.NDArray[Any]], ServerState | None]:
        """Close a round: its global model and the server state after it (stateless: `finish`, `server` as is)."""
        return self.finish(state, previous), server

    def begin(self, layout: Layout, previous: Arrays | None = None) -> AggregationState:
        """An empty accumulator for `layout`. `previous` (the current global model) is for strategies that need it."""
        if not layout:
            raise StrategyError("a model layout needs at least one tensor")
        sums = tuple(_frozen(np.zeros(shape, dtype=np.float64)) for _, _, shape in layout)
        return AggregationState(strategy=self.name, layout=layout, sums=sums)

    @abstractmethod
    def fold(self, state: AggregationState, arrays: Arrays, num_samples: int, scale: float = 1.0) -> AggregationState:
        """Fold one update (trained on `num_samples` samples) into `state`; return the new state.

        `scale` in (0, 1] discounts the update: it weighs ``num_samples * scale`` (the asynchronous
        mode's staleness weight); 1 is the update as it is."""

    def fold_in_place(
        self, state: AggregationState, arrays: Arrays, num_samples: int, scale: float = 1.0
    ) -> AggregationState:
        """`fold`, bit for bit, adding into `state`'s accumulator when the state owns it (one made by this
        method); `state` must not be used afterwards. The engine folds its open round this way. A strategy
        without a faster path folds as `fold` does."""
        return self.fold(state, arrays, num_samples, scale)

    @abstractmethod
    def finish(self, state: AggregationState, previous: Arrays | None = None) -> list[npt.NDArray[Any]]:
        """The aggregated model: one new array per tensor of the layout, in each tensor's dtype."""

    def check(self, state: AggregationState, arrays: Arrays, num_samples: int, scale: float = 1.0) -> None:
        """Raise StrategyError unless `arrays` match the state's layout, `num_samples` > 0 and `scale` in (0, 1]."""
        if not (isinstance(scale, float | int) and 0.0 < float(scale) <= 1.0):
            raise StrategyError(f"scale must be a number in (0, 1], got {scale!r}")
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

    def fold(self, state: AggregationState, arrays: Arrays, num_samples: int, scale: float = 1.0) -> AggregationState:
        self.check(state, arrays, num_samples, scale)
        # float(n) * 1.0 is n exactly: an undiscounted round weighs as it always did, bit for bit.
        weight = float(num_samples) * float(scale)
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
            total_weight=state.total_weight + weight,
        )

    def fold_in_place(
        self, state: AggregationState, arrays: Arrays, num_samples: int, scale: float = 1.0
    ) -> AggregationState:
        self.check(state, arrays, num_samples, scale)
        weight = float(num_samples) * float(scale)
        if state.owned:
            sums = state.sums
            scratch = np.empty(min(BLOCK, max(s.size for s in sums)), dtype=np.float64)
            for total, array in zip(sums, arrays, strict=True):
                add_weighted(total, array, weight, scratch)
        else:
            # The first fold of a round allocates the accumulator it will own (the begin state's zeros
            # stay a value); x + y == y + x in IEEE arithmetic, so this is `fold`'s sum bit for bit.
            sums = tuple(weighted_sum(s, a, weight) for s, a in zip(state.sums, arrays, strict=True))
        return replace(
            state,
            sums=sums,
            total_samples=state.total_samples + int(num_samples),
            count=state.count + 1,
            total_weight=state.total_weight + weight,
            owned=True,
        )

    def finish(self, state: AggregationState, previous: Arrays | None = None) -> list[npt.NDArray[Any]]:
        return [cast_to(mean, dtype) for mean, (_, dtype, _) in zip(self.means(state), state.layout, strict=True)]

    @staticmethod
    def means(state: AggregationState) -> list[F64]:
        """The weighted mean of the folded updates (by samples, times each one's scale), per tensor, in float64."""
        if state.count == 0 or state.total_samples <= 0 or state.total_weight <= 0:
            raise StrategyError("no update was folded: there is nothing to average")
        return [total / state.total_weight for total in state.sums]


def cast_to(values: F64, dtype_name: str) -> npt.NDArray[Any]:
    """Float64 `values` as a tensor of `dtype_name`: integers rounded and clipped, booleans true from one half."""
    dtype = np.dtype(dtype_name)
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _clippable(array: npt.NDArray[Any]) -> bool:
    # Only floating tensors are clipped: integer and boolean ones (step counters, masks) are not a
    # direction in weight space, and scaling them would round to nonsense.
    return np.dtype(array.dtype).kind == "f"


def clip_scale(arrays: Arrays, previous: Arrays | None, clip_norm: float) -> tuple[float, float]:
    """The factor ``min(1, C/‖Δ‖)`` for the update's delta from `previous` (floating tensors), and ‖Δ‖.

    Computed tensor by tensor in float64, so it needs no copy of the whole model."""
    if clip_norm <= 0 or previous is None:
        return 1.0, 0.0
    squares = 0.0
    for a, p in zip(arrays, previous, strict=True):
        if _clippable(a):
            squares += float(np.sum(np.square(np.asarray(a, dtype=np.float64) - np.asarray(p, dtype=np.float64))))
    norm = float(np.sqrt(squares))
    return (min(1.0, clip_norm / norm) if norm > 0 else 1.0), norm


def clip_note(norm: float, clip_norm: float) -> str:
    """The audit note of a clipped update."""
    return f"clipped from norm {norm:.6g} to {clip_norm:.6g}"


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


# Names users write that are not server-side rules: the error says what to do instead.
_CLIENT_SIDE = {
    "fedprox": "FedProx is client-side: keep FedAvg here and set the training workers' mu parameter",
}


def get_strategy(name: str, parameters: Mapping[str, str] | None = None) -> Strategy:
    """A new strategy instance by name, its hyper-parameters from `parameters` (the aggregation worker's).

    A hyper-parameter is read under its own name or its UPPERCASE spelling (as Sedna's
    `Context.get_parameters` reads them) and must hold its bound (`schemas.PARAMETER_BOUNDS`); other
    parameters are the script's business. Raise StrategyError listing the known names if there is no
    such strategy, or naming the parameter and its bound if a value is out of it."""
    cls = _REGISTRY.get(_key(name)) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(strategy_names())
        hint = _CLIENT_SIDE.get(_key(name)) if isinstance(name, str) else None
        raise StrategyError(f"unknown aggregation algorithm {name!r}; known: {known}" + (f" ({hint})" if hint else ""))
    hyper: dict[str, float] = {}
    for key in cls.defaults:
        spelling = next((k for k in (key, key.upper()) if parameters and parameters.get(k, "") != ""), None)
        if spelling is None or parameters is None:
            continue
        raw = str(parameters[spelling])
        bound = PARAMETER_BOUNDS.get(key)
        problem = bound.problem(raw) if bound is not None else None
        if problem is None:
            try:
                hyper[key] = float(raw)
            except ValueError:
                problem = "expected a number"
        if problem is not None:
            raise StrategyError(f"aggregationWorker parameter {spelling}={raw!r} ({cls.name}): {problem}")
    strategy = cls(**hyper)
    raw_clip = (parameters or {}).get("clip_norm") or (parameters or {}).get("CLIP_NORM") or ""
    if raw_clip != "":
        problem = PARAMETER_BOUNDS["clip_norm"].problem(str(raw_clip))
        if problem is not None:
            raise StrategyError(f"aggregationWorker parameter clip_norm={raw_clip!r}: {problem}")
        strategy.clip_norm = float(raw_clip)
    return strategy
