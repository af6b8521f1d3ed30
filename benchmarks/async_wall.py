"""Edges of very different speeds: wall time to a target accuracy, synchronous vs asynchronous rounds.

Issue 10, benchmark (d). On demand, not in ``make test``; about 11 minutes on 2 shared cores at the defaults
(both runs, data generation and scoring included; ``--scale 0.3 --edges 3 --rounds 2`` takes about 3).

The real system, twice on the same data and seeds: for each mode a fresh deployment under
``<workdir>/<mode>`` (``flctl.cluster.LocalCluster``, as ``make demo``: Mosquitto with TLS and per-node
ACLs, ``fl-cloud-aggregator`` on cloud0 and ``fl-edge-trainer`` on edge1..edgeN, real processes), the
nodes' folders laid out with the demo's ``install_scripts``, and the job published with ``flctl create``
as the admin. The job is the example's page (its Dataset, Model and FederatedLearningJob documents
and scripts) with N training workers instead of two.

* Data: the synthetic tiles (``flctl.synth``) at ``--scale``; the training lists 1.txt and 2.txt are
  pooled and dealt round robin into N equal shares (edge k holds only its share); test.txt is the
  held-out set, scored centrally.
* The slow edge (the last one) runs ``benchmarks/slow_worker/slow_train.py``: the example's train.py
  whose estimator sleeps after each local training ``(slowdown - 1)`` times as long as that training took
  (it measures its own training time: same share size, same CPUs as the others), so its rounds take about
  ``--slow-factor`` times a normal edge's. ``slowdown`` is a training-worker parameter of the job.
* sync: FedAvg, every participant in every round (Sedna's contract), ``exit_round = --rounds``.
* async: the same job plus the aggregation-worker parameters ``aggregation_mode: async``,
  ``buffer_size`` (``--buffer-size``, default N-1) and ``max_staleness`` (``--max-staleness``, default 6:
  above the slow factor, so the slow edge's updates, about that many versions old, still count).
  Its exit_round gives it the same number of local trainings as the sync run,
  ``ceil(N * rounds / buffer_size)``: each asynchronous version folds ``buffer_size`` updates where a
  synchronous round folds N. Same total training work, so the comparison is of how the two modes spend
  wall time on it, not of one doing more learning; the async run may reach the target before its end.
  ``--async-rounds`` overrides it.

Measured per closed round (a synchronous round or an asynchronous version): its ``closedAt`` (the round
record retained on ``<job>/rounds/<r>/record``) less the moment just before ``flctl create``, and the
accuracy and balanced accuracy of that round's global model on the whole test.txt. The global models
are taken off the broker the way an edge takes them: a session of an extra admin identity (``bench``;
the ACL lets every identity read the global models, only the aggregator write them) subscribes to the
job's ``rounds/+/global/#`` and reassembles each round's transfer (``broker.Assembler``, hashes checked);
nothing on the aggregator or the edges changes. They are scored after the run, so the scoring takes no
CPU from the run being timed. Target = the sync run's final accuracy (and, apart, its final balanced
accuracy) minus ``--tolerance``; "to target" is the first round whose global model reaches it.

On a main without the asynchronous mode the engine ignores the async parameters and both runs are
synchronous (the async run then only has more rounds). Figures: docs/performance.md.

    .venv/bin/python benchmarks/async_wall.py
    .venv/bin/python benchmarks/async_wall.py --edges 4 --slow-factor 5 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from broker import Assembler, Inbound, manifest_from_payload  # noqa: E402
from flctl import FlctlError  # noqa: E402
from flctl import cli as flctl_cli  # noqa: E402
from flctl.cluster import LocalCluster  # noqa: E402
from flctl.synth import copy_split, synthesize  # noqa: E402
from runtime import configure_logging  # noqa: E402
from schemas import Channel, FederatedLearningJob, RoundRecord, load_yaml_documents  # noqa: E402

EXAMPLE = REPO / "examples" / "surface_defect_detection"
SLOW_WORKER = Path(__file__).resolve().parent / "slow_worker" / "slow_train.py"
JOB = "surface-defect-detection"
AGGREGATOR = "cloud0"
BENCH = "bench"  # the admin identity whose session records the global models and round records


def say(text: str) -> None:
    print(f"[async_wall {time.strftime('%H:%M:%S')}] {text}", flush=True)


def load_module(name: str, path: Path) -> ModuleType:
    """A module of the example (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_demo = load_module("sdd_run_demo", EXAMPLE / "run_demo.py")


# -- data and job ----------------------------------------------------------------------------------


def prepare_data(workdir: Path, scale: float, seed: int, edges: list[str]) -> tuple[Path, dict[str, Path]]:
    """Synthesize the tiles once; deal 1.txt + 2.txt round robin into one label file per edge."""
    source = workdir / "dataset-source"
    if source.exists():
        shutil.rmtree(source)
    report = synthesize(source, scale=scale, seed=seed)
    say(f"synthetic tiles in {source}: {report}")
    pool = [line for name in ("1.txt", "2.txt") for line in (source / name).read_text().splitlines() if line.strip()]
    shares = {}
    for k, edge in enumerate(edges):
        share = workdir / "shares" / edge / "train.txt"
        share.parent.mkdir(parents=True, exist_ok=True)
        share.write_text("".join(f"{line}\n" for line in pool[k :: len(edges)]))
        shares[edge] = share
    return source, shares


def job_documents(args: argparse.Namespace, edges: list[str], mode: str, exit_round: int) -> list[Any]:
    """The example's page with one Dataset and one training worker per edge, and the mode's parameters."""
    spec = EXAMPLE / "surface-defect-detection.yaml"
    documents = load_yaml_documents(spec.read_text(), str(spec))
    dataset = next(d for d in documents if d["kind"] == "Dataset")
    model = next(d for d in documents if d["kind"] == "Model")
    job = next(d for d in documents if d["kind"] == FederatedLearningJob.__name__)
    template = job["spec"]["trainingWorkers"][0]
    datasets, workers = [], []
    for edge in edges:
        name = f"{edge}-surface-defect-detection-dataset"
        datasets.append(
            {
                **dataset,
                "metadata": {"name": name},
                "spec": {**dataset["spec"], "url": "/data/train.txt", "nodeName": edge},
            }
        )
        parameters = {p["key"]: p["value"] for p in template["workerSpec"]["parameters"]}
        parameters["epochs"] = str(args.epochs)
        worker_spec = {**template["workerSpec"]}
        if edge == edges[-1] and args.slow_factor != 1:
            worker_spec["scriptBootFile"] = SLOW_WORKER.name
            parameters["slowdown"] = str(args.slow_factor)
        worker_spec["parameters"] = [{"key": k, "value": v} for k, v in parameters.items()]
        workers.append({"nodeName": edge, "dataset": {"name": name}, "workerSpec": worker_spec})
    aggregation = {"exit_round": str(exit_round)}
    if mode == "async":
        aggregation.update(
            aggregation_mode="async", buffer_size=str(args.buffer_size), max_staleness=str(args.max_staleness)
        )
    job["spec"]["aggregationWorker"]["workerSpec"]["parameters"] = [
        {"key": k, "value": v} for k, v in aggregation.items()
    ]
    job["spec"]["trainingWorkers"] = workers
    return [*datasets, model, job]


# -- recording a run -------------------------------------------------------------------------------


@dataclass
class Recording:
    """What the bench session saw of one job: each round's global model blob and its round record."""

    globals: dict[int, bytes] = field(default_factory=dict)
    records: dict[int, RoundRecord] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def handle(self, cluster: LocalCluster, assembler: Assembler[int], msg: Inbound) -> None:
        parsed = cluster.topics.parse(msg.topic)
        if parsed.round is None or not msg.payload:
            return
        done = None
        if parsed.channel is Channel.ROUND_RECORD:
            record = RoundRecord.model_validate_json(msg.payload)
            with self.changed:
                # The record is published again once the edges' evaluation is in; closedAt stays.
                self.records[record.round] = record
                self.changed.notify_all()
        elif parsed.channel is Channel.GLOBAL_MANIFEST:
            done = assembler.add_manifest(parsed.round, manifest_from_payload(msg.payload))
        elif parsed.channel is Channel.GLOBAL_CHUNK and parsed.chunk is not None:
            done = assembler.add_chunk(parsed.round, parsed.chunk, msg.payload)
        if done is not None:
            with self.changed:
                self.globals[done.key] = done.blob
                self.changed.notify_all()

    def wait_for(self, last_round: int, timeout: float) -> bool:
        """Until the last round's global model and the records of rounds 1..last_round are in (bounded)."""

        def complete() -> bool:
            return last_round in self.globals and all(r in self.records for r in range(1, last_round + 1))

        with self.changed:
            return self.changed.wait_for(complete, timeout)


@contextlib.contextmanager
def recording(cluster: LocalCluster) -> Any:
    """A `Recording` fed by a session of `bench` subscribed to the job's global models and round records."""
    rec = Recording()
    assembler: Assembler[int] = Assembler()
    stop = threading.Event()
    with cluster.watch(BENCH, cluster.topics.job_globals(JOB), cluster.topics.job_round_records(JOB)) as inbox:

        def drain(q: queue.Queue[Inbound]) -> None:
            while not stop.is_set():
                with contextlib.suppress(queue.Empty):
                    rec.handle(cluster, assembler, q.get(timeout=0.2))

        thread = threading.Thread(target=drain, args=(inbox,), name="bench-recorder", daemon=True)
        thread.start()
        try:
            yield rec
        finally:
            stop.set()
            thread.join(5.0)


@dataclass
class Round:
    round: int
    seconds: float  # closedAt less the moment just before `flctl create`
    participants: list[str]
    duration: float | None = None  # the record's durationSeconds: opened -> closed
    accuracy: float | None = None
    balanced_accuracy: float | None = None


@dataclass
class Run:
    mode: str
    exit_round: int
    rounds: list[Round]
    finished_seconds: float | None  # the job's completionTime less the same origin
    phase: str


def run_mode(args: argparse.Namespace, mode: str, source: Path, shares: dict[str, Path], exit_round: int) -> Run:
    """One deployment, one job: returns its rounds (not yet scored) and the global models in `<mode>/globals`."""
    workdir = (args.workdir / mode).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    edges = list(shares)
    for edge, share in shares.items():
        copy_split(source, share, workdir / edge / "data")
        code = run_demo.install_scripts(workdir / edge, "edge")
        if edge == edges[-1]:
            shutil.copy2(SLOW_WORKER, code / SLOW_WORKER.name)
    run_demo.install_scripts(workdir / AGGREGATOR, "aggregator")
    spec = workdir / "job.yaml"
    spec.write_text(yaml.safe_dump_all(job_documents(args, edges, mode, exit_round), sort_keys=False))
    # One TensorFlow thread pool per script would make N+1 processes fight over the cores at every step.
    threads = str(args.threads)
    env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads, "OMP_NUM_THREADS": threads}
    nodes = [AGGREGATOR, *edges]
    with LocalCluster(workdir, secure=True, nodes=nodes, admins=[BENCH], env=env) as cluster:
        cluster.start_broker()
        cluster.start_node(AGGREGATOR, "aggregator")
        for edge in edges:
            cluster.start_node(edge, "edge")
        say(f"{mode}: broker on 127.0.0.1:{cluster.port}, {AGGREGATOR} and {len(edges)} edges started in {workdir}")
        with recording(cluster) as rec:
            origin = dt.datetime.now(dt.UTC)
            if flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) != 0:
                raise FlctlError(f"flctl create -f {spec} failed")
            say(f"{mode}: job created (exit_round {exit_round}); following it")
            status = cluster.wait_for_job(JOB, timeout=args.timeout, on_change=progress(mode))
            last = max((r.round for r in status.rounds), default=0)
            if not rec.wait_for(last, 60.0):
                say(f"{mode}: WARNING: globals {sorted(rec.globals)}, records {sorted(rec.records)} after 60 s")
        globals_dir = workdir / "globals"
        globals_dir.mkdir()
        for r, blob in rec.globals.items():
            (globals_dir / f"{r}.blob").write_bytes(blob)
        rounds = [
            Round(
                r,
                (rec.records[r].closed_at - origin).total_seconds(),
                rec.records[r].participants,
                rec.records[r].duration_seconds,
            )
            for r in sorted(rec.records)
        ]
        finished = (status.completion_time - origin).total_seconds() if status.completion_time else None
        return Run(mode, exit_round, rounds, finished, status.phase.value)


def progress(mode: str) -> Any:
    seen = {"rounds": 0}

    def on_change(status: Any) -> None:
        for record in status.rounds:
            if record.round > seen["rounds"]:
                seen["rounds"] = record.round
                say(f"{mode}: round {record.round} closed with {', '.join(record.participants)}")

    return on_change


# -- scoring and the table -------------------------------------------------------------------------


def score(runs: list[Run], workdir: Path, test_labels: Path) -> None:
    """Score every round's global model on the whole test.txt with the example's estimator."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter would split the tables
    from edge_trainer import load_dataset
    from schemas import decode_weights

    interface = load_module("sdd_interface", EXAMPLE / "training_worker" / "interface.py")
    x, y = load_dataset(test_labels)
    data = type("Data", (), {"x": x, "y": y, "__len__": lambda self: len(x)})()
    estimator = interface.Estimator()
    for run in runs:
        for rnd in run.rounds:
            blob = workdir / run.mode / "globals" / f"{rnd.round}.blob"
            if not blob.is_file():
                continue
            estimator.set_weights(decode_weights(blob.read_bytes())[1])
            metrics = estimator.evaluate(data)
            rnd.accuracy, rnd.balanced_accuracy = float(metrics["accuracy"]), float(metrics["balanced_accuracy"])


def first_reaching(run: Run, metric: str, target: float) -> float | None:
    for rnd in run.rounds:
        value = getattr(rnd, metric)
        if value is not None and value >= target:
            return rnd.seconds
    return None


def ratio_of(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def report(runs: list[Run], tolerance: float) -> dict[str, Any]:
    for run in runs:
        print(f"\n{run.mode}: {len(run.rounds)} rounds, job {run.phase}")
        print(
            "| round | s since create | s open | updates | accuracy | balanced acc | participants |\n|---|---|---|---|---|---|---|"
        )
        for rnd in run.rounds:
            print(
                f"| {rnd.round} | {rnd.seconds:.1f} | {fmt(rnd.duration, '.1f')} | {len(rnd.participants)} | {fmt(rnd.accuracy)} | "
                f"{fmt(rnd.balanced_accuracy)} | {', '.join(rnd.participants)} |"
            )
    sync = next((r for r in runs if r.mode == "sync"), runs[0])
    final = sync.rounds[-1] if sync.rounds else None
    targets = {
        m: (getattr(final, m) or 0.0) - tolerance if final else math.inf for m in ("accuracy", "balanced_accuracy")
    }
    print(
        f"\ntarget (the {sync.mode} run's final, less {tolerance:g}): accuracy {targets['accuracy']:.3f}, "
        f"balanced accuracy {targets['balanced_accuracy']:.3f}"
    )
    print(
        "| mode | rounds | updates | final acc | final bal-acc | s to finish | s to target acc | s to target bal-acc |"
        " ratio to sync (to target acc, bal-acc; finish) |\n|---|---|---|---|---|---|---|---|---|"
    )
    summary: dict[str, Any] = {"targets": targets, "runs": []}
    base = {m: first_reaching(sync, m, t) for m, t in targets.items()}
    sync_finish = sync.finished_seconds if sync.finished_seconds is not None else (final.seconds if final else None)
    for run in runs:
        last = run.rounds[-1] if run.rounds else None
        reach = {m: first_reaching(run, m, t) for m, t in targets.items()}
        finish = run.finished_seconds if run.finished_seconds is not None else (last.seconds if last else None)
        ratio = {m: ratio_of(reach[m], base[m]) for m in targets} | {"finish": ratio_of(finish, sync_finish)}
        print(
            f"| {run.mode} | {len(run.rounds)} | {sum(len(r.participants) for r in run.rounds)} | "
            f"{fmt(last.accuracy if last else None)} | {fmt(last.balanced_accuracy if last else None)} | "
            f"{fmt(finish, '.1f')} | {fmt(reach['accuracy'], '.1f')} | {fmt(reach['balanced_accuracy'], '.1f')} | "
            f"{fmt(ratio['accuracy'], '.2f')}, {fmt(ratio['balanced_accuracy'], '.2f')}; {fmt(ratio['finish'], '.2f')} |"
        )
        summary["runs"].append({**asdict(run), "to_target": reach, "ratio_to_sync": ratio, "finish_seconds": finish})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "async_wall")
    parser.add_argument("--edges", type=int, default=4)
    parser.add_argument(
        "--slow-factor", type=float, default=5.0, help="the last edge's rounds take this many times longer"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="dataset size relative to the real one")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--rounds", type=int, default=5, help="the sync run's exit_round")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--buffer-size", type=int, default=None, help="async: updates per version (default N-1)")
    # Above the slow factor: the slow edge's update lags about `slow_factor` versions; at 3 it would always be
    # refused and the async run would simply leave that edge out.
    parser.add_argument("--max-staleness", type=int, default=6)
    parser.add_argument("--async-rounds", type=int, default=None, help="async exit_round (default: same updates)")
    parser.add_argument("--modes", default="sync,async", help="comma-separated, in order (sync sets the target)")
    parser.add_argument("--tolerance", type=float, default=0.0, help="target = sync's final less this (0-1 scale)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads per training script")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds each job may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.edges < 2:
        parser.error("--edges must be at least 2")
    args.buffer_size = args.buffer_size or args.edges - 1
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("sync", "async") for m in modes):
        parser.error(f"--modes takes sync and/or async, got {args.modes!r}")
    async_rounds = args.async_rounds or math.ceil(args.edges * args.rounds / args.buffer_size)

    configure_logging(node="bench", role="cli", level="WARNING")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    edges = [f"edge{k + 1}" for k in range(args.edges)]
    started = time.monotonic()
    source, shares = prepare_data(args.workdir, args.scale, args.seed, edges)
    say(f"{len(edges)} edges, {edges[-1]} {args.slow_factor:g}x slower; {args.epochs} local epochs per round")
    runs = []
    for mode in modes:
        exit_round = args.rounds if mode == "sync" else async_rounds
        try:
            runs.append(run_mode(args, mode, source, shares, exit_round))
        except FlctlError as exc:
            say(f"{mode}: FAILED: {exc}")
            return 1
    say("scoring every round's global model on test.txt")
    score(runs, args.workdir, source / "test.txt")
    summary = report(runs, args.tolerance)
    summary.update(
        edges=args.edges,
        slow_factor=args.slow_factor,
        scale=args.scale,
        epochs=args.epochs,
        buffer_size=args.buffer_size,
        max_staleness=args.max_staleness,
        cpu_count=os.cpu_count(),
        total_seconds=round(time.monotonic() - started, 1),
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
        say(f"figures written to {args.json}")
    return 0 if all(r.phase == "Succeeded" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
