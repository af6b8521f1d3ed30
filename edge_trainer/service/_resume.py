"""Whether a restarted edge service has finished a job run already (so it does not run it again)."""

from __future__ import annotations

import json

from structlog.typing import FilteringBoundLogger

from edge_trainer._model_io import METADATA_FILE
from schemas import JobPlan, NodeRoot, WorkerState, WorkerStatus

__all__ = ["completed_before"]


def completed_before(
    status: WorkerStatus | None, plan: JobPlan, root: NodeRoot, log: FilteringBoundLogger
) -> WorkerStatus | None:
    """`status` (this node's retained worker status of `plan.job`) if it is a Completed one of this run and
    the model it names is on disk with that digest; None: run the job."""
    if status is None or status.uid != plan.uid or status.state is not WorkerState.COMPLETED:
        return None
    if not status.model_path or not status.model_digest:
        return None
    try:
        meta_path = root.resolve(status.model_path, "model path").parent / METADATA_FILE
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.info("completed before, but the saved model is not readable: running again", error=str(exc))
        return None
    if not isinstance(meta, dict) or meta.get("digest") != status.model_digest or meta.get("job") != plan.job:
        log.info("completed before, but the saved model differs: running again", job=plan.job)
        return None
    return status
