"""Test doubles for the edge's job engine: in-memory ports, a scripted worker, global model transfers.

    ports, worker = RecordingPorts(), ScriptedWorker()
    job = EdgeJob(plan, node="edge1", root=NodeRoot(root), ports=ports, launcher=lambda spec, run: worker,
                  pending_rounds=lambda: set(ports.outbox), delivered_round=lambda: ports.delivered)
    job.on_global(*global_transfer([weights], job="j", uid="u", round_=0))
    assert worker.types() == [("train", 1)]

Nothing here touches a broker or a process; `global_transfer` builds what the aggregator would publish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from edge_trainer.engine import UploadRequest
from schemas import TransferManifest, TransferOrigin, WorkerFrame, WorkerState, WorkerStatus, weights_transfer

__all__ = ["RecordingPorts", "ScriptedWorker", "global_transfer"]


@dataclass
class RecordingPorts:
    """`engine.JobPorts` in memory: keeps every status and upload; `outbox` and `delivered` stand in for
    the node's outbox (rounds still pending) and its delivery record (the newest confirmed round)."""

    statuses: list[WorkerStatus] = field(default_factory=list)
    uploads: list[UploadRequest] = field(default_factory=list)
    outbox: set[int] = field(default_factory=set)
    delivered: int = -1
    secagg: list[tuple[str, int, bytes]] = field(default_factory=list)  # (step, round, payload) published

    def publish_status(self, status: WorkerStatus) -> None:
        self.statuses.append(status)

    def upload(self, request: UploadRequest) -> None:
        self.uploads.append(request)

    def publish_secagg(self, step: str, job: str, round_: int, payload: bytes) -> None:
        self.secagg.append((step, round_, payload))

    @property
    def last(self) -> WorkerStatus:
        return self.statuses[-1]

    def state(self) -> WorkerState:
        """The newest published state (a call, so type checkers do not narrow it between events)."""
        return self.statuses[-1].state


@dataclass
class ScriptedWorker:
    """`engine.WorkerHandle` in memory: records the frames the job sends; `tail` is its log tail."""

    sent: list[tuple[WorkerFrame, bytes | None]] = field(default_factory=list)
    stopped: bool = False
    tail: str = "Traceback (most recent call last):\nValueError: boom"

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None:
        self.sent.append((frame, body))

    def stop(self, grace: float = 10.0) -> None:
        self.stopped = True

    def wait(self, timeout: float | None) -> bool:
        return True

    def log_tail(self, lines: int = 20, max_chars: int = 2000) -> str:
        return self.tail

    def types(self) -> list[tuple[str, int]]:
        """(type, round) of every frame sent, in order."""
        return [(f.type, f.round) for f, _ in self.sent]


def global_transfer(
    arrays: Sequence[npt.NDArray[Any]],
    *,
    job: str,
    uid: str,
    round_: int,
    final: bool = False,
    num_samples: int = 16,
    names: Sequence[str] | None = None,
    sender: str = "cloud0",
    chunk_size: int = 64 * 1024,
    transfer: str | None = None,
) -> tuple[TransferManifest, bytes]:
    """The global model of `round_` as the aggregator publishes it (default transfer id: round + 1, in hex)."""
    origin = TransferOrigin("global", job, uid, round_, sender, num_samples, final)
    transfer = transfer or f"{round_ + 1:016x}"
    return weights_transfer(arrays, origin, chunk_size=chunk_size, transfer=transfer, names=names)
