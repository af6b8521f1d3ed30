"""kubectl-style tables, ages, cells and result lines, as pure functions of decoded views and the time.

Tables look like kubectl's: upper-case headers, columns separated by at least three spaces, the
last column not padded, ages in kubectl's short human form (``45s``, ``3m10s``, ``2h``, ``4d``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from flctl.printers._rounds import eval_accuracy_column, round_time_column
from flctl.printers._sites import UNREACHABLE, unreachable
from flctl.printers._text import GAP, NONE, UNKNOWN, age, cell, human_duration, table, timestamp
from flctl.printers._views import JobView, NodeView, ResourceView
from schemas import Dataset, JobStatus, Model, WorkerState

__all__ = [
    "GAP",
    "NONE",
    "UNKNOWN",
    "action_line",
    "age",
    "cell",
    "dataset_headers",
    "dataset_row",
    "datasets_table",
    "deleted_line",
    "human_duration",
    "job_headers",
    "job_row",
    "jobs_table",
    "model_headers",
    "model_row",
    "models_table",
    "node_headers",
    "node_row",
    "nodes_table",
    "round_column",
    "table",
    "timestamp",
    "worker_states",
    "workers_column",
]

UNHEALTHY = (WorkerState.FAILED, WorkerState.OFFLINE)

# -- job columns -----------------------------------------------------------------------------------


def round_column(status: JobStatus | None) -> str:
    """``2/3``: the round the job is in, of its rounds (``2/?`` before the exit round is known). It is the
    round the status message names: 0 while the initial models come in, then the open round, then the
    final one; a job that failed shows the round it failed in (see `JobStatus.current_round`)."""
    if status is None:
        return "-"
    total = "?" if status.exit_round is None else str(status.exit_round)
    return f"{status.current_round}/{total}"


def workers_column(status: JobStatus | None, participants: int | None) -> str:
    """``2/2``: training workers that are neither Failed nor Offline nor behind an unreachable site, out of the
    job's participants."""
    workers = [w for w in status.workers if w.role == "training"] if status is not None else []
    away = unreachable(status)
    healthy = sum(1 for w in workers if w.state not in UNHEALTHY and w.node not in away)
    total = max(participants or 0, len(workers))
    return f"{healthy}/{total}" if total else "-"


def worker_states(status: JobStatus | None) -> str:
    """``edge1=Training,edge2=Waiting``: every worker's state, aggregator included (``edge1=Training(unreachable)``
    behind a site whose bridge is down: the last state it sent)."""
    if status is None or not status.workers:
        return NONE
    away = unreachable(status)
    return ",".join(f"{w.node}={w.state.value}{UNREACHABLE if w.node in away else ''}" for w in status.workers)


JOB_HEADERS = ("NAME", "PHASE", "ROUND", "WORKERS", "EVAL ACC", "ROUND TIME", "AGE")
JOB_WIDE_HEADERS = (*JOB_HEADERS, "AGGREGATOR", "STATE", "MESSAGE")


def job_row(view: JobView, now: datetime, *, wide: bool = False) -> list[str]:
    row = [
        view.name,
        view.phase.value,
        round_column(view.status),
        workers_column(view.status, view.participants),
        eval_accuracy_column(view.status),
        round_time_column(view.status),
        age(view.started, now),
    ]
    if wide:
        aggregator = view.status.aggregation_node if view.status is not None else None
        if aggregator is None and view.job is not None:
            aggregator = view.job.spec.aggregation_worker.effective_node()
        row += [cell(aggregator), worker_states(view.status), cell(view.message)]
    return row


def job_headers(*, wide: bool = False) -> tuple[str, ...]:
    return JOB_WIDE_HEADERS if wide else JOB_HEADERS


def jobs_table(views: Sequence[JobView], now: datetime, *, wide: bool = False) -> str:
    return table(job_headers(wide=wide), [job_row(v, now, wide=wide) for v in views])


# -- datasets, models, nodes -----------------------------------------------------------------------


def _spec_field(view: ResourceView, *path: str) -> str:
    """A field of the raw document (for specs the controller will reject, still show what was written)."""
    data: Any = view.spec.data
    for key in ("spec", *path):
        if not isinstance(data, dict):
            return NONE
        data = data.get(key)
    return cell(data)


def dataset_row(view: ResourceView, now: datetime, *, wide: bool = False) -> list[str]:
    res = view.spec.resource
    node: str
    url: str
    fmt: str
    if isinstance(res, Dataset):
        node, url, fmt = res.spec.node_name, res.spec.url, res.spec.format
    else:
        node, url, fmt = _spec_field(view, "nodeName"), _spec_field(view, "url"), _spec_field(view, "format")
    row = [view.name, node, url, fmt, view.valid, age(view.spec.created, now)]
    return [*row, cell(view.message)] if wide else row


def model_row(view: ResourceView, now: datetime, *, wide: bool = False) -> list[str]:
    res = view.spec.resource
    url: str
    fmt: str
    if isinstance(res, Model):
        url, fmt = res.spec.url, res.spec.format
    else:
        url, fmt = _spec_field(view, "url"), _spec_field(view, "format")
    row = [view.name, url, fmt, view.valid]
    return [*row, age(view.spec.created, now), cell(view.message)] if wide else row


def dataset_headers(*, wide: bool = False) -> list[str]:
    return ["NAME", "NODE", "URL", "FORMAT", "VALID", "AGE"] + (["MESSAGE"] if wide else [])


def model_headers(*, wide: bool = False) -> list[str]:
    return ["NAME", "URL", "FORMAT", "VALID"] + (["AGE", "MESSAGE"] if wide else [])


def datasets_table(views: Sequence[ResourceView], now: datetime, *, wide: bool = False) -> str:
    return table(dataset_headers(wide=wide), [dataset_row(v, now, wide=wide) for v in views])


def models_table(views: Sequence[ResourceView], now: datetime, *, wide: bool = False) -> str:
    return table(model_headers(wide=wide), [model_row(v, now, wide=wide) for v in views])


def node_row(view: NodeView, now: datetime, *, wide: bool = False) -> list[str]:
    if view.status is None:
        row = [view.name, UNKNOWN, UNKNOWN, UNKNOWN]
        return [*row, cell(f"unreadable status: {view.error}")] if wide else row
    row = [view.name, view.status.role, view.status.state.value, age(view.status.since, now)]
    return [*row, cell(view.status.version)] if wide else row


def node_headers(*, wide: bool = False) -> list[str]:
    return ["NAME", "ROLE", "STATE", "SINCE"] + (["VERSION"] if wide else [])


def nodes_table(views: Sequence[NodeView], now: datetime, *, wide: bool = False) -> str:
    return table(node_headers(wide=wide), [node_row(v, now, wide=wide) for v in views])


# -- kubectl-style lines ---------------------------------------------------------------------------


def action_line(qualified: str, name: str, action: str) -> str:
    """`dataset.sedna.io/edge1-dataset created` (create) ..."""
    return f"{qualified}/{name} {action}"


def deleted_line(qualified: str, name: str) -> str:
    """`federatedlearningjob.sedna.io "x" deleted`, kubectl delete's wording."""
    return f'{qualified} "{name}" deleted'
