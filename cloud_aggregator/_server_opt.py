"""Server-side optimisers: FedAvgM, FedAdam, FedYogi and FedAdagrad.

Each folds a round's updates exactly as FedAvg does (the sample-weighted mean ``w̄``, streaming) and
differs in how a round closes: the mean is turned into a pseudo-gradient against the previous global
model ``x`` and the server takes one optimiser step, carrying its state (`ServerState`) to the next
round. Everything is float64; the new model is cast back to each tensor's dtype.

- **FedAvgM** (Hsu et al. 2019, as Flower's ``fedavgm.py``): ``g = x - w̄``; ``v = β·v + g`` (v starts at
  zero, so round 1 has ``v = g``; no Nesterov); ``x' = x - η·v``. With β=0 and η=1 it is FedAvg.
- **FedAdam, FedYogi, FedAdagrad** (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Alg. 2,
  as Flower's ``fedopt.py``): ``Δ = w̄ - x`` (the progress, sample-weighted as Flower does; the paper
  uses an unweighted mean); ``m = β1·m + (1-β1)·Δ``; ``v`` per optimiser (Adam ``β2·v + (1-β2)·Δ²``,
  Yogi ``v - (1-β2)·Δ²·sign(v - Δ²)``, Adagrad ``v + Δ²``); ``x' = x + η·m / (√v + τ)``. m and v start
  at zero as Flower's do, and there is no bias correction (Flower's ``fedadam.py`` of the legacy API):
  the first step is about ``η·sign(Δ)``, which τ tempers.

Tensors that are not floating point (integer counters, booleans) take the FedAvg mean: an optimiser
step on a counter has no meaning, and the state of such tensors stays zero.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import StrategyError
from cloud_aggregator._strategy import (
    AggregationState,
    Arrays,
    FedAvg,
    Layout,
    ServerState,
    _frozen,
    cast_to,
    register_strategy,
)

__all__ = ["FedAdagrad", "FedAdam", "FedAvgM", "FedYogi"]

F64 = npt.NDArray[np.float64]


class _ServerOptimiser(FedAvg):
    """FedAvg's fold, then a server optimiser step with state in the named `slots`."""

    slots: ClassVar[tuple[str, ...]]

    def begin_server(self, layout: Layout) -> ServerState:
        zeros = tuple(_frozen(np.zeros(shape, dtype=np.float64)) for _, _, shape in layout)
        return ServerState(strategy=self.name, layout=layout, slots=MappingProxyType(dict.fromkeys(self.slots, zeros)))

    def finish(self, state: AggregationState, previous: Arrays | None = None) -> list[npt.NDArray[Any]]:
        """The model of a first round (the server state at its start); the engine uses `step`."""
        return self.step(state, previous, self.begin_server(state.layout))[0]

    def step(
        self, state: AggregationState, previous: Arrays | None, server: ServerState | None
    ) -> tuple[list[npt.NDArray[Any]], ServerState]:
        if previous is None:
            raise StrategyError(f"{self.name} needs the previous global model to close a round")
        if server is None:
            server = self.begin_server(state.layout)
        if server.strategy != self.name or server.layout != state.layout or set(server.slots) != set(self.slots):
            raise StrategyError(
                f"the server state belongs to {server.strategy} with {len(server.layout)} tensors, "
                f"not to {self.name} with {len(state.layout)}"
            )
        means = self.means(state)
        out: list[npt.NDArray[Any]] = []
        new_slots: dict[str, list[F64]] = {k: [] for k in self.slots}
        for i, (mean, (_, dtype, _)) in enumerate(zip(means, state.layout, strict=True)):
            old = {k: server.slots[k][i] for k in self.slots}
            if np.dtype(dtype).kind != "f":
                out.append(cast_to(mean, dtype))
                for k in self.slots:
                    new_slots[k].append(old[k])
                continue
            x = np.asarray(previous[i], dtype=np.float64)
            x_new, slots = self.update(x, mean, old)
            if not np.all(np.isfinite(x_new)):
                raise StrategyError(f"{self.name}: the server step made tensor {i} non-finite")
            out.append(cast_to(x_new, dtype))
            for k in self.slots:
                new_slots[k].append(_frozen(slots[k]))
        after = ServerState(
            strategy=self.name,
            layout=state.layout,
            slots=MappingProxyType({k: tuple(v) for k, v in new_slots.items()}),
            steps=server.steps + 1,
        )
        return out, after

    @abstractmethod
    def update(self, x: F64, mean: F64, slots: Mapping[str, F64]) -> tuple[F64, dict[str, F64]]:
        """One tensor's step: the new value from the previous `x`, the round's `mean` and the old slots."""


class FedAvgM(_ServerOptimiser):
    """FedAvg with server momentum: ``v = β·v + (x - w̄)``, ``x' = x - η·v``."""

    name: ClassVar[str] = "FedAvgM"
    defaults: ClassVar[Mapping[str, float]] = MappingProxyType({"server_learning_rate": 1.0, "server_momentum": 0.9})
    slots: ClassVar[tuple[str, ...]] = ("v",)

    def update(self, x: F64, mean: F64, slots: Mapping[str, F64]) -> tuple[F64, dict[str, F64]]:
        eta, beta = self.hyper["server_learning_rate"], self.hyper["server_momentum"]
        v = beta * slots["v"] + (x - mean)
        return x - eta * v, {"v": v}


class _FedOpt(_ServerOptimiser):
    """Reddi et al.'s FedOpt: ``m = β1·m + (1-β1)·Δ``, `second_moment`, ``x' = x + η·m / (√v + τ)``."""

    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def update(self, x: F64, mean: F64, slots: Mapping[str, F64]) -> tuple[F64, dict[str, F64]]:
        eta, beta_1, tau = self.hyper["server_learning_rate"], self.hyper["beta_1"], self.hyper["tau"]
        delta = mean - x
        m = beta_1 * slots["m"] + (1.0 - beta_1) * delta
        v = self.second_moment(slots["v"], np.square(delta))
        return x + eta * m / (np.sqrt(v) + tau), {"m": m, "v": v}

    @abstractmethod
    def second_moment(self, v: F64, delta_squared: F64) -> F64:
        """The new v from the old one and ``Δ²``."""


class FedAdam(_FedOpt):
    """Adam on the server: ``v = β2·v + (1-β2)·Δ²``."""

    name: ClassVar[str] = "FedAdam"
    defaults: ClassVar[Mapping[str, float]] = MappingProxyType(
        {"server_learning_rate": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    )

    def second_moment(self, v: F64, delta_squared: F64) -> F64:
        beta_2 = self.hyper["beta_2"]
        return beta_2 * v + (1.0 - beta_2) * delta_squared


class FedYogi(_FedOpt):
    """Yogi on the server: ``v = v - (1-β2)·Δ²·sign(v - Δ²)`` (v grows more slowly than Adam's)."""

    name: ClassVar[str] = "FedYogi"
    defaults: ClassVar[Mapping[str, float]] = MappingProxyType(
        {"server_learning_rate": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    )

    def second_moment(self, v: F64, delta_squared: F64) -> F64:
        beta_2 = self.hyper["beta_2"]
        return v - (1.0 - beta_2) * delta_squared * np.sign(v - delta_squared)


class FedAdagrad(_FedOpt):
    """Adagrad on the server: ``v = v + Δ²``; β1 defaults to 0 (``m = Δ``) as in Flower."""

    name: ClassVar[str] = "FedAdagrad"
    defaults: ClassVar[Mapping[str, float]] = MappingProxyType(
        {"server_learning_rate": 0.1, "beta_1": 0.0, "tau": 1e-3}
    )

    def second_moment(self, v: F64, delta_squared: F64) -> F64:
        return v + delta_squared


for _cls in (FedAvgM, FedAdam, FedYogi, FedAdagrad):
    register_strategy(_cls)
