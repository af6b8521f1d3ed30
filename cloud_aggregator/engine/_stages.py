"""The stages of one job, one state object per stage, each holding exactly what is valid in that stage.

A job is always in one of `Starting`, `Init`, `Training`, `Final` or `Done` (the union `JobState`);
moving to the next stage replaces the object. So "the accumulator exists" is "the job is `Training`",
and a type check (``isinstance``) is all the narrowing the engine needs. `Stage` names the stage.

Every state answers `round` (the round in progress, or the last one the job was in) and `run`/`model`
(None in the stages that have none), so the parts that only report do not care which stage it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

import numpy.typing as npt

from cloud_aggregator._privacy import Privacy
from cloud_aggregator._strategy import AggregationState, Layout, ServerState, Strategy
from cloud_aggregator.engine._checkpoint import Checkpoint
from cloud_aggregator.engine._secagg_record import SecAggRound
from schemas import JobPlan, SecAggSettings, TransferManifest, WorkerStatus, now, weights_digest

__all__ = ["Done", "Final", "GlobalWeights", "Init", "JobState", "Run", "Stage", "Starting", "Training"]

Arrays = list[npt.NDArray[Any]]
# (round, node, transfer): one update or init transfer of one run
TransferId = tuple[int, str, str]


class Stage(StrEnum):
    STARTING = "starting"
    INIT = "init"
    TRAINING = "training"
    FINAL = "final"
    DONE = "done"


@dataclass(frozen=True)
class Run:
    """What the script's config settled: the strategy and the plan published for the edges."""

    strategy: Strategy
    plan: JobPlan  # the run's exit_round is plan.exit_round
    privacy: Privacy | None = None  # differential privacy (`dp_mode`), None: none
    secagg: SecAggSettings | None = None  # secure aggregation (`secure_aggregation`), None: none

    def is_final(self, round_: int) -> bool:
        """Round `round_` is the run's last: the plan's exit_round, or one more would pass the privacy budget."""
        return round_ >= self.plan.exit_round or self.budget_spent(round_)

    def budget_spent(self, round_: int) -> bool:
        """After `round_` closed rounds, one more would spend more epsilon than the job's budget allows."""
        return self.privacy is not None and not self.privacy.allows(round_ + 1)


@dataclass(frozen=True)
class GlobalWeights:
    """The current global model: round 0's (the chosen init) or the last closed round's."""

    arrays: Arrays
    layout: Layout
    names: list[str]
    source: str  # the node whose init became the round-0 model
    digest: str  # what a worker that saved these weights reports

    @classmethod
    def of(cls, arrays: Arrays, layout: Layout, names: list[str], source: str) -> GlobalWeights:
        return cls(arrays, layout, names, source, weights_digest(arrays))

    def evolved(self, arrays: Arrays) -> GlobalWeights:
        """The next round's global model: new values, the same layout, names and origin."""
        return GlobalWeights.of(arrays, self.layout, self.names, self.source)


@dataclass
class Starting:
    """The aggregation script runs; its config frame is due by `config_deadline`.

    A resumed run keeps here what arrives before the round state is restored: the checkpoint it
    loaded, and the worker statuses and manifests of this run (replayed once the job runs). Every run
    keeps the participants whose node is offline (`offline`, replayed after the worker statuses) and those
    whose node is known online (`online`: the plan asks the first of them for the initial weights).
    """

    config_deadline: float
    checkpoint: tuple[Checkpoint, bytes] | None = None
    offline: set[str] = field(default_factory=set)
    online: set[str] = field(default_factory=set)
    early_statuses: dict[str, tuple[WorkerStatus, bool]] = field(default_factory=dict)
    early_manifests: dict[TransferId, TransferManifest] = field(default_factory=dict)
    # Secure aggregation messages of this run (retained ones arrive at the restart's subscription), in
    # order: (step, node, round, topic, payload).
    early_secagg: list[tuple[str, str, int, str, bytes]] = field(default_factory=list)

    stage: ClassVar[Stage] = Stage.STARTING
    round: ClassVar[int] = 0
    run: ClassVar[None] = None
    model: ClassVar[None] = None


@dataclass(frozen=True)
class Init:
    """The plan is out; the first valid init transfer becomes the round-0 model."""

    run: Run

    stage: ClassVar[Stage] = Stage.INIT
    round: ClassVar[int] = 0
    model: ClassVar[None] = None


@dataclass
class Training:
    """Round `round` is open: updates are folded into `acc` on arrival, each participant's once."""

    run: Run
    model: GlobalWeights  # the previous round's global model (what the edges train from)
    round: int
    acc: AggregationState
    opened: float  # when the round opened (its deadline counts from here)
    # The strategy's cross-round state as the previous round left it (None: the strategy keeps none);
    # the round's close steps from it, and the checkpoint of that round keeps the state after it.
    server: ServerState | None = None
    counted: dict[str, int] = field(default_factory=dict)  # node -> num_samples folded
    transfers: dict[str, str] = field(default_factory=dict)  # node -> the transfer folded
    # node -> (blob bytes, seconds from its first chunk or manifest to the whole blob; None if unknown)
    received: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    # node -> the audit note of clipping its update (`Strategy.clip`), for the round record
    clipped: dict[str, str] = field(default_factory=dict)
    # Asynchronous rounds (`_staleness`): node -> the round its counted update was trained for (a stale
    # one's is older than `round`), and node -> the round of its next update, carried to the next buffer.
    origins: dict[str, int] = field(default_factory=dict)
    carried: dict[str, int] = field(default_factory=dict)
    deadline_passed: bool = False
    opened_at: datetime = field(default_factory=now)
    # Secure aggregation (`Run.secagg`): the round's protocol record; the masked sum replaces `acc` until
    # the round is unmasked (`_secagg`).
    secagg: SecAggRound | None = None
    # Hierarchical rounds (`_hier`): site aggregator -> the partial folded, and the edges of those sites
    # (counted or not: a site sends one partial per round, so the round waits for none of them any more).
    partials: dict[str, str] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)

    stage: ClassVar[Stage] = Stage.TRAINING

    def waiting_for(self, participants: list[str]) -> list[str]:
        return [p for p in participants if p not in self.counted and p not in self.settled]

    def holds(self, node: str, round_: int) -> bool:
        """Whether `node`'s update of `round_` is counted in this round or carried to the next one (a site
        aggregator: its partial of this round is folded)."""
        if node in self.partials:
            return round_ == self.round
        counted = node in self.counted and self.origins.get(node, self.round) == round_
        return counted or self.carried.get(node) == round_


@dataclass(frozen=True)
class Final:
    """The final model is out; the job succeeds when each of the final round's `participants` completed."""

    run: Run
    model: GlobalWeights
    round: int
    participants: list[str]

    stage: ClassVar[Stage] = Stage.FINAL


@dataclass(frozen=True)
class Done:
    """Succeeded or failed (the status says which); the job only answers for what it stored."""

    run: Run | None
    model: GlobalWeights | None
    round: int

    stage: ClassVar[Stage] = Stage.DONE


JobState = Starting | Init | Training | Final | Done
