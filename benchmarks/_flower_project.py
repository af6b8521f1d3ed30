"""This project's side of benchmarks/flower.py: the seed job on a local deployment of real processes.

Before the clock starts: Mosquitto (plain MQTT on loopback, no TLS, as Flower's side runs ``--insecure``),
the aggregator on cloud0 and the edge services on edge1 and edge2, each online (its retained node status
says so). Timed: ``flctl create -f`` of the example's job (a subprocess, as a user types it) until the
job's status says Succeeded, i.e. every edge has saved the final model. The job's round records tell
where the time went.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from benchmarks._flower_common import AGGREGATOR, EDGES, EXAMPLE, Run, edge_data, score
from flctl.cluster import LocalCluster
from schemas import JobStatus, NodeState, NodeStatus, Phase

JOB = "surface-defect-detection"
SPEC = EXAMPLE / "surface-defect-detection.yaml"
_SCRIPTS = {
    "edge": ("training_worker", ("train.py", "interface.py", "evaluate.py")),
    "aggregator": ("aggregation_worker", ("aggregate.py",)),
}


def _lay_out(root: Path, workdir: Path) -> None:
    """Each node's /code (the example's scripts) and each edge's /data (its own share only)."""
    for node, role in [(AGGREGATOR, "aggregator"), *((edge, "edge") for edge in EDGES)]:
        folder, scripts = _SCRIPTS[role]
        code = root / node / "code"
        code.mkdir(parents=True, exist_ok=True)
        for script in scripts:
            shutil.copy2(EXAMPLE / folder / script, code / script)
        if role == "edge":
            shutil.copytree(edge_data(workdir, node), root / node / "data")


def _wait_online(cluster: LocalCluster, nodes: Sequence[str], timeout: float) -> None:
    """Until every node's retained status says online (a service that dies first ends the wait)."""
    pending = set(nodes)
    deadline = time.monotonic() + timeout
    with cluster.watch("bench-nodes", f"{cluster.prefix}/nodes/+/status") as inbox:
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"node services not online within {timeout:.0f} s: {sorted(pending)}")
            for node in pending:
                if not cluster.nodes[node].alive():
                    raise RuntimeError(f"node service {node} exited:\n{cluster.nodes[node].log_tail()}")
            try:
                msg = inbox.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if msg.payload:
                status = NodeStatus.model_validate_json(msg.payload)
                if status.state is NodeState.ONLINE:
                    pending.discard(status.node)


def _wait_warm(root: Path, edges: Sequence[str], timeout: float) -> None:
    """Until every edge's service log says its warm worker is ready: a node up before its job has one (a job
    that comes while it still imports starts cold, and the run would measure a cold start)."""
    waiting = set(edges)
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm workers not ready within {timeout:.0f} s: {sorted(waiting)}")
        for edge in list(waiting):
            log = root / edge / "service.log"
            if log.exists() and "warm worker ready" in log.read_text(errors="replace"):
                waiting.discard(edge)
        if waiting:
            time.sleep(0.2)  # no event to wait on across processes but the log line


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() if a is not None and b is not None else None


def phases(status: JobStatus, submitted: float, succeeded: float) -> dict[str, float]:
    """Start-up (submit to round 1 open: scripts started, TensorFlow imported, model built, init uploaded),
    each round (open to close), and finish (last close to Succeeded: final model saved on every edge)."""
    out: dict[str, float] = {}
    rounds = sorted(status.rounds, key=lambda r: r.round)
    if not rounds:
        return out
    first_open = rounds[0].opened_at
    if first_open is not None:
        out["startup_s"] = first_open.timestamp() - submitted
    for record in rounds:
        if record.duration_seconds is not None:
            out[f"round{record.round}_s"] = record.duration_seconds
    out["finish_s"] = succeeded - rounds[-1].closed_at.timestamp()
    return out


def run_project(workdir: Path, root: Path, test_labels: Path, *, edge_args: Sequence[str], timeout: float) -> Run:
    """One timed run on a fresh deployment under `root`."""
    shutil.rmtree(root, ignore_errors=True)
    _lay_out(root, workdir)
    flctl = Path(sys.executable).parent / "flctl"
    with LocalCluster(root) as cluster:
        cluster.start_broker()
        cluster.start_node(AGGREGATOR, "aggregator")
        for edge in EDGES:
            cluster.start_node(edge, "edge", extra_args=list(edge_args))
        _wait_online(cluster, [AGGREGATOR, *EDGES], timeout=60)
        if "--warm-worker" in edge_args:
            _wait_warm(root, EDGES, timeout=60)
        submitted = time.time()
        t0 = time.perf_counter()
        created = subprocess.run(
            [str(flctl), *cluster.flctl_args(), "create", "-f", str(SPEC)], capture_output=True, text=True, check=False
        )
        if created.returncode != 0:
            raise RuntimeError(f"flctl create failed: {created.stderr.strip()}")
        status = cluster.wait_for_job(JOB, timeout=timeout)
        wall = time.perf_counter() - t0
        succeeded = time.time()
    if status.phase is not Phase.SUCCEEDED:
        raise RuntimeError(f"the job ended {status.phase.value}: {status.message}")
    digests = {w.node: w.model_digest for w in status.workers if w.node in EDGES}
    if len(set(digests.values())) != 1 or None in digests.values():
        raise RuntimeError(f"the edges do not hold the same final model: {digests}")
    scores = score(root / "edge1" / "model", test_labels)
    return Run("project", wall, scores["accuracy"], scores["balanced_accuracy"], phases(status, submitted, succeeded))
