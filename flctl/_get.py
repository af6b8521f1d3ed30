"""`flctl get` (with `--watch`) and `flctl describe`: read the retained topics, print them.

Reading is: subscribe to the spec and status topics of the type (or of the named resources only),
wait for the broker's retained messages with a barrier, then decode and print (`flctl.printers`).
A watch keeps the session open and prints, kubectl's way, the table's header once and then one row per
resource that changed (with -o json/yaml/name, its document or name); on a terminal the jobs being
watched also get a live line each (`flctl._progress`). A watch of named jobs ends when all of them have
finished: exit 0 when all Succeeded, 1 when one Failed (its message on stderr), 4 when --watch-timeout
runs out first.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from flctl._client import BrokerClient
from flctl._context import Context
from flctl._errors import FlctlError, JobFailedError, NotFoundError, WaitTimeoutError, resource_ref
from flctl._kinds import DATASETS, JOBS, MODELS, NODES, ResourceType, resolve
from flctl._progress import Progress
from flctl.printers import (
    GAP,
    JobView,
    NodeView,
    Retained,
    View,
    collect_jobs,
    collect_models,
    collect_nodes,
    collect_resources,
    column_widths,
    describe_job,
    describe_node,
    describe_resource,
    document,
    dump,
    render_views,
    row_line,
    table_rows,
)
from schemas import Kind, Phase, Topics

# Renders for change detection use a fixed "now": every age becomes the same placeholder.
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_WATCH_SLICE = 1.0
# A watch keeps the widths of its first rows; these columns start wide enough for what they will show
# later (a job that is Pending now will be Succeeded), so its rows stay aligned.
_WATCH_MIN_WIDTHS = {"EVENT": len("MODIFIED"), "PHASE": len("Succeeded"), "ROUND": len("10/10")}


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
    watch_events: bool = False  # --output-watch-events: each row or document says ADDED, MODIFIED or DELETED


def get(ctx: Context, request: GetRequest) -> int:
    rtype = resolve(request.type_word)
    names = request.names
    with ctx.client() as client:
        views = _read(client, rtype, names)
        found, missing = _select(views, names)
        for name in missing:
            ctx.fail(NotFoundError(rtype.plural, name))
        if not request.watch:
            if found:
                ctx.say(render_views(rtype, found, request.output, ctx.clock(), single=len(names) == 1))
            elif not names:
                ctx.note("No resources found.")
            return 1 if missing else 0
        if names and not found:
            return 1
        if names:  # watch the names that exist; the missing ones were reported
            request = replace(request, names=tuple(v.name for v in found))
        with Progress(ctx.out, ctx.say) as progress:
            printer = _WatchPrinter(ctx, rtype, request, progress)
            code = _watch(ctx, client, rtype, request, found, printer=printer)
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


class _WatchPrinter:
    """What a watch prints, kubectl's way: the table's header once, then one row per resource that changed
    (a table keeps the column widths of its first rows); with -o json/yaml/name, each changed resource's
    document (or name). A resource changed when its row (or document) reads differently, its age aside.
    With --output-watch-events every row or document says ADDED, MODIFIED or DELETED; without it a deleted
    resource is not printed again."""

    def __init__(self, ctx: Context, rtype: ResourceType, request: GetRequest, progress: Progress) -> None:
        self._ctx = ctx
        self._rtype = rtype
        self._request = request
        self._progress = progress
        self._table = request.output in (None, "wide")
        self._widths: list[int] | None = None
        self._last: dict[str, tuple[str, View]] = {}  # name -> (its print with no age, the view)

    def _fixed(self, view: View) -> str:
        """What tells a change: the row at a fixed time (no age), else the whole document (also for -o name,
        which prints the name again whenever the resource changed, as kubectl does)."""
        if self._table:
            _, rows = table_rows(self._rtype, [view], _NO_TIME, wide=self._request.output == "wide")
            return GAP.join(rows[0][1])
        return dump(document(view), "json")

    def _event_cells(self, event: str, cells: list[str]) -> list[str]:
        return [event, *cells] if self._request.watch_events else cells

    def update(self, views: Sequence[View]) -> None:
        """Print what changed since the last call (everything, the first time)."""
        now = self._ctx.clock()
        current = {v.name: v for v in views}
        changed = [v for v in views if self._last.get(v.name, ("", None))[0] != self._fixed(v)]
        gone = [self._last[n][1] for n in self._last if n not in current] if self._request.watch_events else []
        if self._table:
            self._rows(changed, gone, now)
        else:
            for view in changed:
                self._document(view, "MODIFIED" if view.name in self._last else "ADDED")
            for view in gone:
                self._document(view, "DELETED")
        self._last = {v.name: (self._fixed(v), v) for v in views}
        self._progress.show([v for v in views if isinstance(v, JobView) and not v.phase.finished])

    def _rows(self, changed: Sequence[View], gone: Sequence[View], now: datetime) -> None:
        if not changed and not gone:
            return
        wide = self._request.output == "wide"
        headers, rows = table_rows(self._rtype, [*changed, *gone], now, wide=wide)
        events = ["MODIFIED" if v.name in self._last else "ADDED" for v in changed] + ["DELETED"] * len(gone)
        lines = [self._event_cells(e, cells) for e, (_, cells) in zip(events, rows, strict=True)]
        out = []
        if self._widths is None:
            heading = self._event_cells("EVENT", headers)
            floor = [_WATCH_MIN_WIDTHS.get(h, 0) for h in heading]
            self._widths = [max(w, f) for w, f in zip(column_widths(heading, lines), floor, strict=True)]
            out.append(row_line(heading, self._widths))
        out += [row_line(cells, self._widths) for cells in lines]
        self._progress.say("\n".join(out))

    def _document(self, view: View, event: str) -> None:
        output = self._request.output
        if output == "name":
            name = f"{self._rtype.qualified}/{view.name}"
            self._progress.say(f"{event} {name}" if self._request.watch_events else name)
            return
        doc: Any = document(view)
        if self._request.watch_events:
            doc = {"type": event, "object": doc}
        text = dump(doc, output or "yaml")
        self._progress.say(text if output == "json" else f"---\n{text}")


def _watch(
    ctx: Context,
    client: BrokerClient,
    rtype: ResourceType,
    request: GetRequest,
    shown: list[View],
    *,
    printer: _WatchPrinter,
) -> int:
    names = request.names
    printer.update(shown)
    if not shown and not names:
        ctx.note("No resources found.")
    if _finished(rtype, shown, names):
        return _outcome(ctx, shown)
    deadline = None if request.watch_timeout is None else time.monotonic() + request.watch_timeout
    interrupted = threading.Event()
    with _interrupt_sets(interrupted):
        try:
            while not interrupted.is_set():
                remaining = _WATCH_SLICE if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return _watch_timed_out(rtype, shown, names, request.watch_timeout)
                if not client.changes(min(remaining, _WATCH_SLICE)):
                    continue
                views, _ = _select(_collect(client.topics, rtype, client.latest), names)
                gone = [n for n in names if n not in {v.name for v in views}]
                if names and gone:
                    raise FlctlError(f"{resource_ref(rtype.plural, gone[0])} was deleted while being watched")
                printer.update(views)
                shown = views
                if _finished(rtype, views, names):
                    return _outcome(ctx, views)
        except KeyboardInterrupt:  # raised where no handler of ours was installed (not the main thread)
            return 0
    return 0  # Ctrl-C: the normal way to end a watch of a list


@contextlib.contextmanager
def _interrupt_sets(event: threading.Event) -> Iterator[None]:
    """While a watch runs in the main thread, SIGINT sets `event`: the loop ends within a slice and the
    session closes from a known point. A KeyboardInterrupt raised wherever the thread happens to be (in the
    inbox's queue, in the session) once left a watch that did not exit within 20 s on a loaded machine."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
