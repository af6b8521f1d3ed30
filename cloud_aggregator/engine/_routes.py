"""The messages that only concern a job already running: routed to its `Job` by name (and run uid).

A base of `Controller`, kept apart because it decides nothing: the transfers of a job that is not (or no
longer) running here are dropped, a script's frames and exit count only for the run that started it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from cloud_aggregator.engine._job import Job
from cloud_aggregator.engine._stages import Stage
from schemas import Channel, ParsedTopic, TransferManifest, WorkerFrame

# The edges' secure aggregation steps, and the state (``secagg/state``: this aggregator's own, coming back).
_SECAGG_STEPS = {
    Channel.SECAGG_KEYS: "keys",
    Channel.SECAGG_SHARES: "shares",
    Channel.SECAGG_UNMASK: "unmask",
    Channel.SECAGG_STATE: "state",
}

__all__ = ["JobRoutes"]


class JobRoutes(ABC):
    """Routing by job name; `job(name)` is the controller's registry of engines."""

    @abstractmethod
    def job(self, name: str) -> Job | None:
        """The running (or finished) engine of job `name`, if it started in this process."""

    def _running(self, job: str) -> Job | None:
        engine = self.job(job)
        return engine if engine is not None and not engine.finished else None

    def on_update_manifest(self, topic: ParsedTopic, manifest: TransferManifest, now_s: float) -> None:
        """An update (or init) manifest; a finished job still answers for what it stored."""
        engine = self.job(topic.job)
        if engine is None or topic.node is None or topic.round is None:
            return
        engine.on_update_manifest(topic.node, topic.round, manifest, now_s)

    def on_malformed_manifest(self, topic: ParsedTopic, reason: str) -> None:
        """An update manifest that does not validate: the running job refuses it with a Warning event."""
        engine = self._running(topic.job)
        if engine is None or topic.node is None or topic.round is None or topic.transfer is None:
            return
        engine.on_malformed_manifest(topic.node, topic.round, topic.transfer, reason)

    def on_update_chunk(self, topic: ParsedTopic, data: bytes, now_s: float, *, digest: str | None = None) -> None:
        """One chunk of an update transfer, for a running job of this node; `digest`: its SHA-256 (hex) if the
        caller hashed it already (then it is not hashed again)."""
        engine = self._running(topic.job)
        if engine is None or topic.node is None or topic.round is None or topic.transfer is None:
            return
        if topic.chunk is None:
            return
        engine.on_update_chunk(topic.node, topic.round, topic.transfer, topic.chunk, data, now_s=now_s, digest=digest)

    def on_secagg(self, topic: ParsedTopic, raw_topic: str, payload: bytes, now_s: float) -> None:
        """An edge's key advert, share bundle or unmask answer, for a running job of this node; a state (this
        aggregator's own publication coming back) matters only when it is a closed round's leftover."""
        step = _SECAGG_STEPS.get(topic.channel)
        engine = self._running(topic.job) if step is not None else None
        if engine is None or step is None or topic.round is None or (topic.node is None and step != "state"):
            return
        engine.on_secagg(step, topic.node or "", topic.round, raw_topic, payload, now_s=now_s)

    def on_script_frame(self, job: str, uid: str, frame: WorkerFrame, now_s: float) -> None:
        engine = self.job(job)
        if engine is not None and engine.facts.uid == uid:
            engine.on_script_frame(frame, now_s)

    def on_script_exit(self, job: str, uid: str, code: int | None, tail: str, now_s: float) -> None:
        engine = self.job(job)
        if engine is not None and engine.facts.uid == uid:
            engine.on_script_exit(code, tail, now_s)

    def stage(self, job: str) -> Stage | None:
        engine = self.job(job)
        return engine.stage if engine else None
