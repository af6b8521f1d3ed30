"""Score a final model on a label file with the example's Estimator: ``python _flower_score.py MODEL LABELS``.

MODEL is a checkpoint folder (what our edges save, ``model.ckpt.*``) or an ``.npz`` of the weight arrays in
``get_weights()`` order (what the Flower ServerApp of benchmarks/flower.py writes). Prints one JSON line.
Run as its own process by benchmarks/_flower_common.score, so TensorFlow stays out of the benchmark's process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from edge_trainer import load_dataset

INTERFACE = (
    Path(__file__).resolve().parents[1] / "examples" / "surface_defect_detection" / "training_worker" / "interface.py"
)


class _Data:
    def __init__(self, x: object, y: object) -> None:
        self.x, self.y = x, y


def main(argv: list[str]) -> int:
    model, labels = Path(argv[0]), Path(argv[1])
    spec = importlib.util.spec_from_file_location("sdd_interface", INTERFACE)
    assert spec is not None and spec.loader is not None
    interface = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(interface)
    estimator = interface.Estimator()
    if model.suffix == ".npz":
        with np.load(model) as arrays:
            estimator.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
    else:
        estimator.load(model)
    x, y = load_dataset(labels)
    scores = estimator.evaluate(_Data(x, y))
    print(
        json.dumps({"accuracy": scores["accuracy"], "balanced_accuracy": scores["balanced_accuracy"], "n": scores["n"]})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
