"""What an edge job needs from the outside world, and the messages it exchanges with it.

`EdgeJob` (the per-job state machine) never touches MQTT, files or processes: it publishes its worker
status and asks for uploads through `JobPorts`, drives its script through a `WorkerHandle` that a
`Launcher` starts, and hears back through `UploadDone` and the script's frames. The service implements
these over its broker session, its outbox and `runtime.ScriptSupervisor`; `edge_trainer.testing` has
in-memory ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from edge_trainer.engine._launch import LaunchSpec
from schemas import Codec, TransferOrigin, WeightsKind, WorkerFrame, WorkerStatus

__all__ = ["Compression", "JobPorts", "Launcher", "UploadDone", "UploadRequest", "WorkerHandle"]


# An upload request is the transfer's origin plus what to send: it is passed as the origin itself
# (`BlobSender.prepare(blob, request)`), and `request.kind`, `request.round`, ... are the origin's fields.
@dataclass(frozen=True)
class Compression:
    """Encode an update before it is stored: `codec` over its delta from `base`, the global model the
    script trained it from (`schemas.compress_update`; top-k keeps `fraction` of each tensor)."""

    codec: Codec
    fraction: float
    base: list[npt.NDArray[Any]]


@dataclass(frozen=True, kw_only=True)
class UploadRequest(TransferOrigin):
    """Upload `blob` (this node's `kind` weights of `round`) as a chunked transfer of `chunk_size` bytes;
    `compression`: encode it first (None: as the script wrote it)."""

    run_id: str
    blob: bytes
    chunk_size: int
    compression: Compression | None = None


@dataclass(frozen=True)
class UploadDone:
    """An upload finished; `error` says why it failed (None: the aggregator's broker has it)."""

    job: str
    run_id: str
    kind: WeightsKind
    round: int
    error: str | None = None
    transfer: str | None = None  # the outbox entry's transfer id (None: nothing was stored)
    # True: stored in the outbox, but the broker has not acknowledged all of it yet (link down); the
    # outbox sends it again, so this is no failure.
    pending: bool = False


class JobPorts(Protocol):
    """What a job needs from the outside world. Both calls return at once."""

    def publish_status(self, status: WorkerStatus) -> None: ...

    def upload(self, request: UploadRequest) -> None:
        """Store the update in the outbox and start publishing it; its `UploadDone` comes back through
        `EdgeJob.on_uploaded`, the aggregator's verdict through `on_acked` / `on_refused`."""
        ...

    def publish_secagg(self, step: str, job: str, round_: int, payload: bytes) -> None:
        """Publish this node's secure aggregation message of `step` (``keys``, ``shares``, ``unmask``) of
        `job`'s round `round_`: retained, QoS 1, on `Topics.secagg_step`."""
        ...


class WorkerHandle(Protocol):
    """The running script, as `runtime.ScriptProcess` provides it."""

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None: ...

    def stop(self, grace: float = 10.0) -> None: ...

    def wait(self, timeout: float | None) -> bool: ...

    def log_tail(self, lines: int = 20, max_chars: int = 2000) -> str: ...


Launcher = Callable[[LaunchSpec, str], WorkerHandle]
