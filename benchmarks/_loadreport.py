"""The load generator's configuration, results and report (benchmarks/loadgen.py): per round, the duration,
the slowest simulated training, the overhead and where it went; the checks; CPU and memory from /proc."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._simedge import SEED_LAYOUT, TINY_LAYOUT, training_seconds
from schemas import JobStatus, Phase, RoundRecord

REPO = Path(__file__).resolve().parents[1]

LAYOUTS = {"seed": SEED_LAYOUT, "tiny": TINY_LAYOUT}


@dataclass
class LoadConfig:
    edges: int = 100
    model: str = "seed"
    rounds: int = 3
    train_ms: tuple[float, float] = (0.0, 200.0)
    procs: int = 0  # generator processes (0: the default, 2); at least one per EDGES_PER_PROCESS edges
    seed: int = 0
    workdir: Path = REPO / ".bench" / "loadgen"
    timeout: float = 900.0
    agg_args: list[str] = field(default_factory=list)
    broker_config: dict[str, Any] = field(default_factory=dict)
    secure: bool = False  # the demo's deployment: TLS, passwords, per-node ACLs (flctl broker init)
    profile: Path | None = None  # py-spy's collapsed stacks of the aggregator during the job (needs py-spy)
    profile_gil: bool = False  # py-spy samples only the thread holding the GIL
    generator_nice: int = 0  # the generator processes' niceness (a diagnostic; the figures of record use 0)
    edge_client: str = "lean"  # the simulated edges' clients: one network thread per process, or a Session each


@dataclass
class RoundFigures:
    round: int
    participants: int
    duration: float
    slowest_training: float
    overhead: float
    global_spread: float | None  # opened -> the previous round's global model complete at the last edge
    last_uploaded: float | None  # opened -> the last update acknowledged by the broker
    close_lag: float | None  # the last update acknowledged by the broker -> the round closed
    cycle: float | None  # closed at of the previous round -> closed at of this one


@dataclass
class LoadResult:
    config: LoadConfig
    status: JobStatus | None
    rounds: list[RoundFigures]
    dropped: list[str]
    sys_after_job: bool
    edge_errors: list[str]
    completed_edges: int
    cpu: dict[str, float]
    peak_rss_mb: dict[str, float]
    sys: dict[str, str]
    job_seconds: float
    start_seconds: float | None  # flctl create -> round 1 opened
    # round 1 opened -> the last uploaded init acknowledged by the aggregator (negative: before it opened).
    # Since issue 12 only the plan's init source uploads one; the others wait for the round-0 model and
    # upload theirs only as a fallback, so more than one init means a fallback fired.
    inits_after_open: float | None = None
    inits_uploaded: int = 0
    init_source: str | None = None  # the edge whose init became the round-0 model (event InitialModel)

    @property
    def ok(self) -> bool:
        return (
            self.status is not None
            and self.status.phase is Phase.SUCCEEDED
            and len(self.rounds) == self.config.rounds
            and all(r.participants == self.config.edges for r in self.rounds)
            and self.sys_after_job
            and bool(self.dropped)
            and set(self.dropped) == {"0"}
            and not self.edge_errors
            and self.completed_edges == self.config.edges
        )


def proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process and its reaped children (Linux /proc)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / 100.0


def peak_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def analyse(
    cfg: LoadConfig,
    seen: Followed,
    edges: list[dict[str, Any]],
    created: float,
    *,
    cpu: dict[str, float],
    rss: dict[str, float],
) -> LoadResult:
    index = {n: i for i, n in enumerate(edge_names(cfg.edges))}
    low, high = cfg.train_ms[0] / 1000, cfg.train_ms[1] / 1000
    figures = []
    previous_close: float | None = None
    for r in sorted(seen.records):
        rec = seen.records[r]
        if rec.opened_at is None or rec.closed_at is None or rec.duration_seconds is None:
            continue  # a closed round's record has all three; anything else is not a round to measure
        opened, closed = rec.opened_at.timestamp(), rec.closed_at.timestamp()
        slowest = max(training_seconds(cfg.seed, index[n], r, low, high) for n in rec.participants)
        globals_at = [e["globals_at"].get(r - 1) for e in edges]
        uploaded = [e["uploaded_at"].get(r) for e in edges]
        spread = max(globals_at) - opened if globals_at and None not in globals_at else None
        last_up = max(uploaded) if uploaded and None not in uploaded else None
        figures.append(
            RoundFigures(
                round=r,
                participants=len(rec.participants),
                duration=rec.duration_seconds,
                slowest_training=slowest,
                overhead=rec.duration_seconds - slowest,
                global_spread=spread,
                last_uploaded=last_up - opened if last_up is not None else None,
                close_lag=closed - last_up if last_up is not None else None,
                cycle=closed - previous_close if previous_close is not None else None,
            )
        )
        previous_close = closed
    errors = [f"{e['name']}: {err}" for e in edges for err in e["errors"]]
    first = seen.records.get(1)
    init_acks = [e["acked_at"].get(0) for e in edges if 0 in e["upload_started"]]
    inits_after = (
        max(init_acks) - first.opened_at.timestamp()
        if first is not None and first.opened_at and init_acks and None not in init_acks
        else None
    )
    return LoadResult(
        config=cfg,
        status=seen.status,
        rounds=figures,
        dropped=seen.dropped,
        sys_after_job=seen.sys_after,
        edge_errors=errors,
        completed_edges=sum(1 for e in edges if e["completed_at"] is not None),
        cpu=cpu,
        peak_rss_mb=rss,
        sys=seen.sys,
        job_seconds=(seen.finished_at or time.time()) - created,
        start_seconds=first.opened_at.timestamp() - created if first is not None and first.opened_at else None,
        inits_after_open=inits_after,
        inits_uploaded=len(init_acks),
        init_source=seen.init_source,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(result: LoadResult) -> str:
    cfg = result.config
    lines = [
        f"{cfg.edges} edges, model {cfg.model} ({sum(math.prod(s) for _, s in LAYOUTS[cfg.model]):,} float32), "
        f"{cfg.rounds} rounds, training {cfg.train_ms[0]:.0f}-{cfg.train_ms[1]:.0f} ms, edge clients {cfg.edge_client}"
        + (f", generator at nice +{cfg.generator_nice} (a diagnostic)" if cfg.generator_nice else ""),
        f"job: {result.status.phase.value if result.status else 'no status'} in {result.job_seconds:.1f} s "
        f"(flctl create -> round 1 opened: {_fmt(result.start_seconds)} s; round-0 model from "
        f"{result.init_source or '-'}, {result.inits_uploaded} of {cfg.edges} edges uploaded an init, the last "
        f"acknowledged {_fmt(result.inits_after_open)} s after round 1 opened)",
        "",
        "round  edges  duration_s  slowest_train_s  overhead_s  global_at_last_edge_s  last_upload_done_s  "
        "closed_after_last_upload_s  cycle_s",
    ]
    for f in result.rounds:
        lines.append(
            f"{f.round:>5}  {f.participants:>5}  {f.duration:>10.3f}  {f.slowest_training:>15.3f}  "
            f"{f.overhead:>10.3f}  {_fmt(f.global_spread):>21}  {_fmt(f.last_uploaded):>18}  "
            f"{_fmt(f.close_lag):>26}  {_fmt(f.cycle):>7}"
        )
    overheads = [f.overhead for f in result.rounds]
    sys_ = result.sys
    lines += [
        "",
        f"overhead: max {max(overheads, default=float('nan')):.3f} s, "
        f"mean {sum(overheads) / max(1, len(overheads)):.3f} s"
        + (" (goal <= 1 s at 100 edges)" if cfg.edges == 100 else ""),
        f"broker dropped (every $SYS value seen): {sorted(set(result.dropped)) or 'none received'}; "
        f"a $SYS cycle after the job: {result.sys_after_job}",
        "broker: "
        + ", ".join(
            f"{k.removeprefix('$SYS/broker/')} {sys_.get(k, '?')}"
            for k in (
                "$SYS/broker/clients/maximum",
                "$SYS/broker/publish/messages/received",
                "$SYS/broker/publish/messages/sent",
                "$SYS/broker/bytes/received",
                "$SYS/broker/bytes/sent",
                "$SYS/broker/heap/maximum",
            )
        ),
        "CPU seconds during the job: " + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu.items()),
        "peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in result.peak_rss_mb.items()),
        f"edges completed: {result.completed_edges}/{cfg.edges}; edge errors: {len(result.edge_errors)}",
        *result.edge_errors[:10],
        f"verdict: {'OK' if result.ok else 'FAILED'} (every round with every edge, nothing dropped)",
    ]
    return "\n".join(lines)


@dataclass
class Followed:
    status: JobStatus | None = None
    records: dict[int, RoundRecord] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    sys: dict[str, str] = field(default_factory=dict)
    finished_at: float | None = None
    sys_after: bool = False
    init_source: str | None = None  # the node the InitialModel event named (the round-0 model's)


def edge_names(edges: int) -> list[str]:
    width = len(str(edges))
    return [f"edge{i:0{width}d}" for i in range(1, edges + 1)]
