"""Evaluate a trained surface defect detection model on a label file.

    python evaluate.py --checkpoint /model --labels /data/test.txt

``--checkpoint`` is a model directory holding ``model.ckpt.*`` or a checkpoint prefix, as written
by ``tf.train.Checkpoint(model=estimator.model).write("<model dir>/model.ckpt")``. Prints one JSON
line (for scripts) and then one readable line. Accuracy alone is misleading on this ~70/30 data:
a model that never reports a defect scores ~0.70, so the majority-class baseline and the balanced
accuracy (mean of the per-class recalls; 0.5 = chance) are printed next to it.

Exit status: 0 on success, 2 when the labels, images or checkpoint are unusable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from interface import Estimator

from edge_trainer import DatasetError, load_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model directory or checkpoint prefix")
    parser.add_argument("--labels", required=True, help="label file, e.g. test.txt")
    parser.add_argument(
        "--image-root", default=None, help="folder the label file's paths are relative to (default: its folder)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


class _Data:
    """The ``.x``/``.y`` pair Estimator.evaluate expects (what TxtDataParse provides)."""

    def __init__(self, x: object, y: object) -> None:
        self.x, self.y = x, y


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        x, y = load_dataset(args.labels, image_root=args.image_root)
        estimator = Estimator()
        estimator.load(args.checkpoint)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    metrics = estimator.evaluate(_Data(x, y), batch_size=args.batch_size)
    report = {"checkpoint": str(Path(args.checkpoint)), "labels": str(Path(args.labels)), **metrics}
    # A recall of a class absent from the labels is NaN, which strict JSON cannot carry: null.
    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in report.items()}
    print(json.dumps(clean, sort_keys=True))
    print(
        f"accuracy {metrics['accuracy']:.3f} | balanced accuracy {metrics['balanced_accuracy']:.3f}"
        f" | majority-class baseline {metrics['majority_baseline']:.3f}"
        f" | defects found {metrics['tp']}/{metrics['tp'] + metrics['fn']}, false alarms {metrics['fp']}"
        f" (n={metrics['n']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
