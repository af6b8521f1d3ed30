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
