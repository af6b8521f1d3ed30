"""What a job's spec and its controller fix for the whole run: names, workers, models and round rules.

`JobFacts` is read by every part of the engine and changed by none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cached_property

from cloud_aggregator.engine._hier import Hierarchy, hierarchy_of
from schemas import (
    DEFAULT_INIT_WAIT,
    MAX_INIT_WAIT,
    Dataset,
    DatasetRef,
    EffectiveWorker,
    FederatedLearningJob,
    JobPlan,
    Model,
    ModelRef,
    PlannedWorker,
    ScriptRef,
    update_compression,
)

__all__ = [
    "DEFAULT_MAX_STALENESS",
    "DEFAULT_OFFLINE_GRACE",
    "DEFAULT_RESUME_AFTER",
    "DEFAULT_STALENESS_EXPONENT",
    "Asynchrony",
    "JobFacts",
    "JobSettings",
    "planned_workers",
]

DEFAULT_RESUME_AFTER = 3.0
# Seconds a participant's node must stay offline (its last will) before an open round stops waiting for
# it: a link that drops and comes back within seconds (paho reconnects after 1 s) does not close rounds.
DEFAULT_OFFLINE_GRACE = 10.0
# FedBuff's defaults (Nguyen et al. 2022): polynomial staleness weight (1 + s) ** -0.5; an update may lag
# a few versions, past which it is more noise than signal (their staleness rarely exceeded ~5).
DEFAULT_MAX_STALENESS = 4
DEFAULT_STALENESS_EXPONENT = 0.5


@dataclass(frozen=True)
class Asynchrony:
    """The asynchronous mode's rules (aggregation worker parameter ``aggregation_mode: async``).

    A round is a buffer: round R opens on global model version R-1 and closes when `buffer_size` updates
    are in, whichever version each was trained from, as long as it lags at most `max_staleness` versions
    (its staleness ``s = R - its round``); each weighs ``num_samples * (1 + s) ** -exponent``."""

    buffer_size: int
    max_staleness: int = DEFAULT_MAX_STALENESS
    exponent: float = DEFAULT_STALENESS_EXPONENT

    def scale(self, staleness: int) -> float:
        """The discount of an update `staleness` versions old (1.0 for a fresh one)."""
        return float((1.0 + staleness) ** -self.exponent) if staleness > 0 else 1.0

    def describe(self) -> str:
        return (
            f"asynchronous: buffers of {self.buffer_size}, max staleness {self.max_staleness}, "
            f"weight (1+s)^-{self.exponent:g}"
        )


@dataclass(frozen=True)
class JobSettings:
    """What this aggregation node fixes for every job it runs; the controller holds one for all of them."""

    chunk_size: int = 512 * 1024  # bytes per chunk of a published global model
    reference_grace: float = 5.0  # seconds a job waits for a missing Dataset or Model before it fails
    node_grace: float = 60.0  # seconds a job waits for a node never seen (an edge may still be booting)
    config_timeout: float = 120.0  # seconds the script has to send its config
    resume_after: float = DEFAULT_RESUME_AFTER  # seconds a stalled transfer waits before the resume request
    # Seconds between two publications of a job's status (0: every change). A change of phase, round or
    # condition, and any change of a finished job, is published at once; others wait for the interval,
    # and the newest is published by `Job.tick` (a 10-edge round changes the status ~50 times).
    status_interval: float = 0.0
    # Bytes of in-flight update chunks a job holds in memory; transfers beyond it are spilled to disk (`_intake`).
    transfer_memory: int = 64 * 1024 * 1024


def _model_ref(model: Model) -> ModelRef:
    return ModelRef(name=model.metadata.name, url=model.spec.url, format=model.spec.format)


def planned_workers(spec: FederatedLearningJob, datasets: Mapping[str, Dataset]) -> list[PlannedWorker]:
    """Each training worker as the plan tells its edge: node, resolved Dataset, script and parameters."""
    planned = []
    for worker in spec.spec.training_workers:
        eff = worker.effective()
        ds = datasets[worker.dataset.name]
        planned.append(
            PlannedWorker(
                node=eff.node_name,
                dataset=DatasetRef(
                    name=ds.metadata.name, url=ds.spec.url, format=ds.spec.format, node_name=ds.spec.node_name
                ),
                script=ScriptRef(
                    dir=eff.script_dir,
                    boot_file=eff.script_boot_file,
                    framework_type=eff.framework_type,
                    framework_version=eff.framework_version,
                ),
                parameters=dict(eff.parameters),
            )
        )
    return planned


def _seconds(raw: object) -> float | None:
    """A parameter's value in seconds, None when absent or not a number (the spec's check reports those)."""
    if raw in (None, ""):
        return None
    try:
        return float(str(raw))
    except ValueError:
        return None


def _round_rules(worker: EffectiveWorker, participants: int) -> tuple[float | None, int, float]:
    """round_deadline (None: no deadline), min_participants (clamped to 1..participants) and offline_grace
    (seconds, default `DEFAULT_OFFLINE_GRACE`) from the spec."""
    params = worker.parameters
    value = _seconds(params.get("round_deadline"))
    deadline = value if value is not None and value > 0 else None
    quorum = participants
    raw = params.get("min_participants")
    if raw not in (None, ""):
        with contextlib.suppress(ValueError):
            quorum = max(1, min(int(str(raw)), participants))
    grace = _seconds(params.get("offline_grace"))
    return deadline, quorum, grace if grace is not None and grace >= 0 else DEFAULT_OFFLINE_GRACE


def _init_wait(worker: EffectiveWorker) -> float:
    """init_wait (seconds, default `DEFAULT_INIT_WAIT`; 0: every edge uploads its init) from the spec."""
    value = _seconds({k.lower(): v for k, v in worker.parameters.items()}.get("init_wait"))
    if value is None or not 0 <= value <= MAX_INIT_WAIT:  # the spec's check refuses those; the plan must not
        return DEFAULT_INIT_WAIT
    return value


def _whole(raw: object, default: int) -> int:
    """A whole-number parameter, `default` when absent or not one (the spec's check reports those)."""
    try:
        return int(str(raw)) if raw not in (None, "") else default
    except ValueError:
        return default


def _asynchrony(worker: EffectiveWorker, participants: int) -> Asynchrony | None:
    """The asynchronous mode's rules from the aggregation worker's parameters; None: synchronous rounds.

    `buffer_size` defaults to half the training workers (rounded up; FedBuff's K), clamped to 1..participants:
    a buffer larger than the fleet would never fill."""
    params = {k.lower(): v for k, v in worker.parameters.items()}
    if str(params.get("aggregation_mode", "")).strip().lower() != "async":
        return None
    buffer = max(1, min(_whole(params.get("buffer_size"), (participants + 1) // 2), max(1, participants)))
    exponent = _seconds(params.get("staleness_exponent"))
    return Asynchrony(
        buffer_size=buffer,
        max_staleness=max(0, _whole(params.get("max_staleness"), DEFAULT_MAX_STALENESS)),
        exponent=exponent if exponent is not None and exponent >= 0 else DEFAULT_STALENESS_EXPONENT,
    )


@dataclass(frozen=True)
class JobFacts:
    """One run of one job on this aggregation node (`resume`: it restarts from its checkpoint)."""

    # What the spec says, its Datasets and Models resolved:
    spec: FederatedLearningJob
    spec_hash: str
    name: str
    namespace: str
    planned: list[PlannedWorker]
    participants: list[str]
    round_deadline: float | None
    min_participants: int
    offline_grace: float  # seconds offline before a participant no longer holds a round open (`RoundEngine`)
    init_wait: float  # seconds the edges not asked for the initial weights wait for the round-0 model
    asynchrony: Asynchrony | None  # None: Sedna's synchronous rounds
    aggregation_worker: EffectiveWorker
    model: ModelRef
    pretrained_model: ModelRef | None
    # What the controller fixed for this run:
    node: str
    uid: str
    resume: bool
    settings: JobSettings

    @classmethod
    def of(
        cls,
        spec: FederatedLearningJob,
        datasets: Mapping[str, Dataset],
        models: Mapping[str, Model],
        *,
        node: str,
        uid: str,
        settings: JobSettings,
        resume: bool = False,
    ) -> JobFacts:
        """The facts of run `uid` of `spec` on `node`, its references resolved (`resume`: from its checkpoint).

        `datasets` and `models` must hold every Dataset and Model the spec names (the controller checked
        the references before it starts a job)."""
        agg = spec.spec.aggregation_worker
        worker = agg.effective()
        pretrained = spec.spec.pretrained_model
        planned = planned_workers(spec, datasets)
        deadline, quorum, grace = _round_rules(worker, len(planned))
        return cls(
            spec=spec,
            spec_hash=spec.spec_hash(),
            name=spec.metadata.name,
            namespace=spec.metadata.namespace,
            planned=planned,
            participants=[w.node for w in planned],
            round_deadline=deadline,
            min_participants=quorum,
            offline_grace=grace,
            init_wait=_init_wait(worker),
            asynchrony=_asynchrony(worker, len(planned)),
            aggregation_worker=worker,
            model=_model_ref(models[agg.model.name]),
            pretrained_model=_model_ref(models[pretrained.name]) if pretrained else None,
            node=node,
            uid=uid,
            resume=resume,
            settings=settings,
        )

    @property
    def global_float16(self) -> bool:
        """The global models are published as float16 (aggregation worker parameter ``global_compression``)."""
        params = {k.lower(): v for k, v in self.aggregation_worker.parameters.items()}
        return str(params.get("global_compression", "none")).strip().lower() == "float16"

    @cached_property
    def hierarchy(self) -> Hierarchy | None:
        """The job's sites (``hierarchical: "true"``), None for a flat job or when its parameters are wrong:
        the script's config (`engine/_script`) refuses those with `hierarchy_of`'s message first."""
        try:
            return hierarchy_of(self.aggregation_worker.parameters, self.planned)
        except ValueError:
            return None

    @property
    def senders(self) -> list[str]:
        """Who may send this job weights: its training workers and, hierarchical, its site aggregators."""
        extra = list(self.hierarchy.aggregators.values()) if self.hierarchy is not None else []
        return [*self.participants, *extra]

    def topk_workers(self) -> list[str]:
        """The training workers that send top-k sparsified updates (parameter ``compression: topk``)."""
        return [w.node for w in self.planned if update_compression(w.parameters)[0] == "topk"]

    def init_source(self, online: Collection[str]) -> str | None:
        """The training worker asked for the initial weights: the first one (spec order) whose node is known
        online (`online`), else the first one; None with ``init_wait: 0`` (every edge uploads its init).

        One init instead of one per edge: at 100 edges x 1.7 MB the 99 inits nobody uses were 170 MB through
        the broker and the aggregator, competing with round 1. An online node is the likeliest to send it
        soon; if it does not, the others upload theirs after `init_wait` and any valid init still counts."""
        if self.init_wait <= 0 or not self.participants:
            return None
        return next((node for node in self.participants if node in online), self.participants[0])

    def plan(
        self,
        aggregation: str,
        exit_round: int,
        worker_parameters: Mapping[str, str] | None = None,
        *,
        online: Collection[str] = (),
    ) -> JobPlan:
        """The plan the edges follow, once the script's config chose the aggregation and exit_round.

        `worker_parameters` go to every training worker's parameters, over its own of the same names: what
        the aggregation worker's settings tell the edges' scripts (local DP's clip norm and noise std).
        `online`: the nodes known online now, for the plan's init source (`init_source`)."""
        workers = self.planned
        if worker_parameters:
            workers = [w.model_copy(update={"parameters": {**w.parameters, **worker_parameters}}) for w in self.planned]
        return JobPlan(
            job=self.name,
            namespace=self.namespace,
            uid=self.uid,
            aggregation_node=self.node,
            aggregation=aggregation,
            exit_round=exit_round,
            participants=list(self.participants),
            model=self.model,
            pretrained_model=self.pretrained_model,
            workers=workers,
            chunk_size=self.settings.chunk_size,
            init_source=self.init_source(online),
            init_wait=self.init_wait,
        )
