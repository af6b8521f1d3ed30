"""Load generator: N simulated edges drive the REAL aggregator through the REAL broker (issue 12).

One Mosquitto and one `fl-cloud-aggregator` run as processes (`flctl.cluster.LocalCluster`, as the demo and
the tests start them); the aggregation script is the fault tests' (tests/faults/scripts/aggregate.py,
FedAvg). The edges are simulated (`benchmarks/_simfleet.py`): each a real MQTT client with its own identity
(client id = node name), announcing itself with a node status of role ``edge``, publishing its worker
statuses, its init and its update of every round with `broker.BlobSender`, reading the retained global
models and its acks; training is a sleep drawn uniformly from ``--train-ms``. The job is created with
``flctl create`` (a Dataset per edge, the Model, the FederatedLearningJob).

Measured per round, from the aggregator's round records and the edges' own clocks (one machine, one wall
clock): the round's duration (opened to closed, `RoundRecord.durationSeconds`), the slowest simulated
training of the round, the **overhead** (duration minus slowest training), and where it goes: the global
model of the previous round reaching the last edge, the last update fully acknowledged by the broker, the
round closing after that. Checked: every round completes with every edge, and the broker's
``$SYS/broker/publish/messages/dropped`` stays 0 (sys_interval 1 s, read until a $SYS cycle after the job
ended). Also the CPU seconds of the aggregator, the broker and the generator during the job.

    .venv/bin/python benchmarks/loadgen.py --edges 100 --model seed --rounds 3
    .venv/bin/python benchmarks/loadgen.py --edges 1000 --model tiny --rounds 3

Output under ``.bench/loadgen/`` (git-ignored): the cluster's folders, the aggregator's service.log,
Mosquitto's log. Exit 0 when every round completed and nothing was dropped.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import queue
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._jobs import JOB, job_documents  # noqa: E402
from benchmarks._loadreport import (  # noqa: E402
    LAYOUTS,
    Followed,
    LoadConfig,
    LoadResult,
    analyse,
    edge_names,
    peak_rss_mb,
    proc_cpu,
    report,
)
from benchmarks._simedge import FleetConfig  # noqa: E402
from benchmarks._simfleet import fleet_process  # noqa: E402
from broker import Inbound, MqttSettings, Session  # noqa: E402
from flctl import cli as flctl_cli  # noqa: E402
from flctl.cluster import MONITOR, LocalCluster  # noqa: E402
from runtime import configure_logging  # noqa: E402
from schemas import JobStatus, Kind, RoundRecord, Topics  # noqa: E402

SCRIPTS = REPO / "tests" / "faults" / "scripts"
DROPPED = "$SYS/broker/publish/messages/dropped"
UPTIME = "$SYS/broker/uptime"
WATCHER = "lg-watch"
EDGES_PER_PROCESS = 250  # beyond this one process's GIL, not the broker, sets the pace (2 threads per session)
PROCESSES = 2  # the default: one generator process's GIL read every edge's copy of the global model


def _py_spy(pid: int, out: Path | None, *, gil: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the aggregator (its threads and the script's process too) into `out`, or None. `gil`: only
    the thread holding the GIL (what costs CPU in Python; without it a thread waiting for the GIL counts too)."""
    if out is None:
        return None
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(out),
        "--subprocesses",
        "--threads",
    ]
    command += ["--gil"] if gil else []
    return subprocess.Popen([*command, "--rate", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _lay_out(cfg: LoadConfig) -> tuple[list[str], Path]:
    """A fresh work directory: cloud0's aggregation script and the job's documents; the edges' names."""
    if cfg.workdir.exists():
        shutil.rmtree(cfg.workdir)
    (cfg.workdir / "cloud0" / "code").mkdir(parents=True)
    shutil.copy2(SCRIPTS / "aggregate.py", cfg.workdir / "cloud0" / "code" / "aggregate.py")
    names = edge_names(cfg.edges)
    spec = cfg.workdir / "job.yaml"
    spec.write_text(yaml.safe_dump_all(job_documents(names, rounds=cfg.rounds, features=1, hidden=1, agg_params={})))
    return names, spec


def _collect(children: list[Any], results: Any) -> tuple[list[dict[str, Any]], float]:
    """Every fleet's edge results and CPU seconds, once they stopped."""
    edges: list[dict[str, Any]] = []
    cpu = 0.0
    for _ in children:
        try:
            item = results.get(timeout=60)
        except queue.Empty:
            break
        edges += item["edges"]
        cpu += item["cpu"]
    for child in children:
        child.join(30)
    return edges, cpu


def _start_fleets(
    ctx: Any,
    cfg: LoadConfig,
    names: list[str],
    procs: int,
    settings: list[MqttSettings] | None,
    *,
    port: int,
    channels: tuple[Any, Any, Any],
) -> list[Any]:
    """The fleet processes, edges dealt round-robin; `channels` is (ready, stop, results)."""
    ready, stop, results = channels
    children = []
    for p in range(procs):
        fleet = FleetConfig(
            host="127.0.0.1",
            port=port,
            prefix="fl",
            job=JOB,
            edges=[(n, i) for i, n in enumerate(names) if i % procs == p],
            settings=[s for i, s in enumerate(settings) if i % procs == p] if settings is not None else None,
            layout=LAYOUTS[cfg.model],
            rounds=cfg.rounds,
            train_low=cfg.train_ms[0] / 1000,
            train_high=cfg.train_ms[1] / 1000,
            seed=cfg.seed,
            nice=cfg.generator_nice,
            client=cfg.edge_client,
        )
        child = ctx.Process(target=fleet_process, args=(fleet, ready, stop, results), daemon=True)
        child.start()
        children.append(child)
    return children


def run(cfg: LoadConfig) -> LoadResult:
    """One job of `cfg.edges` simulated edges on a fresh broker and aggregator under `cfg.workdir`."""
    names, spec = _lay_out(cfg)
    procs = min(cfg.edges, max(cfg.procs or PROCESSES, math.ceil(cfg.edges / EDGES_PER_PROCESS)))
    topics = Topics()
    nodes = ["cloud0", *names] if cfg.secure else []
    broker_config = {"sys_interval": 1, **cfg.broker_config}
    # Secure: the watcher is a viewer of its own (statuses, round records), not the admin: flctl create
    # connects as the admin, and one username is one client id (use_username_as_clientid): they would take
    # each other's connection over.
    viewers = [WATCHER] if cfg.secure else []
    with LocalCluster(
        cfg.workdir, broker_config=broker_config, secure=cfg.secure, nodes=nodes, viewers=viewers
    ) as cluster:
        broker = cluster.start_broker()
        agg = cluster.start_node("cloud0", "aggregator", extra_args=cfg.agg_args)
        inbox: queue.Queue[tuple[Session, Inbound]] = queue.Queue()
        # Secure: the viewer reads the job's status and round records, the monitor $SYS (their ACLs).
        owned = _Owned(inbox)
        watch = owned.session = Session(cluster.settings(WATCHER), inbox=owned, topics=topics)
        watch_sys = watch
        if cfg.secure:
            monitor = _Owned(inbox)
            watch_sys = monitor.session = Session(cluster.settings(MONITOR), inbox=monitor, topics=topics)
        watch_sys.subscribe("$SYS/broker/#")
        for flt in (topics.status(Kind.JOB, JOB), topics.job_round_records(JOB)):
            watch.subscribe(flt)
        for session in {watch, watch_sys}:
            session.start()
            if not session.wait_connected(10):
                raise RuntimeError("the watcher cannot reach the broker")
        ctx = mp.get_context("spawn")
        ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        settings = [cluster.settings(n) for n in names] if cfg.secure else None
        children = _start_fleets(ctx, cfg, names, procs, settings, port=cluster.port, channels=(ready, stop, results))
        try:
            for _ in children:
                problem = ready.get(timeout=300)
                if problem:
                    raise RuntimeError(f"a fleet process failed to start: {problem}")
            print(f"{cfg.edges} simulated edges connected in {procs} process(es); creating the job", flush=True)
            cpu0 = {"aggregator": proc_cpu(agg.proc.pid), "broker": proc_cpu(broker.pid)}
            spy = _py_spy(agg.proc.pid, cfg.profile, gil=cfg.profile_gil)
            created = time.time()
            if flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) != 0:
                raise RuntimeError("flctl create failed")
            follow = _follow(inbox, created + cfg.timeout, topics)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(60)
            cpu = {
                "aggregator": proc_cpu(agg.proc.pid) - cpu0["aggregator"],
                "broker": proc_cpu(broker.pid) - cpu0["broker"],
            }
            rss = {"aggregator": peak_rss_mb(agg.proc.pid), "broker": peak_rss_mb(broker.pid)}
        finally:
            stop.set()
            edge_results, gen_cpu = _collect(children, results)
            for channel in (ready, results):
                channel.close()
                channel.join_thread()
            for session in {watch, watch_sys}:
                session.stop()
    cpu["generator"] = gen_cpu
    return analyse(cfg, follow, edge_results, created, cpu=cpu, rss=rss)


class _Owned:
    """A watcher session's inbox: its messages go to one queue with the session that must acknowledge them."""

    def __init__(self, sink: queue.Queue[tuple[Session, Inbound]]) -> None:
        self._sink = sink
        self.session: Session | None = None

    def put_nowait(self, item: Inbound, /) -> None:
        assert self.session is not None
        self._sink.put_nowait((self.session, item))


def _follow(inbox: queue.Queue[tuple[Session, Inbound]], deadline: float, topics: Topics) -> Followed:
    """The job's status and round records until it finishes, then $SYS until a cycle after that."""
    seen = Followed()
    status_topic = topics.status(Kind.JOB, JOB)
    while time.time() < deadline:
        if seen.finished_at is not None and (seen.sys_after or time.time() > seen.finished_at + 15):
            break
        try:
            session, msg = inbox.get(timeout=0.5)
        except queue.Empty:
            continue
        session.ack(msg)
        if msg.topic.startswith("$SYS/"):
            seen.sys[msg.topic] = msg.payload.decode(errors="replace")
            if msg.topic == DROPPED:
                seen.dropped.append(msg.payload.decode())
            elif msg.topic == UPTIME and seen.finished_at is not None and time.time() > seen.finished_at + 1.0:
                seen.sys_after = True  # a whole $SYS cycle ran after the job: its dropped counter covers it
        elif msg.topic == status_topic and msg.payload:
            seen.status = JobStatus.model_validate_json(msg.payload)
            if seen.init_source is None:  # the status keeps its newest events only: noted when seen
                seen.init_source = next((e.node for e in seen.status.events if e.reason == "InitialModel"), None)
            if seen.status.phase.finished and seen.finished_at is None:
                seen.finished_at = time.time()
                print(f"job {seen.status.phase.value}: {seen.status.message}", flush=True)
        elif msg.payload:
            record = RoundRecord.model_validate_json(msg.payload)
            seen.records[record.round] = record
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=100)
    parser.add_argument("--model", choices=sorted(LAYOUTS), default="seed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-ms", type=float, nargs=2, default=(0.0, 200.0), metavar=("LOW", "HIGH"))
    parser.add_argument(
        "--processes",
        "--procs",
        dest="procs",
        type=int,
        default=PROCESSES,
        help=f"generator processes the edges are dealt over (at least one per {EDGES_PER_PROCESS} edges)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--agg-arg", action="append", default=[], help="extra fl-cloud-aggregator argument")
    parser.add_argument("--secure", action="store_true", help="TLS, passwords and ACLs as the demo deploys them")
    parser.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of the aggregator during the job")
    parser.add_argument("--profile-gil", action="store_true", help="--profile samples only the thread holding the GIL")
    parser.add_argument("--broker", action="append", default=[], metavar="KEY=INT", help="BrokerConfig override")
    parser.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the simulated edges N nice levels below the aggregator and the broker (a diagnostic: real edges "
        "do not share their cores; the figures of record use 0)",
    )
    parser.add_argument(
        "--edge-client",
        choices=("lean", "session"),
        default="lean",
        help="the simulated edges' MQTT clients: one network thread per generator process (lean, default), or a "
        "broker.Session each with its own two threads, as edge services have on their own machines",
    )
    args = parser.parse_args(argv)
    configure_logging(node="loadgen", role="cli", level="WARNING")
    cfg = LoadConfig(
        edges=args.edges,
        model=args.model,
        rounds=args.rounds,
        train_ms=tuple(args.train_ms),
        procs=args.procs,
        seed=args.seed,
        workdir=args.workdir
        or REPO / ".bench" / "loadgen" / f"{args.edges}-{args.model}{'-tls' if args.secure else ''}",
        timeout=args.timeout,
        agg_args=args.agg_arg,
        broker_config={k: int(v) for k, v in (item.split("=", 1) for item in args.broker)},
        profile=args.profile,
        profile_gil=args.profile_gil,
        secure=args.secure,
        generator_nice=args.generator_nice,
        edge_client=args.edge_client,
    )
    result = run(cfg)
    print(report(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
