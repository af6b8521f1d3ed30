"""kubectl-style tables, ages, cells and result lines, as pure functions of decoded views and the time.

Tables look like kubectl's: upper-case headers, columns separated by at least three spaces, the
last column not padded, ages in kubectl's short human form (``45s``, ``3m10s``, ``2h``, ``4d``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from flctl.printers._views import JobView, NodeView, ResourceView
from schemas import Dataset, JobStatus, Model, WorkerState

GAP = "   "
NONE = "<none>"
UNKNOWN = "<unknown>"
UNHEALTHY = (WorkerState.FAILED, WorkerState.OFFLINE)

# -- primitives ------------------------------------------------------------------------------------


def _two_units(big: int, big_unit: str, small: int, small_unit: str) -> str:
    """`3m10s`, or `3m` when the smaller unit is zero (kubectl drops a zero remainder)."""
    return f"{big}{big_unit}{small}{small_unit}" if small else f"{big}{big_unit}"


def human_duration(delta: timedelta) -> str:  # noqa: PLR0911 - one return per kubectl age band
    """kubectl's age format (apimachinery ``duration.HumanDuration``): 45s, 3m10s, 12m, 2h5m, 30h, 4d, 2y."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return _two_units(minutes, "m", seconds % 60, "s")
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _two_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _two_units(hours // 24, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return _two_units(days // 365, "y", days % 365, "d")
    return f"{hours // 24 // 365}y"


def age(since: datetime | None, now: datetime) -> str:
    """Age of a timestamp, or ``<unknown>`` when there is none."""
    return UNKNOWN if since is None else human_duration(now - since)


def timestamp(value: datetime | None) -> str:
    """RFC 3339 UTC, as kubectl describe prints times; ``<none>`` when unset."""
    if value is None:
        return NONE
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def cell(value: object) -> str:
    """One table cell: a single line, ``<none>`` when empty."""
    text = " ".join(str(value).split()) if value is not None else ""
    return text or NONE


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns, three spaces apart, last column unpadded; one line per row, no final newline."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row!r}")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append(indent + GAP.join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


# -- job columns -----------------------------------------------------------------------------------


def round_column(status: JobStatus | None) -> str:
    """``2/3``: the current round of the exit round (``2/?`` before the exit round is known)."""
    if status is None:
        return "-"
    total = "?" if status.exit_round is None else str(status.exit_round)
    return f"{status.current_round}/{total}"


def workers_column(status: JobStatus | None, participants: int | None) -> str:
    """``2/2``: training workers that are neither Failed nor Offline, out of the job's participants."""
    workers = [w for w in status.workers if w.role == "training"] if status is not None else []
    healthy = sum(1 for w in workers if w.state not in UNHEALTHY)
    total = max(participants or 0, len(workers))
    return f"{healthy}/{total}" if total else "-"


def worker_states(status: JobStatus | None) -> str:
    """``edge1=Training,edge2=Waiting``: every worker's state, aggregator included."""
    if status is None or not status.workers:
        return NONE
    return ",".join(f"{w.node}={w.state.value}" for w in status.workers)


JOB_HEADERS = ("NAME", "PHASE", "ROUND", "WORKERS", "AGE")
JOB_WIDE_HEADERS = (*JOB_HEADERS, "AGGREGATOR", "STATE", "MESSAGE")


def job_row(view: JobView, now: datetime, *, wide: bool = False) -> list[str]:
    row = [
        view.name,
        view.phase.value,
        round_column(view.status),
        workers_column(view.status, view.participants),
        age(view.started, now),
    ]
    if wide:
        aggregator = view.status.aggregation_node if view.status is not None else None
        if aggregator is None and view.job is not None:
            aggregator = view.job.spec.aggregation_worker.effective_node()
        row += [cell(aggregator), worker_states(view.status), cell(view.message)]
    return row


def jobs_table(views: Sequence[JobView], now: datetime, *, wide: bool = False) -> str:
    headers = JOB_WIDE_HEADERS if wide else JOB_HEADERS
    return table(headers, [job_row(v, now, wide=wide) for v in views])


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


def datasets_table(views: Sequence[ResourceView], now: datetime, *, wide: bool = False) -> str:
    headers = ["NAME", "NODE", "URL", "FORMAT", "VALID", "AGE"] + (["MESSAGE"] if wide else [])
    return table(headers, [dataset_row(v, now, wide=wide) for v in views])


def models_table(views: Sequence[ResourceView], now: datetime, *, wide: bool = False) -> str:
    headers = ["NAME", "URL", "FORMAT", "VALID"] + (["AGE", "MESSAGE"] if wide else [])
    return table(headers, [model_row(v, now, wide=wide) for v in views])


def node_row(view: NodeView, now: datetime, *, wide: bool = False) -> list[str]:
    if view.status is None:
        row = [view.name, UNKNOWN, UNKNOWN, UNKNOWN]
        return [*row, cell(f"unreadable status: {view.error}")] if wide else row
    row = [view.name, view.status.role, view.status.state.value, age(view.status.since, now)]
    return [*row, cell(view.status.version)] if wide else row


def nodes_table(views: Sequence[NodeView], now: datetime, *, wide: bool = False) -> str:
    headers = ["NAME", "ROLE", "STATE", "SINCE"] + (["VERSION"] if wide else [])
    return table(headers, [node_row(v, now, wide=wide) for v in views])


# -- kubectl-style lines ---------------------------------------------------------------------------


def action_line(qualified: str, name: str, action: str) -> str:
    """`dataset.sedna.io/edge1-dataset created` (create) ..."""
    return f"{qualified}/{name} {action}"


def deleted_line(qualified: str, name: str) -> str:
    """`federatedlearningjob.sedna.io "x" deleted`, kubectl delete's wording."""
    return f'{qualified} "{name}" deleted'
