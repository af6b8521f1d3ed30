"""`flctl logs fl NAME`: a worker's script log, fetched from its node over MQTT (no shell on the edge).

Each node service answers requests on ``fl/nodes/<node>/requests/<client>`` (`broker.RequestServer`):
an edge with its job's ``worker.log``, the aggregator with ``aggregation.log``; at most
`schemas.MAX_REPLY_BYTES` (256 KiB) per answer, cut at line ends. `-f` polls: every `--interval` the
bytes after the last offset are asked for (several answers in a row while a node has more), until the
job has finished and a poll brought nothing new. Polling keeps the node stateless: nothing on the edge
has to notice that a follower went away.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from flctl._client import BrokerClient
from flctl._context import Context
from flctl._errors import FlctlError, NotFoundError, UsageError
from flctl._kinds import JOBS, resolve
from schemas import MAX_LOG_TAIL_LINES, MAX_REPLY_BYTES, JobStatus, Kind, NodeReply, NodeRequest

__all__ = ["add_arguments", "job_status", "logs"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("type", metavar="TYPE", help="federatedlearningjobs (fl)")
    p.add_argument("name", metavar="NAME")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--worker", metavar="NODE", help="the node whose log to show (default: every training worker)")
    who.add_argument("--aggregator", action="store_true", help="the aggregation script's log (its node)")
    p.add_argument(
        "--tail",
        type=_lines,
        metavar="N",
        help=f"the last N lines (default: as many as fit in {MAX_REPLY_BYTES // 1024} KiB)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job has finished")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="-f: seconds between polls (1)")


def _lines(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of lines, got {text!r}") from None
    if not 1 <= value <= MAX_LOG_TAIL_LINES:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_LOG_TAIL_LINES} lines, got {value}")
    return value


def job_status(client: BrokerClient, name: str) -> JobStatus:
    """The job's retained status (NotFoundError when it has none)."""
    topic = client.topics.status(Kind.JOB, name)
    retained = client.snapshot([topic]).get(topic)
    if retained is None:
        raise NotFoundError(JOBS.plural, name)
    try:
        return JobStatus.model_validate_json(retained.payload)
    except ValidationError as exc:
        raise FlctlError(f"the status of job {name} on {topic} is not a JobStatus: {exc}") from exc


def _targets(status: JobStatus, worker: str | None, aggregator: bool) -> list[str]:
    training = [w.node for w in status.workers if w.role == "training"]
    if aggregator:
        if status.aggregation_node is None:
            raise FlctlError(f"job {status.name} names no aggregation node yet")
        return [status.aggregation_node]
    if worker is None:
        return training
    if worker not in training and worker != status.aggregation_node:
        known = ", ".join(training) or "none"
        raise UsageError(
            f"job {status.name} has no worker on node {worker!r} (training: {known}; "
            f"aggregator: {status.aggregation_node})"
        )
    return [worker]


def _show(ctx: Context, reply: NodeReply, prefix: str) -> None:
    if not reply.text:
        return
    text = reply.text
    if prefix:
        text = "".join(f"{prefix}{line}" for line in text.splitlines(keepends=True))
    ctx.out.write(text if text.endswith("\n") else text + "\n")
    ctx.out.flush()


def _check(ctx: Context, reply: NodeReply) -> bool:
    if not reply.ok:
        ctx.fail(FlctlError(f"{reply.node}: {reply.error}"))
        return False
    if reply.error:  # no log yet: a remark, not a failure
        ctx.note(f"{reply.node}: {reply.error}")
    if reply.truncated:
        ctx.note(
            f"{reply.node}: showing the last {len(reply.text.encode())} bytes of {reply.path} ({reply.size} bytes)"
        )
    return True


def logs(ctx: Context, args: argparse.Namespace) -> int:
    if resolve(args.type) is not JOBS:
        raise UsageError(f"logs are kept for federatedlearningjobs (fl), not {args.type!r}")
    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    with ctx.client() as client:
        status = job_status(client, args.name)
        nodes = _targets(status, args.worker, args.aggregator)
        prefixed = len(nodes) > 1
        offsets: dict[str, int] = {}
        ok = True
        for node in nodes:
            reply = client.request(node, NodeRequest(kind="logs", job=args.name, tail=args.tail or MAX_LOG_TAIL_LINES))
            if _check(ctx, reply):
                _show(ctx, reply, f"[{node}] " if prefixed else "")
                offsets[node] = reply.next_offset
            else:
                ok = False
        if args.follow and offsets:
            _follow(ctx, client, args.name, offsets, prefixed=prefixed, interval=args.interval)
    return 0 if ok else 1


def _follow(
    ctx: Context, client: BrokerClient, job: str, offsets: dict[str, int], *, prefixed: bool, interval: float
) -> None:
    """Poll each node for what its log gained, until the job has finished and a poll brought nothing new."""
    status_topic = client.topics.status(Kind.JOB, job)
    while True:
        finished = _finished(client, status_topic)
        grew = _poll(ctx, client, job, offsets, prefixed)
        if finished and not grew:
            return
        client.changes(interval)  # wait for the next poll, or wake early when the job's status changes


def _finished(client: BrokerClient, topic: str) -> bool:
    retained = client.latest.get(topic)
    if retained is None:
        return True  # the job was deleted: nothing more will be written
    try:
        return JobStatus.model_validate_json(retained.payload).phase.finished
    except ValidationError:
        return False


def _poll(ctx: Context, client: BrokerClient, job: str, offsets: dict[str, int], prefixed: bool) -> bool:
    grew = False
    for node in list(offsets):
        while True:
            reply = client.request(node, NodeRequest(kind="logs", job=job, offset=offsets[node]))
            if not reply.ok:
                ctx.fail(FlctlError(f"{node}: {reply.error}"))
                break
            _show(ctx, reply, f"[{node}] " if prefixed else "")
            moved = reply.next_offset != offsets[node]
            grew = grew or moved
            offsets[node] = reply.next_offset
            if not moved or reply.next_offset >= reply.size:
                break
    return grew
