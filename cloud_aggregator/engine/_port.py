"""What the controller and the job engine need from the outside world, as one small interface.

The controller and the job engine never touch MQTT, processes or files: they call a `Port`. The service
implements it over a broker session, the worker channel and the node root (`MqttPort`); unit tests
implement it in memory (`cloud_aggregator.testing.MemoryPort`) and look at what was published.

Every method may raise `AggregatorError` (the service maps broker and OS errors to it); the engine
turns such an error into a failed job or a Warning event, never into a crash of the service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from cloud_aggregator.engine._checkpoint import Checkpoint, SpooledUpdate
from cloud_aggregator.engine._kept import KeptState
from cloud_aggregator.engine._spill import SpillFile
from schemas import (
    EffectiveWorker,
    JobEvent,
    JobPlan,
    JobStatus,
    Kind,
    ModelRef,
    ResourceStatus,
    RoundRecord,
    SecAggState,
    ShareBundle,
    UpdateAck,
)

__all__ = ["FinalModel", "Port", "ScriptRequest", "ScriptSignal"]


@dataclass(frozen=True)
class ScriptRequest:
    """Everything needed to start one job's aggregation script (Sedna's aggregation worker)."""

    job: str
    uid: str
    namespace: str
    worker: EffectiveWorker
    model: ModelRef
    pretrained_model: ModelRef | None
    participants_count: int


ScriptSignal = Literal["finish", "stop"]


@dataclass(frozen=True)
class FinalModel:
    """A job's final global model, to be written under the url of its Model (`model`)."""

    job: str
    model: ModelRef
    arrays: Sequence[npt.NDArray[np.generic]]
    names: Sequence[str]  # one tensor name per array, in layout order
    meta: Mapping[str, Any]  # what the JSON beside the weights says (round, digest, tensors, ...)


class Port(Protocol):
    """The side effects of the controller and the round engine."""

    def publish_status(self, kind: Kind, name: str, status: JobStatus | ResourceStatus | None) -> None:
        """Publish a resource's status, retained; None clears it. The kept copy (`kept`) follows."""

    def status_changed(self, name: str, status: JobStatus) -> None:
        """A job status change that `status_interval` holds back from the status topic: the event stream
        (`StreamingPort`) follows every change, the retained status at most one per interval. Nothing
        else needs it: the service's port does nothing."""

    def publish_event(self, event: JobEvent) -> None:
        """Publish one line of the job's event stream (QoS 1, not retained; `StreamingPort` derives them)."""

    def publish_round_record(self, job: str, round_: int, record: RoundRecord | None) -> None:
        """Publish a closed round's full record on its own topic, retained; None clears it."""

    def publish_plan(self, job: str, plan: JobPlan | None) -> None:
        """Publish a job's plan, retained; None clears it (the edges stop the job). The kept copy follows."""

    def restore_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        """Publish `payload` back on the spec topic, retained (a rejected change leaves the running spec)."""

    def publish_global(self, job: str, round_: int, blob: bytes, *, uid: str, num_samples: int, final: bool) -> None:
        """Publish the global model of `round_` as a retained chunked transfer (kind global)."""

    def clear_globals(self, job: str, keep: int | None = None) -> None:
        """Clear every retained global model of `job` this node knows of, except round `keep`."""

    def send_ack(self, ack: UpdateAck) -> None:
        """Tell an edge what became of its update (not retained)."""

    def publish_secagg_state(self, job: str, round_: int, state: SecAggState | None) -> None:
        """Publish a secure aggregation round's state (``rounds/<r>/secagg/state``), retained; None clears it."""

    def restore_secagg_bundle(self, job: str, bundle: ShareBundle) -> None:
        """Publish an edge's share bundle again on its own topic (``rounds/<r>/secagg/shares/<node>``, retained):
        a broker that lost it; the edges read each other's bundles from the broker."""

    def clear_secagg_step(self, job: str, round_: int, step: str, node: str) -> None:
        """Clear an edge's retained secure aggregation message (``rounds/<r>/secagg/<step>/<node>``; step:
        keys, shares or unmask) with an empty retained payload."""

    def start_script(self, request: ScriptRequest) -> None:
        """Start the aggregation script; its frames and exit come back as controller calls."""

    def signal_script(self, job: str, uid: str, signal: ScriptSignal) -> None:
        """Send `finish` or `stop` to the job's aggregation script and reap it (kill it if it hangs)."""

    def write_model(self, final: FinalModel) -> str:
        """Write the final weights under the Model url (`<url>/<model>.npz` plus a JSON); return the path."""
        ...

    # -- the kept copy of the retained state (the service: ROOT/state/_kept/, `KeptStore`) ------------

    def keep_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        """Keep an accepted spec durably, byte for byte (and drop a tombstone of the same bytes)."""

    def forget_spec(self, kind: Kind, name: str, *, deleted: bool) -> None:
        """Drop a kept spec, with its kept status and plan; `deleted` (an explicit delete) leaves a tombstone."""

    def kept(self) -> KeptState:
        """The kept copy as it is now (read it; change it only through the methods above)."""
        ...

    # -- durable state (the service: ROOT/state/<job>/, `StateStore`) ------------------------------

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        """Store an accepted update durably (spool/<round>/<node>-<transfer>.blob) before it is folded."""

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        """The updates stored for `round_` (oldest first)."""
        ...

    def open_spill(self, job: str) -> SpillFile:
        """A new, empty file for an in-flight transfer that does not fit the intake's memory budget
        (the service: under ROOT/state/<job>/inflight/, deleted when the transfer completes or is dropped)."""
        ...

    def read_spooled_update(self, job: str, round_: int, node: str, transfer: str) -> memoryview:
        """One stored update's blob, read-only; the service memory-maps the file, so the bytes are paged
        in as they are read and are the OS's to reclaim (a robust rule's close reads them tensor by tensor)."""
        ...

    def drop_spool(self, job: str, upto: int) -> None:
        """Delete the spooled updates of every round <= `upto` (and their rounds' secure aggregation records)."""

    def save_secagg(self, job: str, round_: int, data: bytes) -> None:
        """Store a round's secure aggregation record durably (write-atomic, beside the round's spool)."""

    def load_secagg(self, job: str, round_: int) -> bytes | None:
        """The secure aggregation record saved for `round_`, or None."""
        ...

    def save_checkpoint(
        self, checkpoint: Checkpoint, global_blob: bytes, server_state: bytes | None = None, *, keep_globals: int = 1
    ) -> None:
        """Write global-<r>.blob and the strategy's server state of round r (if any), then checkpoint.json
        (which names them), each atomically: a reader sees the old checkpoint or the new one, whole.
        The global blobs of the `keep_globals` newest rounds stay (the asynchronous mode rebases onto them)."""

    def load_global(self, job: str, round_: int) -> bytes | None:
        """The global blob of `round_` kept with the checkpoints, or None."""
        ...

    def load_server_state(self, job: str, round_: int) -> bytes | None:
        """The server state saved with the checkpoint of `round_`, or None."""
        ...

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        """The job's last checkpoint and its global blob, or None."""
        ...

    def clear_state(self, job: str) -> None:
        """Delete the job's state folder (a new run, or the job was deleted)."""
