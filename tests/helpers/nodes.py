"""Node folders for jobs run with the fault tests' tiny scripts (tests/faults/scripts/).

`lay_out_nodes` gives each edge its label file (``<edge>/data/train.txt``) and its ``/code`` (the training
script and ``_common.py``), and the aggregation node ``cloud0`` the example-style ``aggregate.py``: what a
`flctl.cluster.LocalCluster` under the same root needs before its services start.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "faults" / "scripts"


def lay_out_nodes(root: Path, labels: Mapping[str, Sequence[str]], *, script: str = "train_numpy.py") -> None:
    """For each edge of `labels`, its label lines (``sample-...,<0|1>``) and `script`; then cloud0's script."""
    for edge, lines in labels.items():
        (root / edge / "data").mkdir(parents=True)
        (root / edge / "data" / "train.txt").write_text("".join(f"{line}\n" for line in lines))
        (root / edge / "code").mkdir()
        for name in (script, "_common.py"):
            shutil.copy2(SCRIPTS / name, root / edge / "code" / name)
    (root / "cloud0" / "code").mkdir(parents=True)
    shutil.copy2(SCRIPTS / "aggregate.py", root / "cloud0" / "code" / "aggregate.py")


def job_documents(
    jobs: Sequence[str],
    edges: Sequence[str],
    *,
    model: str,
    script: str = "train_numpy.py",
    edge_parameters: Mapping[str, object] | None = None,
    aggregator_parameters: Mapping[str, object] | None = None,
) -> str:
    """One YAML stream for the nodes `lay_out_nodes` made: a Dataset per edge (``<edge>-data``, its
    /data/train.txt), the Model (`model`, /model, ckpt) and a FederatedLearningJob per name in `jobs`, its
    aggregation worker on cloud0 (aggregate.py) and a training worker per edge (`script`); each worker's
    parameters as given (values written as strings, as Sedna's are)."""

    def worker(boot: str, parameters: Mapping[str, object] | None) -> str:
        pairs = ", ".join(f"{{key: {k}, value: '{v}'}}" for k, v in (parameters or {}).items())
        return f"{{scriptDir: /code, scriptBootFile: {boot}, frameworkType: tensorflow, parameters: [{pairs}]}}"

    docs = [
        f"apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {{name: {e}-data}}\n"
        f"spec: {{url: /data/train.txt, format: txt, nodeName: {e}}}\n"
        for e in edges
    ]
    docs.append(
        f"apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {{name: {model}}}\nspec: {{url: /model, format: ckpt}}\n"
    )
    trainers = "".join(
        f"    - nodeName: {e}\n      dataset: {{name: {e}-data}}\n      workerSpec: {worker(script, edge_parameters)}\n"
        for e in edges
    )
    for job in jobs:
        docs.append(
            f"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata: {{name: {job}}}\nspec:\n"
            f"  aggregationWorker:\n    model: {{name: {model}}}\n    nodeName: cloud0\n"
            f"    workerSpec: {worker('aggregate.py', aggregator_parameters)}\n"
            f"  trainingWorkers:\n{trainers}"
        )
    return "---\n".join(docs)


def edge_node_root(parent: Path, node: str = "edge1", *, script: str = "print('hi')\n") -> Path:
    """An edge's node root under `parent` for the engine's tests: a one-line label file (data/1.txt) and a
    training script (code/train.py) that those tests never run."""
    root = parent / node
    (root / "data").mkdir(parents=True)
    (root / "data" / "1.txt").write_text("a.jpg,0\n")
    (root / "code").mkdir()
    (root / "code" / "train.py").write_text(script)
    return root
