"""FedProx end to end: a real Mosquitto, the real `fl-cloud-aggregator` and two `fl-edge-trainer` processes
running the fault tests' numpy training script with the workerSpec parameter ``mu``.

The script takes several full-batch gradient steps per round, each with FedProx's ``mu * (w - w_global)``
(the worker API hands it the round's global weights). The edges' final model must equal a recomputation
here, from the same label files: the same proximal steps per edge, FedAvg across them, three rounds. The
recomputation without the term ends elsewhere, so a worker that ignored ``mu`` would fail the test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase, Topics
from tests.helpers.nodes import SCRIPTS, job_documents, lay_out_nodes
from tests.helpers.status import JobWatcher

pytestmark = pytest.mark.timeout(180)

JOB = "fedprox-job"
EDGES = ("edge1", "edge2")
SAMPLES = {"edge1": 12, "edge2": 20}
EXIT_ROUND = 3
FEATURES, HIDDEN, LOCAL_STEPS, RATE, MU = 4, 3, 6, 0.1, 0.8
WAIT = 90.0
F32 = npt.NDArray[np.float32]


def job_yaml() -> str:
    return job_documents(
        [JOB],
        EDGES,
        model="prox-model",
        edge_parameters={
            "features": FEATURES,
            "hidden": HIDDEN,
            "local_steps": LOCAL_STEPS,
            "learning_rate": RATE,
            "mu": MU,
        },
        aggregator_parameters={"exit_round": EXIT_ROUND, "participants_count": 2},
    )


def common() -> ModuleType:
    """The scripts' own sample loader (scripts/ is not a package: loaded by path, as a node's /code is)."""
    spec = importlib.util.spec_from_file_location("fedprox_scripts_common", SCRIPTS / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recompute(data: dict[str, Any], mu: float) -> list[F32]:
    """The job by hand: train_numpy.py's initial weights, LOCAL_STEPS proximal gradient steps per edge and
    round from the global model, then Sedna's FedAvg (sample-weighted, in float64, back to float32)."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((FEATURES, HIDDEN)) * 0.1).astype(np.float32)
    b = np.zeros(HIDDEN, dtype=np.float32)
    for _ in range(EXIT_ROUND):
        updates = []
        for edge in EDGES:
            x, y = data[edge].x, data[edge].y
            target = np.repeat(y.astype(np.float32)[:, None], HIDDEN, axis=1)
            lw, lb = w.copy(), b.copy()
            for _ in range(LOCAL_STEPS):
                error = x @ lw + lb - target
                grad_w = x.T @ error / len(x) + mu * (lw - w)
                grad_b = error.mean(axis=0) + mu * (lb - b)
                lw = (lw - RATE * grad_w).astype(np.float32)
                lb = (lb - RATE * grad_b).astype(np.float32)
            updates.append((len(y), lw, lb))
        total = sum(n for n, _, _ in updates)
        w = (sum(n * u.astype(np.float64) for n, u, _ in updates) / total).astype(np.float32)
        b = (sum(n * u.astype(np.float64) for n, _, u in updates) / total).astype(np.float32)
    return [w, b]


def test_a_fedprox_job_ends_at_the_recomputed_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay_out_nodes(tmp_path, {edge: [f"prox-{edge}-{i},{i % 3 == 0:d}" for i in range(SAMPLES[edge])] for edge in EDGES})
    (tmp_path / "job.yaml").write_text(job_yaml())

    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        with JobWatcher(cluster.settings("watch-fedprox"), Topics(), JOB) as watcher:
            cluster.start_node("cloud0", "aggregator")
            for edge in EDGES:
                cluster.start_node(edge, "edge")
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
            status = watcher.wait_finished(WAIT)
        capsys.readouterr()
    assert status.phase is Phase.SUCCEEDED, watcher.describe()
    assert [r.round for r in status.rounds] == list(range(1, EXIT_ROUND + 1))

    loader = common()
    data = {e: loader.load_samples(str(tmp_path / e / "data" / "train.txt"), FEATURES) for e in EDGES}
    expected = recompute(data, MU)
    without = recompute(data, 0.0)
    assert not np.allclose(expected[0], without[0], rtol=1e-3, atol=1e-4), "mu changes nothing here: pick others"
    for edge in EDGES:
        [worker] = [w for w in status.workers if w.node == edge and w.role == "training"]
        assert worker.model_path is not None and worker.model_path.startswith("/model/")
        saved = np.load(tmp_path / edge / worker.model_path.lstrip("/"))
        for got, want in zip((saved["w"], saved["b"]), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=edge)
    assert "FedProx: mu=0.8" in (tmp_path / "edge1" / "logs" / JOB / "worker.log").read_text()
