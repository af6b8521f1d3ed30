"""A job of the fault tests' numpy training script over a real local deployment (broker, aggregator and
edge services as processes), for benchmarks that measure the protocol rather than the training: the
script's one gradient step costs milliseconds whatever the model's size (``features`` x ``hidden``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from flctl import FlctlError
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase, RoundRecord
from tests.helpers.nodes import lay_out_nodes

JOB = "bench"


def _params(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in values.items()]


def job_documents(
    edges: list[str], *, rounds: int, features: int, hidden: int, agg_params: dict[str, str]
) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": f"{edge}-data"},
            "spec": {"url": "/data/train.txt", "format": "txt", "nodeName": edge},
        }
        for edge in edges
    ]
    docs.append(
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "Model",
            "metadata": {"name": "bench-model"},
            "spec": {"url": "/model", "format": "ckpt"},
        }
    )
    script = {"scriptDir": "/code", "frameworkType": "tensorflow"}
    agg = {"exit_round": str(rounds), "participants_count": str(len(edges)), **agg_params}
    workers = {"features": str(features), "hidden": str(hidden)}
    docs.append(
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "FederatedLearningJob",
            "metadata": {"name": JOB},
            "spec": {
                "aggregationWorker": {
                    "model": {"name": "bench-model"},
                    "nodeName": "cloud0",
                    "workerSpec": {**script, "scriptBootFile": "aggregate.py", "parameters": _params(agg)},
                },
                "trainingWorkers": [
                    {
                        "nodeName": edge,
                        "dataset": {"name": f"{edge}-data"},
                        "workerSpec": {**script, "scriptBootFile": "train_numpy.py", "parameters": _params(workers)},
                    }
                    for edge in edges
                ],
            },
        }
    )
    return docs


def run_numpy_job(
    workdir: Path,
    edges: int,
    *,
    rounds: int,
    features: int,
    hidden: int,
    agg_params: dict[str, str],
    timeout: float = 600,
) -> list[RoundRecord]:
    """Run one job to its end on a fresh deployment under `workdir`; its round records (FlctlError unless Succeeded)."""
    names = [f"edge{i}" for i in range(1, edges + 1)]
    lay_out_nodes(workdir, {edge: [f"sample-{edge}-{i},{i % 2}" for i in range(32)] for edge in names})
    spec = workdir / "job.yaml"
    spec.write_text(
        yaml.safe_dump_all(job_documents(names, rounds=rounds, features=features, hidden=hidden, agg_params=agg_params))
    )
    with LocalCluster(workdir) as cluster:
        cluster.start_broker()
        cluster.start_node("cloud0", "aggregator")
        for edge in names:
            cluster.start_node(edge, "edge")
        if flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) != 0:
            raise FlctlError(f"flctl create -f {spec} failed")
        status = cluster.wait_for_job(JOB, timeout=timeout)
    if status.phase is not Phase.SUCCEEDED:
        raise FlctlError(f"the benchmark job ended {status.phase.value}: {status.message}")
    return list(status.rounds)
