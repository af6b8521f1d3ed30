"""`flctl describe`: kubectl-describe-style text for a job, a Dataset or a Model (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from flctl.printers._sites import UNREACHABLE, site_of, site_rows, unreachable
from flctl.printers._tables import NONE, age, cell, round_column, table, timestamp, workers_column
from flctl.printers._views import JobView, NodeView, ResourceView, SpecView
from schemas import API_VERSION, Dataset, EffectiveWorker, FederatedLearningJob, Model, PrivacyStatus

INDENT = "  "


class _Worker(Protocol):
    def effective(self) -> EffectiveWorker: ...


def fields(pairs: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    """`Label:   value` lines with the values of one block aligned, as kubectl describe does."""
    width = max((len(label) for label, _ in pairs), default=0) + 1
    return [f"{indent}{(label + ':').ljust(width)}  {value}".rstrip() for label, value in pairs]


def section(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """`Title:` then an indented table, or `Title:  <none>` when there are no rows."""
    if not rows:
        return [f"{title}:  {NONE}"]
    return [f"{title}:", table(headers, rows, indent=INDENT)]


def _when(value: datetime | None, now: datetime) -> str:
    return NONE if value is None else f"{timestamp(value)} ({age(value, now)} ago)"


def _metadata(spec: SpecView, now: datetime) -> list[tuple[str, str]]:
    namespace = spec.resource.metadata.namespace if spec.resource is not None else "default"
    pairs = [
        ("Name", spec.name),
        ("Namespace", namespace),
        ("Kind", spec.kind.kind),
        ("API Version", API_VERSION),
    ]
    if spec.resource is not None and spec.resource.metadata.labels:
        pairs.append(("Labels", ", ".join(f"{k}={v}" for k, v in spec.resource.metadata.labels.items())))
    created = _when(spec.created, now)
    if spec.created_by:
        created += f" by {spec.created_by}"
    pairs.append(("Created", created))
    return pairs


def _parameters(params: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or NONE


def _script(worker: _Worker) -> str:
    eff = worker.effective()
    framework = " ".join(p for p in (eff.framework_type, eff.framework_version) if p)
    return f"{eff.script_dir.rstrip('/')}/{eff.script_boot_file} ({framework})"


def _job_spec(job: FederatedLearningJob) -> list[str]:
    agg = job.spec.aggregation_worker
    lines = ["Spec:"]
    top = [
        ("Model", agg.model.name),
        ("Pretrained Model", job.spec.pretrained_model.name if job.spec.pretrained_model else NONE),
    ]
    lines += fields(top, INDENT)
    lines.append(f"{INDENT}Aggregation Worker:")
    lines += fields(
        [
            ("Node", cell(agg.effective_node())),
            ("Script", _script(agg)),
            ("Parameters", _parameters(agg.effective().parameters)),
        ],
        INDENT * 2,
    )
    rows = [
        [cell(w.effective_node()), w.dataset.name, _script(w), _parameters(w.effective().parameters)]
        for w in job.spec.training_workers
    ]
    lines.append(f"{INDENT}Training Workers:")
    lines.append(table(["NODE", "DATASET", "SCRIPT", "PARAMETERS"], rows, indent=INDENT * 2))
    return lines


def _privacy(privacy: PrivacyStatus) -> str:
    """`central DP: epsilon 2.1 of 3 spent at delta 1e-05 after 4 rounds (clip 1, noise multiplier 1.1)`."""
    budget = f" of {privacy.target_epsilon:g}" if privacy.target_epsilon is not None else ""
    spent = "; budget spent" if privacy.budget_spent else ""
    return (
        f"{privacy.mode} DP: epsilon {privacy.epsilon:.4g}{budget} spent at delta {privacy.delta:g} after "
        f"{privacy.rounds} rounds (clip {privacy.clip_norm:g}, noise multiplier {privacy.noise_multiplier:g}){spent}"
    )


def describe_job(view: JobView, now: datetime) -> str:
    """Everything known about one job: metadata, phase, round, conditions, workers, rounds, spec, events."""
    status = view.status
    lines = fields(
        [
            *_metadata(view.spec, now),
            ("Phase", view.phase.value),
            ("Message", cell(view.message)),
            ("Start Time", _when(status.start_time if status else None, now)),
            ("Completion Time", _when(status.completion_time if status else None, now)),
            ("Round", round_column(status)),
            ("Workers Healthy", workers_column(status, view.participants)),
            ("Aggregation Node", cell(status.aggregation_node if status else None)),
            *([("Model Path", status.model_path)] if status and status.model_path else []),
            *([("Privacy", _privacy(status.privacy))] if status and status.privacy else []),
        ]
    )
    conditions = [
        [c.type.value, c.status, cell(c.reason), cell(c.message), timestamp(c.last_probe_time)]
        for c in (status.conditions if status else [])
    ]
    lines += section("Conditions", ["TYPE", "STATUS", "REASON", "MESSAGE", "LAST-TRANSITION"], conditions)
    # Edges behind site brokers: a SITE column, and the state of those behind an unreachable site marked so
    # (the last state they sent; `flctl.printers._sites`).
    sites, away = site_of(status), unreachable(status)
    workers = [
        [
            w.node,
            w.role,
            w.state.value + (f" {UNREACHABLE}" if w.node in away else ""),
            str(w.round),
            "-" if w.num_samples is None else str(w.num_samples),
            *([sites.get(w.node, NONE)] if sites else []),
            cell(w.message),
        ]
        for w in (status.workers if status else [])
    ]
    site_header = ["SITE"] if sites else []
    lines += section("Workers", ["NODE", "ROLE", "STATE", "ROUND", "SAMPLES", *site_header, "MESSAGE"], workers)
    if status is not None and status.sites:
        lines += section("Sites", ["NAME", "REACHABLE", "SINCE", "NODES"], site_rows(status, now))
    records = status.rounds if status else []
    with_missing = any(r.missing for r in records)
    with_epsilon = any(r.epsilon is not None for r in records)
    rounds = [
        [str(r.round), ",".join(r.participants) or NONE, str(r.total_samples), age(r.closed_at, now)]
        + ([",".join(r.missing) or NONE] if with_missing else [])
        + ([NONE if r.epsilon is None else f"{r.epsilon:.4g}"] if with_epsilon else [])
        for r in records
    ]
    headers = (
        ["ROUND", "PARTICIPANTS", "SAMPLES", "CLOSED"]
        + (["MISSING"] if with_missing else [])
        + (["EPSILON"] if with_epsilon else [])
    )
    lines += section("Rounds", headers, rounds)
    if records and records[0].round > 1:
        # The status keeps the newest summaries only; every round's full record is retained on its own topic.
        lines.append(f"{INDENT}(the newest {len(records)}; every round: flctl top fl {view.name})")
    if view.job is not None:
        lines += _job_spec(view.job)
    else:
        lines.append(f"Spec:  invalid: {cell(view.spec.error)}")
    events = [
        [e.type, e.reason, age(e.time, now), e.node or "controller", cell(e.message)]
        for e in (status.events if status else [])
    ]
    lines += section("Events", ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], events)
    return "\n".join(lines)


def describe_resource(view: ResourceView, now: datetime, used_by: Sequence[str] = ()) -> str:
    """A Dataset or a Model: metadata, spec, the controller's verdict, and the jobs that name it."""
    lines = fields(_metadata(view.spec, now))
    res = view.spec.resource
    spec: list[tuple[str, str]] = []
    credential: str | None = None
    if isinstance(res, Dataset):
        spec = [("URL", res.spec.url), ("Format", res.spec.format), ("Node Name", res.spec.node_name)]
        credential = res.spec.credential_name
    elif isinstance(res, Model):
        spec = [("URL", res.spec.url), ("Format", res.spec.format)]
        if res.spec.device_soc_versions:
            spec.append(("Device SoC Versions", ", ".join(res.spec.device_soc_versions)))
        credential = res.spec.credential_name
    if spec and credential:
        spec.append(("Credential Name", credential))
    if spec:
        lines += ["Spec:", *fields(spec, INDENT)]
    else:
        lines.append(f"Spec:  invalid: {cell(view.spec.error)}")
    lines += [
        "Status:",
        *fields(
            [
                ("Valid", view.valid),
                ("Message", cell(view.message)),
                ("Observed", _when(view.status.observed_at if view.status else None, now)),
            ],
            INDENT,
        ),
    ]
    lines += fields([("Used By", ", ".join(used_by) or NONE)])
    return "\n".join(lines)


def describe_node(view: NodeView, now: datetime) -> str:
    """A node service's presence: role, state, since when, version."""
    if view.status is None:
        return "\n".join(fields([("Name", view.name), ("Status", f"unreadable: {cell(view.error)}")]))
    status = view.status
    return "\n".join(
        fields(
            [
                ("Name", view.name),
                ("Role", status.role),
                ("State", status.state.value),
                ("Since", _when(status.since, now)),
                ("Version", cell(status.version)),
            ]
        )
    )
