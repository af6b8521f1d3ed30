"""Test doubles for `cloud_aggregator.engine`: an in-memory `Port` and transfer builders.

    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    ...
    assert port.status(Kind.JOB, "job").phase is Phase.RUNNING

Nothing here touches a broker, a process or a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError, StateError
from cloud_aggregator.engine import Checkpoint, FinalModel, KeptState, ScriptRequest, ScriptSignal, SpooledUpdate
from schemas import (
    JobEvent,
    JobPlan,
    JobStatus,
    Kind,
    ModelRef,
    ResourceStatus,
    RoundRecord,
    SecAggState,
    ShareBundle,
    TransferManifest,
    TransferOrigin,
    UpdateAck,
    WeightsKind,
    decode_weights,
    weights_transfer,
)

__all__ = ["GlobalModel", "MemoryDisk", "MemoryPort", "MemorySpill", "chunks_of", "make_transfer"]


@dataclass(frozen=True)
class GlobalModel:
    """A global model as the engine published it (what `Port.publish_global` was given, in its order)."""

    job: str
    round: int
    blob: bytes = field(repr=False)
    uid: str
    num_samples: int
    final: bool

    @property
    def arrays(self) -> list[npt.NDArray[Any]]:
        return decode_weights(self.blob)[1]


@dataclass
class MemoryDisk:
    """What `StateStore` keeps under ROOT/state and `KeptStore` under ROOT/state/_kept, in memory."""

    spool: dict[str, dict[int, list[SpooledUpdate]]] = field(default_factory=dict)
    checkpoints: dict[str, tuple[Checkpoint, bytes]] = field(default_factory=dict)
    # job -> (closed round, the strategy's server state saved with that round's checkpoint)
    server_states: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    globals: dict[str, dict[int, bytes]] = field(default_factory=dict)  # job -> round -> kept global blob
    kept: KeptState = field(default_factory=KeptState)
    secagg: dict[str, dict[int, bytes]] = field(default_factory=dict)  # job -> round -> secure aggregation record


class MemorySpill:
    """A spilled transfer's bytes in memory (`MemoryPort.open_spill`); `MemoryPort.spills` lists every one."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.deleted = False

    def append(self, data: bytes) -> None:
        self.data += data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def delete(self) -> None:
        self.data = bytearray()
        self.deleted = True


@dataclass
class MemoryPort:
    """Records every side effect; `fail_*` fields make the next such call raise."""

    statuses: dict[tuple[Kind, str], JobStatus | ResourceStatus | None] = field(default_factory=dict)
    status_history: list[tuple[Kind, str, JobStatus | ResourceStatus | None]] = field(default_factory=list)
    plans: dict[str, JobPlan | None] = field(default_factory=dict)
    # Every line of the job event streams, in the order published (each one's wire form is checked).
    events: list[JobEvent] = field(default_factory=list)
    # (job, round) -> the retained round record (None: cleared); every publication in order
    round_records: dict[tuple[str, int], RoundRecord | None] = field(default_factory=dict)
    round_record_history: list[tuple[str, int, RoundRecord | None]] = field(default_factory=list)
    restored_specs: list[tuple[Kind, str, bytes]] = field(default_factory=list)
    retained_globals: dict[str, dict[int, GlobalModel]] = field(default_factory=dict)
    published_globals: list[GlobalModel] = field(default_factory=list)
    spills: list[MemorySpill] = field(default_factory=list)  # every in-flight transfer the intake spilled
    acks: list[UpdateAck] = field(default_factory=list)
    # Secure aggregation: (job, round) -> the retained state (None: cleared), every publication in order,
    # and every retained edge message cleared: (job, round, step, node).
    secagg_states: dict[tuple[str, int], SecAggState | None] = field(default_factory=dict)
    secagg_history: list[tuple[str, int, SecAggState | None]] = field(default_factory=list)
    secagg_cleared: list[tuple[str, int, str, str]] = field(default_factory=list)
    secagg_restored: list[tuple[str, ShareBundle]] = field(default_factory=list)
    # The "disk": job -> round -> [(node, transfer, blob)], and job -> (checkpoint, global blob).
    # Share `disk` between two ports to simulate a restart on the same node root.
    disk: MemoryDisk = field(default_factory=MemoryDisk)
    scripts: list[ScriptRequest] = field(default_factory=list)
    signals: list[tuple[str, str, ScriptSignal]] = field(default_factory=list)
    models: list[tuple[str, ModelRef, list[npt.NDArray[Any]], list[str], dict[str, Any]]] = field(default_factory=list)
    fail_start: AggregatorError | None = None
    fail_publish_global: AggregatorError | None = None
    fail_write_model: AggregatorError | None = None
    fail_store: AggregatorError | None = None

    # -- Port ------------------------------------------------------------------------------------

    def publish_status(self, kind: Kind, name: str, status: JobStatus | ResourceStatus | None) -> None:
        # What a subscriber gets: the document read back from its wire form (a deep copy, and much faster
        # than deepcopy for a status with many workers and rounds).
        payload = status.to_json() if status is not None else None
        copy = type(status).model_validate_json(payload) if status is not None and payload is not None else None
        self.statuses[(kind, name)] = copy
        self.status_history.append((kind, name, copy))
        self.disk.kept.keep_status(kind, name, payload)

    def publish_round_record(self, job: str, round_: int, record: RoundRecord | None) -> None:
        copy = record.model_copy(deep=True) if record is not None else None
        self.round_records[(job, round_)] = copy
        self.round_record_history.append((job, round_, copy))

    def status_changed(self, name: str, status: JobStatus) -> None:
        pass  # only the engine's StreamingPort acts on it

    def publish_event(self, event: JobEvent) -> None:
        self.events.append(JobEvent.model_validate_json(event.to_json()))

    def job_events(self, job: str) -> list[JobEvent]:
        """The lines of one job's event stream, in order."""
        return [e for e in self.events if e.job == job]

    def publish_plan(self, job: str, plan: JobPlan | None) -> None:
        self.plans[job] = plan
        self.disk.kept.keep_plan(job, plan.to_json() if plan is not None else None)

    def restore_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self.restored_specs.append((kind, name, payload))

    def keep_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self.disk.kept.keep_spec(kind, name, payload)

    def forget_spec(self, kind: Kind, name: str, *, deleted: bool) -> None:
        self.disk.kept.forget_spec(kind, name, deleted=deleted)

    def kept(self) -> KeptState:
        return self.disk.kept

    def publish_global(self, job: str, round_: int, blob: bytes, *, uid: str, num_samples: int, final: bool) -> None:
        if self.fail_publish_global is not None:
            raise self.fail_publish_global
        model = GlobalModel(job, round_, blob, uid, num_samples, final)
        self.published_globals.append(model)
        self.retained_globals.setdefault(job, {})[round_] = model

    def clear_globals(self, job: str, keep: int | None = None) -> None:
        kept = {r: m for r, m in self.retained_globals.get(job, {}).items() if r == keep}
        if kept:
            self.retained_globals[job] = kept
        else:
            self.retained_globals.pop(job, None)

    def send_ack(self, ack: UpdateAck) -> None:
        self.acks.append(ack)

    def publish_secagg_state(self, job: str, round_: int, state: SecAggState | None) -> None:
        copy = SecAggState.model_validate_json(state.to_json()) if state is not None else None
        self.secagg_states[(job, round_)] = copy
        self.secagg_history.append((job, round_, copy))

    def restore_secagg_bundle(self, job: str, bundle: ShareBundle) -> None:
        self.secagg_restored.append((job, ShareBundle.model_validate_json(bundle.to_json())))

    def clear_secagg_step(self, job: str, round_: int, step: str, node: str) -> None:
        self.secagg_cleared.append((job, round_, step, node))

    def start_script(self, request: ScriptRequest) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        self.scripts.append(request)

    def signal_script(self, job: str, uid: str, signal: ScriptSignal) -> None:
        self.signals.append((job, uid, signal))

    def write_model(self, final: FinalModel) -> str:
        if self.fail_write_model is not None:
            raise self.fail_write_model
        model = final.model
        self.models.append((final.job, model, [np.array(a) for a in final.arrays], list(final.names), dict(final.meta)))
        return f"/memory{model.url.rstrip('/')}/{model.name}.npz"

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        if self.fail_store is not None:
            raise self.fail_store
        entries = self.disk.spool.setdefault(job, {}).setdefault(round_, [])
        if not any(e.node == node and e.transfer == transfer for e in entries):
            entries.append(SpooledUpdate(node, transfer, bytes(blob)))  # a copy, as a disk holds one

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        return list(self.disk.spool.get(job, {}).get(round_, []))

    def open_spill(self, job: str) -> MemorySpill:
        spill = MemorySpill()
        self.spills.append(spill)
        return spill

    def read_spooled_update(self, job: str, round_: int, node: str, transfer: str) -> memoryview:
        for entry in self.disk.spool.get(job, {}).get(round_, []):
            if entry.node == node and entry.transfer == transfer:
                return memoryview(entry.blob)
        raise StateError(f"no spooled update of {node} ({transfer}) for round {round_}")

    def drop_spool(self, job: str, upto: int) -> None:
        rounds = self.disk.spool.get(job, {})
        for r in [r for r in rounds if r <= upto]:
            del rounds[r]
        records = self.disk.secagg.get(job, {})
        for r in [r for r in records if r <= upto]:
            del records[r]

    def save_secagg(self, job: str, round_: int, data: bytes) -> None:
        if self.fail_store is not None:
            raise self.fail_store
        self.disk.secagg.setdefault(job, {})[round_] = bytes(data)

    def load_secagg(self, job: str, round_: int) -> bytes | None:
        return self.disk.secagg.get(job, {}).get(round_)

    def save_checkpoint(
        self, checkpoint: Checkpoint, global_blob: bytes, server_state: bytes | None = None, *, keep_globals: int = 1
    ) -> None:
        r = checkpoint.closed_round
        kept = self.disk.globals.setdefault(checkpoint.job, {})
        kept[r] = global_blob
        for old in [v for v in kept if not r - max(1, keep_globals) < v <= r]:
            del kept[old]
        if server_state is not None:
            self.disk.server_states[checkpoint.job] = (checkpoint.closed_round, server_state)
        else:
            self.disk.server_states.pop(checkpoint.job, None)
        self.disk.checkpoints[checkpoint.job] = (Checkpoint.model_validate_json(checkpoint.to_json()), global_blob)

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        return self.disk.checkpoints.get(job)

    def load_global(self, job: str, round_: int) -> bytes | None:
        return self.disk.globals.get(job, {}).get(round_)

    def load_server_state(self, job: str, round_: int) -> bytes | None:
        saved = self.disk.server_states.get(job)
        return saved[1] if saved is not None and saved[0] == round_ else None

    def clear_state(self, job: str) -> None:
        self.disk.spool.pop(job, None)
        self.disk.checkpoints.pop(job, None)
        self.disk.server_states.pop(job, None)
        self.disk.globals.pop(job, None)
        self.disk.secagg.pop(job, None)

    # -- queries ---------------------------------------------------------------------------------

    def job_status(self, name: str) -> JobStatus:
        """The job's latest published status (AssertionError if there is none or it was cleared)."""
        status = self.statuses.get((Kind.JOB, name))
        assert isinstance(status, JobStatus), f"no status published for job {name!r}"
        return status

    def resource_status(self, kind: Kind, name: str) -> ResourceStatus:
        status = self.statuses.get((kind, name))
        assert isinstance(status, ResourceStatus), f"no status published for {kind.value}/{name}"
        return status

    def acks_for(self, node: str) -> list[UpdateAck]:
        return [a for a in self.acks if a.node == node]


def make_transfer(
    arrays: Sequence[npt.NDArray[Any]],
    *,
    kind: WeightsKind,
    job: str,
    uid: str,
    round_: int,
    sender: str,
    num_samples: int,
    names: Sequence[str] | None = None,
    chunk_size: int = 64 * 1024,
    transfer: str | None = None,
    manifest_sender: str | None = None,
    final: bool = False,
) -> tuple[TransferManifest, bytes]:
    """A weights blob and the manifest of its chunked transfer, as an edge (or, for kind global with
    `final`, the aggregator) would send them."""
    origin = TransferOrigin(kind, job, uid, round_, sender, num_samples, final)
    manifest, blob = weights_transfer(arrays, origin, chunk_size=chunk_size, transfer=transfer, names=names)
    if manifest_sender is not None:  # a manifest that lies about its sender
        manifest = manifest.model_copy(update={"sender": manifest_sender})
    return manifest, blob


def chunks_of(manifest: TransferManifest, blob: bytes) -> list[bytes]:
    """The chunks of a transfer, as its manifest cuts them."""
    size = manifest.chunk_size
    return [blob[i * size : (i + 1) * size] for i in range(manifest.chunks)]
