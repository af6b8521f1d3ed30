"""Two jobs, one Model, same edges, same time (issues 8 and 9): both succeed and neither model is lost.

A real broker, a real aggregator and two real edges run two jobs that name the same Model at once,
with the numpy training script (no TensorFlow: this is about the model writers, not the model). Each
job's model is its own version under ``<url>/versions/``; the url holds whichever was saved last;
every model on disk is the one its job's status reports (its digest), on the edges and on the cloud.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase, Topics
from tests.faults.conftest import SERVICE_FLAGS
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.status import JobWatcher, wait_no_processes_under

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

EDGES = ("edge1", "edge2")
JOBS = ("job-a", "job-b")
MODEL = "shared-model"


def spec() -> str:
    return job_documents(
        JOBS, EDGES, model=MODEL, edge_parameters={"features": 8}, aggregator_parameters={"exit_round": 2}
    )


def test_two_jobs_on_one_model_both_succeed_and_keep_their_models(tmp_path: Path) -> None:
    lay_out_nodes(tmp_path, {e: [f"sample-{e}-{i},{i % 2}" for i in range(12)] for e in EDGES})
    (tmp_path / "jobs.yaml").write_text(spec())
    topics = Topics()

    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        watchers = {job: JobWatcher(cluster.settings(f"watch-{job}"), topics, job).__enter__() for job in JOBS}
        try:
            cluster.start_node("cloud0", "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
            for e in EDGES:
                cluster.start_node(e, "edge", extra_args=SERVICE_FLAGS["edge"])
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "jobs.yaml")]) == 0
            statuses = {job: w.wait_finished(150) for job, w in watchers.items()}
        finally:
            for w in watchers.values():
                w.__exit__(None, None, None)
    for job, status in statuses.items():
        assert status.phase is Phase.SUCCEEDED, f"{job}: {watchers[job].describe()}"

    for e in EDGES:
        model = tmp_path / e / "model"
        versions = {}
        for job, status in statuses.items():
            [worker] = [w for w in status.workers if w.node == e and w.role == "training"]
            assert worker.model_path is not None and worker.model_digest and status.uid
            folder = tmp_path / e / worker.model_path.lstrip("/")
            meta = json.loads((folder.parent / "model.json").read_text())
            assert (meta["job"], meta["digest"]) == (job, worker.model_digest), f"{e}: {job}'s model was clobbered"
            # The numpy estimator saves itself: ``save(<folder>/model.ckpt)`` writes ``model.ckpt.npz``.
            versions[job] = f"{job}-{status.uid[:8]}-r2"
            assert worker.model_path == f"/model/versions/{versions[job]}/model.ckpt.npz", e
        latest = json.loads((model / "model.json").read_text())
        assert latest["job"] in JOBS and (model / "latest").resolve() == model / "versions" / latest["version"]
        assert sorted(p.name for p in (model / "versions").iterdir()) == sorted(versions.values())
    cloud = tmp_path / "cloud0" / "model"
    for job, status in statuses.items():
        assert status.model_path is not None
        written = json.loads(Path(status.model_path).with_suffix(".json").read_text())
        assert written["job"] == job and Path(status.model_path).parent.parent == cloud / "versions"
    assert {json.loads((cloud / f"{MODEL}.json").read_text())["job"]} <= set(JOBS)
    assert len(list((cloud / "versions").glob(f"*/{MODEL}.npz"))) == 2
    wait_no_processes_under(tmp_path, timeout=20.0)
