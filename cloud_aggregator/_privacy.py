"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018) and its accountant.

A job turns it on with the aggregation worker's ``dp_mode`` parameter; ``dp_clip_norm`` (C),
``dp_noise_multiplier`` (z), ``dp_delta`` and ``dp_target_epsilon`` (the budget) set it. Every update's
delta from the global model it trained from is clipped to L2 norm C, so one edge's data moves the round's
sum of deltas by at most C (its sensitivity), and Gaussian noise of std ``z*C`` on that sum hides it:

- ``central``: the aggregator clips each update (before any strategy) and adds N(0, (zC)^2) per
  coordinate to the round's sum at the close. Protects the published models (edges, whoever reads the
  Model url), not the updates: the aggregator and the broker see each clipped update in the clear.
- ``local``: each edge clips its own delta and adds N(0, (zC)^2) to it before the update leaves the
  training script (`edge_trainer`): every update is itself (epsilon, delta)-DP, also against the
  aggregator and the broker operator, at n times the noise variance in the sum.
- ``distributed``: each of the n edges adds a share of std zC/sqrt(n), so the sum of n independent
  shares has std exactly zC, as in central DP. Alone, each update carries only 1/sqrt(n) of the noise
  (weak against the aggregator); with secure aggregation (future) the aggregator sees only the sum, and
  that is what this mode composes with. When a round closes with k < n updates, the sum lacks the shares
  of the missing ones: the aggregator adds the missing std zC*sqrt((n-k)/n), so the published model
  carries the noise the accountant assumes.

**Weighting.** Sample weighting would let an edge with many samples move the mean by more than C/n (the
pitfall in Flower's and TFF's docs), so DP rounds weigh every update equally and divide by the *fixed*
denominator n, the job's training workers (DP-FedAvg's ``qN``), not the number that arrived: a round
closed with fewer updates moves the model less. The round's mean delta then has noise std ``z*C/n``.
Only floating tensors are clipped and noised (integer ones, counters and masks, are averaged as usual).

**Accountant.** Each round is one Gaussian mechanism with noise multiplier z on a sample of the training
workers (the sampling rate q: 1.0, every training worker takes part in every synchronous round), composed
over the closed rounds by ``dp_accounting``'s RDP accountant (add-or-remove-one adjacency). epsilon at
``dp_delta`` depends only on (rounds, z, q, delta), so a restarted aggregator derives it from the
checkpoint's closed round. With a budget, the round after which one more would pass it is the final one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import StrategyError
from cloud_aggregator._strategy import AggregationState
from schemas import PARAMETER_BOUNDS, PARAMETER_CHOICES, PrivacyStatus

__all__ = ["DEFAULT_DP_DELTA", "Privacy", "epsilon_spent"]

DpMode = Literal["central", "local", "distributed"]
# A common choice below 1/n for the few to hundreds of sites of a federated job (the accountant's delta
# must be well below 1/n to mean anything; the reference uses 1e-5).
DEFAULT_DP_DELTA = 1e-5

Arrays = Sequence[npt.NDArray[Any]]


@functools.lru_cache(maxsize=256)  # a round's close asks for rounds r and r+1, the status again
def epsilon_spent(rounds: int, noise_multiplier: float, delta: float, sampling_rate: float = 1.0) -> float:
    """The epsilon at `delta` after `rounds` Gaussian mechanisms of `noise_multiplier`, each on a Poisson
    sample of rate `sampling_rate`, by ``dp_accounting``'s RDP accountant (0.0 for no round)."""
    import dp_accounting  # scipy and friends: only the aggregator that runs a DP job pays for them

    if rounds <= 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(target_delta=delta))


def _number(parameters: Mapping[str, str], key: str) -> float | None:
    """A DP parameter under its name or UPPERCASE spelling, within its bound (None: absent)."""
    spelling = next((k for k in (key, key.upper()) if str(parameters.get(k, "")).strip() != ""), None)
    if spelling is None:
        return None
    raw = str(parameters[spelling]).strip()
    problem = PARAMETER_BOUNDS[key].problem(raw)
    if problem is not None:
        raise StrategyError(f"aggregationWorker parameter {spelling}={raw!r}: {problem}")
    return float(raw)


@dataclass(frozen=True)
class Privacy:
    """One job's differential privacy: how it is added, and what it has spent (`epsilon`)."""

    mode: DpMode
    clip_norm: float
    noise_multiplier: float
    delta: float
    target_epsilon: float | None
    workers: int  # n: the fixed denominator of a round's mean, and the shares of distributed noise
    sampling_rate: float = 1.0

    @classmethod
    def of(cls, parameters: Mapping[str, str], workers: int) -> Privacy | None:
        """The job's DP from the aggregation worker's parameters (None: ``dp_mode`` absent or ``none``).

        Raise StrategyError naming the parameter when one is out of its bound or missing."""
        raw = next((str(parameters[k]) for k in ("dp_mode", "DP_MODE") if str(parameters.get(k, "")).strip()), "none")
        mode = raw.strip().lower()
        if mode not in PARAMETER_CHOICES["dp_mode"]:
            raise StrategyError(
                f"aggregationWorker parameter dp_mode={raw!r}: expected one of {', '.join(PARAMETER_CHOICES['dp_mode'])}"
            )
        if mode == "none":
            return None
        clip, z = _number(parameters, "dp_clip_norm"), _number(parameters, "dp_noise_multiplier")
        for name, value in (("dp_clip_norm", clip), ("dp_noise_multiplier", z)):
            if value is None:
                raise StrategyError(f"dp_mode={mode} needs the aggregationWorker parameter {name} (a number > 0)")
        assert clip is not None and z is not None
        delta = _number(parameters, "dp_delta")
        return cls(
            mode=mode,  # type: ignore[arg-type]  # one of the choices, checked above
            clip_norm=clip,
            noise_multiplier=z,
            delta=delta if delta is not None else DEFAULT_DP_DELTA,
            target_epsilon=_number(parameters, "dp_target_epsilon"),
            workers=max(1, workers),
        )

    def describe(self) -> str:
        budget = f", budget epsilon {self.target_epsilon:g}" if self.target_epsilon is not None else ""
        return (
            f"{self.mode} DP (clip {self.clip_norm:g}, noise multiplier {self.noise_multiplier:g}, "
            f"delta {self.delta:g}{budget})"
        )

    # -- the accountant ----------------------------------------------------------------------------

    def epsilon(self, rounds: int) -> float:
        """The epsilon spent after `rounds` closed rounds (at `delta`)."""
        return epsilon_spent(rounds, self.noise_multiplier, self.delta, self.sampling_rate)

    def allows(self, rounds: int) -> bool:
        """`rounds` closed rounds stay within the budget (always, without one)."""
        return self.target_epsilon is None or self.epsilon(rounds) <= self.target_epsilon

    def status(self, rounds: int, *, budget_spent: bool = False) -> PrivacyStatus:
        """What the job status says after `rounds` closed rounds."""
        return PrivacyStatus(
            mode=self.mode,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            delta=self.delta,
            target_epsilon=self.target_epsilon,
            sampling_rate=self.sampling_rate,
            rounds=rounds,
            epsilon=round(self.epsilon(rounds), 6),
            budget_spent=budget_spent,
        )

    # -- the noise -------------------------------------------------------------------------------------

    @property
    def aggregator_clips(self) -> bool:
        """Central DP clips at the aggregator; with edge noise, clipping a noised update would bias the noise."""
        return self.mode == "central"

    def edge_noise_std(self) -> float:
        """The std of the noise each edge adds to its clipped delta (0: the aggregator adds it)."""
        if self.mode == "local":
            return self.noise_multiplier * self.clip_norm
        if self.mode == "distributed":
            return self.noise_multiplier * self.clip_norm / math.sqrt(self.workers)
        return 0.0

    def edge_parameters(self) -> dict[str, str]:
        """What the plan tells each training worker (its script's parameters): empty for central DP."""
        if self.mode == "central":
            return {}
        return {"dp_mode": self.mode, "dp_clip_norm": repr(self.clip_norm), "dp_noise_std": repr(self.edge_noise_std())}

    def sum_noise_std(self, updates: int) -> float:
        """The std the aggregator adds to a round's sum of `updates` deltas."""
        if self.mode == "central":
            return self.noise_multiplier * self.clip_norm
        if self.mode == "distributed":  # the shares of the edges whose update is not in the round
            return self.noise_multiplier * self.clip_norm * math.sqrt(max(0, self.workers - updates) / self.workers)
        return 0.0

    def fold_scale(self, num_samples: int) -> float:
        """The `Strategy.fold` scale that makes an update weigh 1 whatever its sample count (uniform mean)."""
        return 1.0 / float(num_samples)

    def close(self, state: AggregationState, previous: Arrays, rng: np.random.Generator) -> AggregationState:
        """The round's accumulator (each update folded with weight 1) turned into DP-FedAvg's: the missing
        ``n - k`` updates count as the previous model (the fixed denominator n), and the noise of
        `sum_noise_std` is added to every floating coordinate of the sum. The strategy then steps from its
        mean ``previous + (sum of deltas + noise) / n`` as from any FedAvg mean."""
        if state.count == 0:
            raise StrategyError("no update was folded: there is nothing to average")
        denominator = float(max(self.workers, state.count))
        std = self.sum_noise_std(state.count)
        sums = []
        for total, prev, (_, dtype, shape) in zip(state.sums, previous, state.layout, strict=True):
            padded = total + (denominator - state.total_weight) * np.asarray(prev, dtype=np.float64)
            if std > 0 and np.dtype(dtype).kind == "f":
                padded = padded + rng.normal(0.0, std, size=shape)
            padded.setflags(write=False)
            sums.append(padded)
        return AggregationState(
            strategy=state.strategy,
            layout=state.layout,
            sums=tuple(sums),
            total_samples=state.total_samples,
            count=state.count,
            extra=MappingProxyType(dict(state.extra)),
            total_weight=denominator,
        )
