"""`flctl audit fl NAME`: did only control JSON and weights of the job's layout leave each edge?

flctl asks the job's aggregator and each training worker's node for their ledger of the job's current
run (`NodeRequest` kind ``ledger``, paged at `schemas.MAX_REPLY_BYTES` per answer, over MQTT like
`flctl logs`), compares them (`flctl.residency`) and prints, per edge, the verdict, bytes up and down
per round and every finding. Exit 0 when nothing was found, 1 otherwise (a finding, or a ledger that
could not be read).
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from flctl._client import BrokerClient
from flctl._context import Context
from flctl._errors import FlctlError, NoAnswerError, PublishFailedError, UsageError
from flctl._kinds import JOBS, resolve
from flctl._logs import job_status
from flctl.residency import EdgeAudit, JobAudit, check_job, describe_layout
from schemas import LedgerEntry, NodeRequest

__all__ = ["add_arguments", "audit", "fetch_ledger"]

# A ledger of a long job spans a few pages; this bounds a node that keeps answering "more".
_MAX_PAGES = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("type", metavar="TYPE", help="federatedlearningjobs (fl)")
    p.add_argument("name", metavar="NAME")


def fetch_ledger(client: BrokerClient, node: str, job: str) -> list[LedgerEntry]:
    """Every line of `node`'s ledger of `job`, page by page; FlctlError when the node refuses."""
    entries: list[LedgerEntry] = []
    offset = 0
    for _ in range(_MAX_PAGES):
        reply = client.request(node, NodeRequest(kind="ledger", job=job, offset=offset))
        if not reply.ok:
            raise FlctlError(f"{node}: {reply.error}")
        for line in reply.text.splitlines():
            if not line.strip():
                continue
            try:
                entries.append(LedgerEntry.model_validate_json(line))
            except ValidationError as exc:
                raise FlctlError(f"{node}: ledger line is not a LedgerEntry: {exc.errors()[0]['msg']}") from exc
        if reply.next_offset >= reply.size or reply.next_offset == offset:
            return entries
        offset = reply.next_offset
    raise FlctlError(f"{node}: the ledger did not end within {_MAX_PAGES} pages")


def audit(ctx: Context, args: argparse.Namespace) -> int:
    if resolve(args.type) is not JOBS:
        raise UsageError(f"audits are of federatedlearningjobs (fl), not {args.type!r}")
    with ctx.client() as client:
        status = job_status(client, args.name)
        if status.uid is None or status.aggregation_node is None:
            raise FlctlError(f"job {args.name} has not started (no run to audit yet)")
        aggregator = fetch_ledger(client, status.aggregation_node, args.name)
        edges: dict[str, list[LedgerEntry] | str] = {}
        for worker in status.workers:
            if worker.role != "training":
                continue
            try:
                edges[worker.node] = fetch_ledger(client, worker.node, args.name)
            except (NoAnswerError, PublishFailedError) as exc:
                edges[worker.node] = str(exc)
            except FlctlError as exc:
                edges[worker.node] = str(exc)
    result = check_job(args.name, status.uid, status.aggregation_node, aggregator, edges)
    ctx.say(render(result))
    return 0 if result.clean else 1


def render(result: JobAudit) -> str:
    lines = [f"job {result.job}  run {result.uid}  aggregator {result.aggregator}"]
    if result.layout is not None:
        lines.append(f"layout (the aggregator's round-0 global model): {describe_layout(result.layout)}")
    lines += [f"! {finding}" for finding in result.findings]
    for edge in result.edges:
        lines += ["", *_render_edge(edge)]
    lines += ["", "clean: nothing but control JSON and the job's weights left any edge" if result.clean else "FINDINGS"]
    return "\n".join(lines)


def _render_edge(edge: EdgeAudit) -> list[str]:
    if edge.error:
        return [f"{edge.node}: ledger not read: {edge.error}"]
    if edge.clean:
        head = f"{edge.node}: only control JSON and weight blobs of the job's layout left {edge.node}"
    else:
        head = f"{edge.node}: {len(edge.findings)} finding(s)"
    rows = [("ROUND", "MESSAGES", "BYTES UP", "BYTES DOWN")]
    total_down = 0
    for round_ in sorted(edge.rounds):
        r = edge.rounds[round_]
        total_down += r.down
        rows.append((str(round_), str(r.messages), f"{r.up:,}", f"{r.down:,}"))
    rows.append(("total", str(edge.messages), f"{edge.bytes_up:,}", f"{total_down:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  " + "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    out = [head, *table]
    out.append(
        f"  control JSON: {edge.control_messages} messages, {edge.control_bytes:,} bytes; weights: {edge.blobs} "
        f"blobs in {edge.chunks} chunks, {edge.weight_bytes:,} bytes; replies to admin requests: {edge.replies}, "
        f"{edge.reply_bytes:,} bytes"
    )
    out.append(f"  the aggregator received {edge.received_by_aggregator} of the {edge.messages} job messages")
    out += [f"  ! {finding}" for finding in edge.findings]
    return out
