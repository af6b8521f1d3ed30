"""The data-residency check behind `flctl audit` (pure, public): an edge's ledger against the aggregator's.

For one run (uid) of a job, per edge:

- every message the edge published for the job is of an expected class: control JSON (its worker
  status, update manifests), weight bytes (update chunks) or an answer to an admin's request;
- every update manifest declares a blob whose tensor layout (names, dtypes, shapes, from the weights
  header) is the job's: the layout of the aggregator's round-0 global model, which every update must match;
- every update chunk is a chunk of a blob a manifest declared (its SHA-256 is that chunk's);
- the aggregator received every job message the edge published (the same topic and SHA-256), and
  received nothing on the edge's topics that the edge's ledger does not account for (a foreign
  publication: someone else using the edge's identity, or a process beside its service).

Anything else is a finding. Bytes up (published) and down (global models received) are summed per round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schemas import LedgerEntry

__all__ = ["EdgeAudit", "JobAudit", "RoundBytes", "check_job", "describe_layout"]

_EXPECTED = {"worker-status", "update-manifest", "update-chunk", "reply"}
Layout = list[tuple[str, str, list[int]]]


@dataclass
class RoundBytes:
    messages: int = 0
    up: int = 0
    down: int = 0


@dataclass
class EdgeAudit:
    node: str
    rounds: dict[int, RoundBytes] = field(default_factory=dict)
    control_messages: int = 0
    control_bytes: int = 0
    blobs: int = 0
    chunks: int = 0
    weight_bytes: int = 0
    replies: int = 0
    reply_bytes: int = 0
    received_by_aggregator: int = 0
    findings: list[str] = field(default_factory=list)
    error: str = ""  # the edge's ledger could not be read

    @property
    def clean(self) -> bool:
        return not self.findings and not self.error

    @property
    def bytes_up(self) -> int:
        return self.control_bytes + self.weight_bytes

    @property
    def messages(self) -> int:
        return self.control_messages + self.chunks


@dataclass
class JobAudit:
    job: str
    uid: str
    aggregator: str
    layout: Layout | None
    edges: list[EdgeAudit]
    findings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings and all(e.clean for e in self.edges)


def describe_layout(layout: Layout) -> str:
    """``12 tensors, 423,874 values (float32)``."""
    values = 0
    for _name, _dtype, shape in layout:
        count = 1
        for dim in shape:
            count *= dim
        values += count
    dtypes = ", ".join(sorted({dtype for _, dtype, _ in layout}))
    return f"{len(layout)} tensors, {values:,} values ({dtypes})"


def _layout_difference(expected: Layout, got: Layout) -> str:
    if len(expected) != len(got):
        return f"{len(got)} tensors, the job's layout has {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        if tuple(want[:2]) != tuple(have[:2]) or list(want[2]) != list(have[2]):
            return f"tensor {i} is {have[0]} {have[1]}{list(have[2])}, the job's is {want[0]} {want[1]}{list(want[2])}"
    return ""


def check_job(
    job: str,
    uid: str,
    aggregator: str,
    aggregator_ledger: Iterable[LedgerEntry],
    edge_ledgers: Mapping[str, list[LedgerEntry] | str],
) -> JobAudit:
    """Compare each edge's ledger (or the error that kept it from being read) with the aggregator's."""
    agg = [e for e in aggregator_ledger if e.uid == uid and e.job == job]
    layout = next((e.tensors for e in agg if e.dir == "out" and e.cls == "global" and e.round == 0), None)
    audit = JobAudit(job, uid, aggregator, list(layout) if layout else None, [])
    if layout is None:
        audit.findings.append(
            f"the aggregator's ledger has no round-0 global model of run {uid}: the job's tensor layout is unknown"
        )
    received: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in agg:
        if entry.dir == "in":
            received[entry.node].append(entry)
    for node, ledger in sorted(edge_ledgers.items()):
        if isinstance(ledger, str):
            audit.edges.append(EdgeAudit(node, error=ledger))
            continue
        mine = [e for e in ledger if e.uid == uid and e.job == job]
        audit.edges.append(_check_edge(node, mine, received.get(node, []), audit.layout))
    return audit


def _check_edge(node: str, ledger: list[LedgerEntry], received: list[LedgerEntry], layout: Layout | None) -> EdgeAudit:
    out = EdgeAudit(node)
    got = {(e.topic, e.sha256) for e in received}
    manifests = {e.transfer: e for e in ledger if e.dir == "out" and e.cls == "update-manifest" and e.transfer}
    for e in ledger:
        if e.dir == "in":
            if e.cls == "global" and e.round is not None:
                out.rounds.setdefault(e.round, RoundBytes()).down += e.bytes
            continue
        _count(out, e, got)
        if e.cls == "update-manifest":
            _check_blob(out, e, layout)
        elif e.cls == "update-chunk":
            m = manifests.get(e.transfer or "")
            hashes = m.chunk_sha256 if m is not None else None
            if hashes is None or e.chunk is None or e.chunk >= len(hashes) or hashes[e.chunk] != e.sha256:
                out.findings.append(f"chunk {e.topic} ({e.bytes} bytes) is not part of any blob a manifest declared")
    out.blobs = len(manifests)
    published = {(e.topic, e.sha256) for e in ledger if e.dir == "out"}
    for e in received:
        if (e.topic, e.sha256) not in published:
            out.findings.append(
                f"foreign publication: the aggregator received {e.topic} ({e.bytes} bytes, sha256 {e.sha256[:16]}) "
                f"on {node}'s topics, and {node}'s ledger does not account for it"
            )
    return out


def _count(out: EdgeAudit, e: LedgerEntry, got: set[tuple[str, str]]) -> None:
    """One published message: its class, its round's bytes, whether the aggregator received it."""
    where = f"{e.topic} ({e.bytes} bytes)"
    if e.cls not in _EXPECTED:
        out.findings.append(f"unexpected topic class {e.cls!r}: {where}")
    if e.cls == "reply":  # answers to an admin go to the admin, not to the aggregator
        out.replies += 1
        out.reply_bytes += e.bytes
        return
    r = out.rounds.setdefault(e.round or 0, RoundBytes())
    r.messages += 1
    r.up += e.bytes
    if (e.topic, e.sha256) in got:
        out.received_by_aggregator += 1
    else:
        out.findings.append(f"the aggregator did not receive {where}, sha256 {e.sha256[:16]}")
    if e.cls == "update-chunk":
        out.chunks += 1
        out.weight_bytes += e.bytes
    else:
        out.control_messages += 1
        out.control_bytes += e.bytes


def _check_blob(out: EdgeAudit, e: LedgerEntry, layout: Layout | None) -> None:
    if layout is None:
        return
    if e.tensors is None:
        out.findings.append(f"update blob {e.transfer} of round {e.round}: no tensor layout recorded")
        return
    diff = _layout_difference(layout, list(e.tensors))
    if diff:
        out.findings.append(f"update blob {e.transfer} of round {e.round} differs from the job's layout: {diff}")
