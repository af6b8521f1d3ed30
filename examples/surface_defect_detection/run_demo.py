"""`make demo`: Sedna's surface-defect-detection federated learning job, end to end, on this machine.

What it does, in order:
1. wipes ``.demo/`` and writes a synthetic magnetic-tile dataset in the real dataset's layout;
2. gives each edge only its own share (edge1: the images of 1.txt, edge2: those of 2.txt) under
   ``.demo/<edge>/data``, and splits test.txt's images between them as each site's held-out tiles
   (``/data/test.txt`` on each edge, the job's ``TEST_DATASET_URL``); the whole test set is also kept in
   ``.demo/testset`` to score the final model centrally, which only a demo can do;
3. copies the example's scripts to each node's ``/code`` (``.demo/<node>/code``);
4. provisions the deployment like ``flctl broker init`` (``.demo/secrets``: CA, TLS certificates, passwords,
   ACL, one node.yaml per node), starts Mosquitto with the generated config (TLS, no anonymous access,
   per-node ACLs), the cloud aggregator on node cloud0 and edge trainers on edge1 and edge2, each with
   ``--config`` its node.yaml, the edges with ``--warm-worker`` (TensorFlow imported before the job);
5. publishes the page's Dataset, Model and FederatedLearningJob with ``flctl create`` as the admin, the
   job with one parameter added per training worker, ``TEST_DATASET_URL: /data/test.txt``;
6. follows the job's status topic round by round until it is Succeeded or Failed;
7. prints ``flctl get fl`` and ``flctl top fl`` (per round: the training and evaluation metrics), writes
   ``flctl report fl``'s page (``.demo/report.html``: the plots, self-contained) and its plots as PNGs
   (``.demo/plots/``), says where each edge wrote its model, and the final model's score on the whole
   held-out set next to the federated evaluation of the same model on the same images (summed over the
   edges' shares).

With ``--sites`` (``make demo-sites``) the same job runs across two factory sites: each edge connects to
its own site's Mosquitto (provisioned like ``flctl site add``: its own CA, passwords and ACL, a bridge over
TLS to the cloud broker as the site's bridge identity), and only the bridges talk to the cloud broker,
where the aggregator runs. The outcome printed is the same.

Exit code 0 when the job Succeeded and both edges hold the model, non-zero with the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flctl import FlctlError
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from flctl.synth import copy_split, synthesize
from runtime import configure_logging
from schemas import FederatedLearningJob, JobStatus, Phase, WorkerState, load_yaml_documents

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
JOB = "surface-defect-detection"
EDGES = {"edge1": "1.txt", "edge2": "2.txt"}
AGGREGATOR = "cloud0"
# An admin identity for the user to follow the job with (one connection per identity: the broker forces
# the client id to the username).
VIEWER = "viewer"
# --sites: one factory site per edge, each with its own broker bridged to the cloud broker.
SITES = {"site-a": ["edge1"], "site-b": ["edge2"]}


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


WARM_WAIT = 60.0


def wait_for_warm_workers(workdir: Path) -> None:
    """Wait (bounded) until each edge says its warm worker is ready, as a node started well before its
    first job would be; a worker still importing when the job comes would leave round 1 to a cold start."""
    deadline = time.monotonic() + WARM_WAIT
    waiting = set(EDGES)
    while waiting and time.monotonic() < deadline:
        waiting = {e for e in waiting if "warm worker ready" not in _read(workdir / e / "service.log")}
        if waiting:
            time.sleep(0.2)  # no event to wait on across processes but the log line
    say(f"warm workers ready on {', '.join(EDGES)}" if not waiting else f"warm workers not ready: {sorted(waiting)}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# role -> (the example's folder, the scripts a node of that role runs from its /code).
SCRIPTS = {
    "edge": ("training_worker", ("train.py", "interface.py", "evaluate.py")),
    "aggregator": ("aggregation_worker", ("aggregate.py",)),
}


def install_scripts(root: Path, role: str) -> Path:
    """Copy the example's scripts for a node of `role` (edge, aggregator) to its ``<root>/code``; return it.

    benchmarks/async_wall.py lays out its nodes with this too."""
    folder, scripts = SCRIPTS[role]
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    for script in scripts:
        shutil.copy2(HERE / folder / script, code / script)
    return code


def prepare(workdir: Path, scale: float, seed: int) -> Path:
    """Lay out every node's root folder; return the held-out test label file."""
    if workdir.exists():
        say(f"removing the previous run's state in {workdir}")
        shutil.rmtree(workdir)
    source = workdir / "dataset-source"
    report = synthesize(source, scale=scale, seed=seed)
    say(f"synthetic magnetic-tile dataset written to {source}: {report}")
    for edge, labels in EDGES.items():
        count = copy_split(source, source / labels, workdir / edge / "data")
        say(f"{edge}: {count} labelled images in {workdir / edge / 'data'} ({labels}); they never leave {edge}")
        install_scripts(workdir / edge, "edge")
    copy_split(source, source / "test.txt", workdir / "testset")
    # Each site keeps its own held-out tiles: test.txt's lines alternate between the edges. The union of the
    # shares is test.txt, so the federated evaluation (counts summed over the edges) scores the final model
    # on exactly the images evaluate.py scores it on centrally.
    lines = [line for line in (source / "test.txt").read_text().splitlines() if line.strip()]
    for i, edge in enumerate(EDGES):
        share = workdir / "test-shares" / edge / "test.txt"
        share.parent.mkdir(parents=True)
        share.write_text("".join(f"{line}\n" for line in lines[i :: len(EDGES)]))
        count = copy_split(source, share, workdir / edge / "data")
        say(f"{edge}: {count} held-out images in {workdir / edge / 'data' / 'test.txt'} (its share of test.txt)")
    install_scripts(workdir / AGGREGATOR, "aggregator")
    return workdir / "testset" / "test.txt"


class Progress:
    """Prints what changed in the job's status: phase, closed rounds, worker states."""

    def __init__(self) -> None:
        self.phase: Phase | None = None
        self.rounds = 0
        self.states: dict[str, str] = {}

    def __call__(self, status: JobStatus) -> None:
        if status.phase != self.phase:
            self.phase = status.phase
            say(f"job {status.name}: {status.phase.value}" + (f" ({status.message})" if status.message else ""))
        for record in status.rounds[self.rounds :]:
            parts = ", ".join(record.participants)
            say(f"round {record.round}/{status.exit_round} aggregated: {parts} ({record.total_samples} samples)")
        self.rounds = len(status.rounds)
        for worker in status.workers:
            state = worker.state.value
            if self.states.get(worker.node) != state:
                self.states[worker.node] = state
                detail = f" round {worker.round}" if worker.round else ""
                say(f"  {worker.node}: {state}{detail}" + (f" - {worker.message}" if worker.message else ""))
                if worker.state is WorkerState.WAITING and worker.metrics:
                    # What the edge's local training reported for this round (Keras history, last epoch).
                    scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(worker.metrics.items()))
                    say(f"  {worker.node}: round {worker.round} local training: {scores}")


def job_with_held_out_data(spec: Path, out: Path, aggregation: dict[str, str] | None = None) -> Path:
    """The page's documents, the job's training workers given ``TEST_DATASET_URL: /data/test.txt`` (Sedna's
    knob; resolved under each edge's root, so each edge reads its own share), and its aggregation worker
    the `aggregation` parameters (``--aggregation-parameter``; none for ``make demo``)."""
    documents = load_yaml_documents(spec.read_text(), str(spec))
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == FederatedLearningJob.__name__:
            for worker in document["spec"]["trainingWorkers"]:
                parameters = worker["workerSpec"].setdefault("parameters", [])
                parameters.append({"key": "TEST_DATASET_URL", "value": "/data/test.txt"})
            agg = document["spec"]["aggregationWorker"]["workerSpec"].setdefault("parameters", [])
            agg.extend({"key": key, "value": value} for key, value in (aggregation or {}).items())
    out.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return out


def evaluate(workdir: Path, test_labels: Path) -> dict[str, float] | None:
    """Score edge1's saved model on the held-out images with the example's evaluate.py."""
    cmd = [
        sys.executable,
        str(workdir / "edge1" / "code" / "evaluate.py"),
        "--checkpoint",
        str(workdir / "edge1" / "model"),
        "--labels",
        str(test_labels),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        say(f"evaluation failed: {result.stderr.strip()[-800:]}")
        return None
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            scores: dict[str, float] = json.loads(line)
            return scores
    return None


def start_cluster(cluster: LocalCluster, workdir: Path, *, sites: bool = False) -> None:
    """Provision (as `flctl broker init` does), start the broker and every node service with its node.yaml."""
    nodes = [AGGREGATOR] if sites else [AGGREGATOR, *EDGES]
    cluster.start_broker()
    secrets = workdir / "secrets"
    assert cluster.provisioned is not None
    say(
        f"provisioned like `flctl broker init --nodes {','.join(nodes)} --viewer {VIEWER} --out {secrets}`: "
        "a CA, TLS certificates, a password and an ACL entry per identity (files 0600, never printed)"
    )
    say(
        f"mosquitto: TLS on 127.0.0.1:{cluster.port}, anonymous refused, per-node ACLs "
        f"(config: {cluster.provisioned.conf_path})"
    )
    for site, done in cluster.site_provisioned.items():
        say(
            f"site {site}: like `flctl site add {site} --nodes {','.join(done.edges)} --cloud-dir {secrets} "
            f"--out {done.out}`: its own mosquitto on TLS 127.0.0.1:{done.tls_port} for its edges, bridged over "
            f"TLS to the cloud broker as {done.bridge_user} (config: {done.conf_path})"
        )
    cluster.start_node(AGGREGATOR, "aggregator")
    for edge in EDGES:
        # A warm worker per edge: the training script starts with TensorFlow already imported.
        cluster.start_node(edge, "edge", extra_args=["--warm-worker"])
    configs = f"{secrets}/nodes/<node>/node.yaml" + (
        f", {workdir}/sites/<site>/nodes/<edge>/node.yaml" if sites else ""
    )
    say(
        f"services started with --config {configs}: {AGGREGATOR} (aggregator), "
        f"{', '.join(EDGES)} (edge trainers, --warm-worker); logs in {workdir}/<node>/service.log"
    )
    wait_for_warm_workers(workdir)
    say(
        f"watch it yourself (read-only): flctl --config {secrets}/viewer/{VIEWER}.yaml --host 127.0.0.1 --port {cluster.port} "
        f"get fl {JOB} -w"
    )


def shown(path: Path) -> Path:
    """`path` relative to the current folder when it is under it, else as it is."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def report_models(status: JobStatus, workdir: Path) -> bool:
    """Say where every node wrote its final model; False when an edge wrote none."""
    missing = []
    for edge in EDGES:
        worker = status.worker(edge)
        # The worker reports the path the way the spec says it (/model/...); on this machine it is
        # under the edge's root folder.
        path = workdir / edge / "model"
        # The url holds the latest version's files; versions/ and latest are the versions' layout.
        files = sorted(p.name for p in path.iterdir() if p.name not in ("versions", "latest")) if path.is_dir() else []
        if not files:
            missing.append(edge)
        digest = worker.model_digest[:16] if worker and worker.model_digest else "?"
        version = worker.model_path if worker and worker.model_path else "?"  # the version this run wrote
        say(f"{edge}: final model in {path} ({', '.join(files)}; this run: {version}; weights sha256 {digest}...)")
    if status.model_path:
        say(f"{AGGREGATOR}: final global weights in {status.model_path}")
    if missing:
        say(f"FAILED: no model written on {', '.join(missing)}")
    return not missing


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, str]]:
    """The options, and the ``--aggregation-parameter`` pairs as a mapping."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / ".demo")
    parser.add_argument("--port", type=int, default=None, help="the broker's TLS port (default: a free one)")
    parser.add_argument("--scale", type=float, default=1.0, help="dataset size relative to the real one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the job may take")
    parser.add_argument(
        "--sites",
        action="store_true",
        help="two factory sites: edge1 behind site-a's broker, edge2 behind site-b's, each bridged to the cloud broker",
    )
    parser.add_argument(
        "--aggregation-parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add a parameter to the job's aggregation worker, e.g. secure_aggregation=true (repeatable)",
    )
    args = parser.parse_args(argv)
    aggregation = {}
    for item in args.aggregation_parameter:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--aggregation-parameter {item!r}: expected KEY=VALUE")
        aggregation[key] = value
    return args, aggregation


def main(argv: list[str] | None = None) -> int:
    args, aggregation = parse_args(argv)
    workdir: Path = args.workdir.resolve()
    # The demo's own MQTT sessions (flctl, the status watcher) log only problems; the services log to
    # their own files.
    configure_logging(node="demo", role="cli", level="WARNING")
    test_labels = prepare(workdir, args.scale, args.seed)
    layout = {"nodes": [AGGREGATOR], "sites": SITES} if args.sites else {"nodes": [AGGREGATOR, *EDGES]}
    with LocalCluster(workdir, port=args.port, secure=True, viewers=[VIEWER], **layout) as cluster:
        start_cluster(cluster, workdir, sites=args.sites)
        spec = job_with_held_out_data(
            HERE / "surface-defect-detection.yaml", workdir / "surface-defect-detection.yaml", aggregation
        )
        say(
            f"flctl create -f {spec} (examples/surface_defect_detection/surface-defect-detection.yaml with "
            "TEST_DATASET_URL: /data/test.txt added to each training worker)"
        )
        if flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) != 0:
            say("flctl create failed")
            return 1
        try:
            status = cluster.wait_for_job(JOB, timeout=args.timeout, on_change=Progress())
        except FlctlError as exc:
            say(f"FAILED: {exc}")
            return 1

        print()
        flctl_cli.main([*cluster.flctl_args(), "get", "fl"])
        print()
        say(
            "per round (TRAIN: the edges' local fit, sample-weighted; EVAL: the round's global model scored on "
            "the edges' held-out tiles):"
        )
        flctl_cli.main([*cluster.flctl_args(), "top", "fl", JOB])
        print()
        # Relative to where the demo runs (the repo, for make demo): the paths to type to open the report.
        page, plots = shown(workdir / "report.html"), shown(workdir / "plots")
        say(f"flctl report fl {JOB} -o {page} --png-dir {plots}")
        reported = flctl_cli.main(
            [*cluster.flctl_args(), "report", "fl", JOB, "-o", str(page), "--png-dir", str(plots)]
        )
        if reported == 0:
            say(f"report: {page} (open it in a browser; no network needed)")
        print()
        if status.phase is not Phase.SUCCEEDED:
            say(f"job ended {status.phase.value}: {status.message}")
            flctl_cli.main([*cluster.flctl_args(), "describe", "fl", JOB])
            return 1

        if reported != 0:
            say("FAILED: flctl report of a Succeeded job")
            return 1
        if not report_models(status, workdir):
            return 1

    print()
    scores = evaluate(workdir, test_labels)
    final = status.rounds[-1].eval if status.rounds else None
    if scores:
        say(
            "held-out test set: accuracy {accuracy:.3f}, balanced accuracy {balanced_accuracy:.3f} "
            "(always 'no defect' would score {majority_baseline:.3f}; n={n})".format(**scores)
        )
    if scores and final is not None:
        gap = abs(final.accuracy - float(scores["accuracy"])) * 100
        say(
            f"federated evaluation of the final model (round {final.round}, summed over the edges' shares of the "
            f"same images): accuracy {final.accuracy:.3f}, balanced accuracy {final.balanced_accuracy:.3f} "
            f"(n={final.num_samples}); {gap:.1f} points from the held-out score"
            + ("" if gap <= 1.0 else ": MORE THAN A POINT APART")
        )
    say("job Succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
