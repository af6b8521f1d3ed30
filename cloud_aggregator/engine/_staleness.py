"""Asynchronous rounds (FedBuff): which updates a buffer takes, and what each one counts for.

In ``aggregation_mode: async`` (`JobFacts.asynchrony`) round R is a buffer: it opens on global model
version R-1 and closes when `buffer_size` updates are in. An edge trains from the newest model it holds,
so an update of round r (trained from version r-1) may reach the aggregator while a later round is open:

- its staleness is ``s = R - r``; past `max_staleness` it is refused, saying so (the edge then trains
  from the newest model);
- it is *rebased*: ``current + (update - base)``, where `base` is version r-1 and `current` version R-1,
  so what it adds is the change its own training made, not a pull back towards an old model (FedBuff
  aggregates such deltas; rebasing folds them into the unchanged strategies: FedAvg of rebased updates is
  ``current + mean(delta)``, and a server optimiser's pseudo-gradient is ``-mean(delta)``);
- it weighs ``num_samples * (1 + s) ** -exponent`` (`Strategy.fold`'s `scale`).

`BaseModels` keeps the versions an update may still be rebased onto (the last ``max_staleness + 1``);
the checkpoints keep them too (`Port.save_checkpoint`'s `keep_globals`), so a restarted aggregator rebases
exactly as before. A node whose update is already in the open buffer and sends another one (trained from
a newer version) has it *carried*: stored in the next round's spool and folded when that round opens,
so no edge's work is lost and no buffer holds two updates of one edge.

Everything here depends only on the arrival order: the same updates in the same order give the same
model, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._strategy import cast_to
from cloud_aggregator.engine._facts import Asynchrony

__all__ = ["BaseModels", "rebase", "stale_problem"]

Arrays = Sequence[npt.NDArray[Any]]


class BaseModels:
    """The global model versions an asynchronous update may be rebased onto (version -> arrays)."""

    def __init__(self, keep: int) -> None:
        self._keep = max(1, keep)
        self._models: dict[int, list[npt.NDArray[Any]]] = {}

    def add(self, version: int, arrays: Arrays) -> None:
        """Version `version` was committed: keep it, and forget those no update may be rebased onto any more."""
        self._models[version] = list(arrays)
        for old in [v for v in self._models if v <= version - self._keep]:
            del self._models[old]

    def get(self, version: int) -> list[npt.NDArray[Any]] | None:
        return self._models.get(version)

    @property
    def versions(self) -> list[int]:
        return sorted(self._models)


def stale_problem(asynchrony: Asynchrony | None, open_round: int, round_: int) -> str | None:
    """Why an update of `round_` cannot go into the buffer of `open_round` (None: it can)."""
    if round_ > open_round:
        return f"round {round_} has not started; the current round is {open_round}"
    if round_ == open_round:
        return None
    if asynchrony is None:
        return f"round {round_} is closed"
    staleness = open_round - round_
    if staleness > asynchrony.max_staleness:
        return (
            f"round {round_} is too stale: it was trained from model version {round_ - 1}, the current is "
            f"{open_round - 1} ({staleness} versions behind, max_staleness {asynchrony.max_staleness})"
        )
    return None


def rebase(update: Arrays, base: Arrays, current: Arrays) -> list[npt.NDArray[Any]]:
    """``current + (update - base)`` per tensor, in float64, cast back to each tensor's dtype."""
    rebased = []
    for u, b, c in zip(update, base, current, strict=True):
        delta = np.asarray(u, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        rebased.append(cast_to(np.asarray(c, dtype=np.float64) + delta, np.dtype(u.dtype).name))
    return rebased
