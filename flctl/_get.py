"""`flctl get` (with `--watch`) and `flctl describe`: read the retained topics, print them.

Reading is: subscribe to the spec and status topics of the type (or of the named resources only),
wait for the broker's retained messages with a barrier, then decode and print (`flctl.printers`).
A watch keeps the session open and prints again whenever the output changes. A watch of named jobs
ends when all of them have finished: exit 0 when all Succeeded, 1 when one Failed (its message on
stderr), 4 when --watch-timeout runs out first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from flctl._client import BrokerClient
from flctl._context import Context
from flctl._errors import FlctlError, JobFailedError, NotFoundError, WaitTimeoutError, resource_ref
from flctl._kinds import DATASETS, JOBS, MODELS, NODES, ResourceType, resolve
from flctl.printers import (
    JobView,
    NodeView,
    Retained,
    View,
    collect_jobs,
    collect_models,
    collect_nodes,
    collect_resources,
    describe_job,
    describe_node,
    describe_resource,
    render_views,
)
from schemas import Kind, Phase, Topics

# Renders for change detection use a fixed "now": every age becomes the same placeholder.
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_WATCH_SLICE = 1.0


# -- reading ---------------------------------------------------------------------------------------


def subscriptions(topics: Topics, rtype: ResourceType, names: Sequence[str], *, related: bool = False) -> list[str]:
    """The subscriptions that hold the type's (or the named resources') spec and status."""
    if rtype is NODES:
        return [topics.node_status(n) for n in names] if names else [topics.all_node_statuses()]
    assert rtype.kind is not None  # every other type has a spec topic
    # A Model's versions are reported by the nodes that hold them, on their node statuses.
    holders = [topics.all_node_statuses()] if rtype is MODELS else []
    if names and not related:
        return [t for n in names for t in (topics.spec(rtype.kind, n), topics.status(rtype.kind, n))] + holders
    return [topics.all_specs(), topics.all_statuses(), *holders]


def _collect(topics: Topics, rtype: ResourceType, retained: Mapping[str, Retained]) -> list[View]:
    if rtype is JOBS:
        return list(collect_jobs(topics, retained))
    if rtype is NODES:
        return list(collect_nodes(topics, retained))
    if rtype is MODELS:
        return list(collect_models(topics, retained))
    assert rtype.kind is not None
    return list(collect_resources(topics, rtype.kind, retained))


def _select(views: list[View], names: Sequence[str]) -> tuple[list[View], list[str]]:
    """The named views in the order asked (all when no names), and the names not found."""
    if not names:
        return views, []
    by_name = {v.name: v for v in views}
    found = [by_name[n] for n in dict.fromkeys(names) if n in by_name]
    return found, [n for n in dict.fromkeys(names) if n not in by_name]


# -- get -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GetRequest:
    type_word: str
    names: tuple[str, ...] = ()
    output: str | None = None
    watch: bool = False
    watch_timeout: float | None = None


def get(ctx: Context, request: GetRequest) -> int:
    rtype = resolve(request.type_word)
    names = request.names
    with ctx.client() as client:
        views = _read(client, rtype, names)
        found, missing = _select(views, names)
        for name in missing:
            ctx.fail(NotFoundError(rtype.plural, name))
        single = len(names) == 1
        if found:
            ctx.say(render_views(rtype, found, request.output, ctx.clock(), single=single))
        elif not names:
            ctx.note("No resources found.")
        if not request.watch or (names and not found):
            return 1 if missing else 0
        if names:  # watch the names that exist; the missing ones were reported
            request = replace(request, names=tuple(v.name for v in found))
        code = _watch(ctx, client, rtype, request, found)
        return code or (1 if missing else 0)


def _read(client: BrokerClient, rtype: ResourceType, names: Sequence[str]) -> list[View]:
    retained = client.snapshot(subscriptions(client.topics, rtype, names))
    return _collect(client.topics, rtype, retained)


def _finished(rtype: ResourceType, views: Sequence[View], names: Sequence[str]) -> bool:
    """A watch of named jobs ends when every one of them has Succeeded or Failed."""
    return bool(names) and rtype is JOBS and all(isinstance(v, JobView) and v.phase.finished for v in views)


def _outcome(ctx: Context, views: Sequence[View]) -> int:
    """0 when every watched job Succeeded; else 1, each Failed job reported with its message, so that
    `flctl get fl NAME -w && next-step` stops at a failed job."""
    failed = [v for v in views if isinstance(v, JobView) and v.phase is Phase.FAILED]
    for view in failed:
        why = view.status.message if view.status is not None and view.status.message else "no message"
        ctx.fail(JobFailedError(f"{resource_ref(JOBS.plural, view.name)} failed: {why}"))
    return 1 if failed else 0


def _watch(ctx: Context, client: BrokerClient, rtype: ResourceType, request: GetRequest, shown: list[View]) -> int:
    names = request.names
    single = len(names) == 1
    last = render_views(rtype, shown, request.output, _NO_TIME, single=single)
    if _finished(rtype, shown, names):
        return _outcome(ctx, shown)
    deadline = None if request.watch_timeout is None else time.monotonic() + request.watch_timeout
    try:
        while True:
            remaining = _WATCH_SLICE if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return _watch_timed_out(rtype, shown, names, request.watch_timeout)
            if not client.changes(min(remaining, _WATCH_SLICE)):
                continue
            views, _ = _select(_collect(client.topics, rtype, client.latest), names)
            gone = [n for n in names if n not in {v.name for v in views}]
            if names and gone:
                raise FlctlError(f"{resource_ref(rtype.plural, gone[0])} was deleted while being watched")
            current = render_views(rtype, views, request.output, _NO_TIME, single=single)
            if current != last:
                last, shown = current, views
                text = render_views(rtype, views, request.output, ctx.clock(), single=single)
                ctx.say("\n" + text if text else "\nNo resources found.")
            if _finished(rtype, views, names):
                return _outcome(ctx, views)
    except KeyboardInterrupt:
        return 0


def _watch_timed_out(rtype: ResourceType, views: Sequence[View], names: Sequence[str], timeout: float | None) -> int:
    if rtype is not JOBS or not names:
        return 0  # watching a list for a while is the normal way to end it
    running = [v for v in views if isinstance(v, JobView) and not v.phase.finished]
    what = ", ".join(f"{resource_ref(rtype.plural, v.name)} (phase {v.phase.value})" for v in running)
    raise WaitTimeoutError(f"timed out after {timeout:g}s waiting for {what} to finish")


# -- describe --------------------------------------------------------------------------------------


def describe(ctx: Context, type_word: str, names: Sequence[str]) -> int:
    rtype = resolve(type_word)
    with ctx.client() as client:
        retained = client.snapshot(subscriptions(client.topics, rtype, names, related=rtype in (DATASETS, MODELS)))
        views = _collect(client.topics, rtype, retained)
        jobs = collect_jobs(client.topics, retained) if rtype in (DATASETS, MODELS) else []
    found, missing = _select(views, names)
    now = ctx.clock()
    blocks = []
    for view in found:
        if isinstance(view, JobView):
            blocks.append(describe_job(view, now))
        elif isinstance(view, NodeView):
            blocks.append(describe_node(view, now))
        else:
            blocks.append(describe_resource(view, now, _used_by(rtype, view.name, jobs)))
    if blocks:
        ctx.say("\n\n".join(blocks))
    elif not names:
        ctx.note("No resources found.")
    for name in missing:
        ctx.fail(NotFoundError(rtype.plural, name))
    return 1 if missing else 0


def _used_by(rtype: ResourceType, name: str, jobs: Sequence[JobView]) -> list[str]:
    """`federatedlearningjob.sedna.io/x` for every job whose spec names this Dataset or Model."""
    users = []
    for view in jobs:
        job = view.job
        if job is None:
            continue
        if rtype.kind is Kind.DATASET:
            refs = {w.dataset.name for w in job.spec.training_workers}
        else:
            refs = {job.spec.aggregation_worker.model.name}
            if job.spec.pretrained_model is not None:
                refs.add(job.spec.pretrained_model.name)
        if name in refs:
            users.append(f"{JOBS.qualified}/{view.name}")
    return users
