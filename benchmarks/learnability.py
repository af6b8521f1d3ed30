"""Learnability experiment: can the demo's federated budget learn the synthetic defects?

Simulates, in one process and without MQTT, what the demo does: two edges train Sedna's model on
their own label file (``1.txt``, ``2.txt``) for ``--epochs`` local epochs per round (batch 32,
Adam lr 0.001, Keras' validation_split 0.2 as train.py's default), the aggregator averages the
weights weighted by each edge's sample count (FedAvg), and after ``--rounds`` rounds the global
model is evaluated on the held-out ``test.txt``. Reports accuracy, balanced accuracy, the
majority-class baseline and the seconds per local epoch.

The synthetic generator (``flctl.synth``) is tuned so this lands clearly above chance (balanced
accuracy >= ~0.75) and clearly below perfect (< ~0.98). Not a test: about 20 s to generate the
data and 10-20 s per training repeat on 2 cores.

Results at the time of tuning (scale 1.0, dataset seed 0, test.txt = 301 images, baseline 0.708):

    defaults (seeded init, balanced class weights), 5 seeds   balanced acc 0.92-0.95, acc 0.92-0.95
    same, dataset seed 1, 4 seeds                             balanced acc 0.80-0.91
    --class-weight none, 3 seeds                              balanced acc 0.59-0.88
    --init independent (Sedna's unseeded Glorot init), 3      balanced acc 0.50 (always "no defect")
    --epochs 2 (Sedna README's value), 2 seeds                balanced acc 0.94-0.98
    about 1.4 s per local epoch (416 training + 105 validation images), first epoch ~2.5 s

    .venv/bin/python benchmarks/learnability.py --scale 1.0
    .venv/bin/python benchmarks/learnability.py --scale 1.0 --class-weight none --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_trainer import load_dataset  # noqa: E402
from flctl.synth import DEFAULT_CONTRAST, synthesize  # noqa: E402

INTERFACE = REPO / "examples" / "surface_defect_detection" / "training_worker" / "interface.py"


def load_interface() -> ModuleType:
    """The example's interface.py (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sdd_interface", INTERFACE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Data:
    """``.x``/``.y``/``len()``: the TxtDataParse surface the Estimator uses."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)


def fedavg(updates: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
    """Sample-weighted mean per weight array, as Sedna's FedAvg.aggregate."""
    total = sum(n for n, _ in updates)
    return [np.sum([w[i] * (n / total) for n, w in updates], axis=0) for i in range(len(updates[0][1]))]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic): threshold-free separability of the classes."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    positives = y == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run_once(
    args: argparse.Namespace, iface: ModuleType, edges_data: list[Data], test: Data, seed: int
) -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(seed)
    class_weight = None if args.class_weight == "none" else "balanced"
    # "seeded": Estimator's default, every edge builds the same initial weights (init_seed).
    # "independent": each edge draws its own random init, as Sedna's workers do.
    init_seed = seed if args.init == "seeded" else None
    edges = [iface.Estimator(class_weight=class_weight, init_seed=init_seed) for _ in edges_data]
    epoch_seconds: list[float] = []
    rounds: list[dict[str, Any]] = []
    for round_number in range(1, args.rounds + 1):
        updates = []
        for k, (edge, data) in enumerate(zip(edges, edges_data, strict=True)):
            t0 = time.perf_counter()
            history = edge.train(
                data,
                None,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                validation_split=args.validation_split,
                verbose=0,
            )
            seconds = (time.perf_counter() - t0) / args.epochs
            epoch_seconds.append(seconds)
            print(
                f"  round {round_number} edge {k + 1}: {seconds:.2f} s/epoch, "
                f"loss {history['loss'][-1]:.4f}, val_acc {history.get('val_categorical_accuracy', [float('nan')])[-1]:.3f}",
                flush=True,
            )
            updates.append((len(data), edge.get_weights()))
        global_weights = fedavg(updates)
        for edge in edges:
            edge.set_weights(global_weights)
        metrics = edges[0].evaluate(test)
        p_defect = edges[0].predict(test.x)[:, 0]
        metrics["auc"] = roc_auc(test.y, p_defect)
        metrics["p_defect_mean_defect"] = float(p_defect[test.y == 1].mean())
        metrics["p_defect_mean_free"] = float(p_defect[test.y == 0].mean())
        rounds.append({"round": round_number, **metrics})
        print(
            f"  round {round_number} global: acc {metrics['accuracy']:.3f} "
            f"bal_acc {metrics['balanced_accuracy']:.3f} (baseline {metrics['majority_baseline']:.3f}) "
            f"tp {metrics['tp']} fn {metrics['fn']} fp {metrics['fp']} auc {metrics['auc']:.3f} "
            f"mean P(defect) {metrics['p_defect_mean_defect']:.3f}/{metrics['p_defect_mean_free']:.3f}",
            flush=True,
        )
    return {"seed": seed, "rounds": rounds, "final": rounds[-1], "epoch_seconds": epoch_seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/synth"))
    parser.add_argument("--regenerate", action="store_true", help="regenerate even if --out has data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--class-weight", choices=("balanced", "none"), default="balanced")
    parser.add_argument(
        "--init",
        choices=("seeded", "independent"),
        default="seeded",
        help="seeded (Estimator default): same initial weights on every edge; independent: Sedna's behaviour",
    )
    parser.add_argument("--repeats", type=int, default=1, help="training repeats with different TF seeds")
    parser.add_argument("--tf-seed", type=int, default=1)
    parser.add_argument(
        "--contrast",
        type=float,
        default=None,
        help=f"tuning only: the generator's defect contrast (default {DEFAULT_CONTRAST}); regenerates the data",
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    generated = False
    if args.contrast is not None:
        args.regenerate = True  # data already in --out may have been drawn with another contrast
    contrast = DEFAULT_CONTRAST if args.contrast is None else args.contrast
    if args.regenerate or not (args.out / "test.txt").is_file():
        report = synthesize(args.out, scale=args.scale, seed=args.seed, contrast=contrast)
        generated = True
        print(
            f"generated {report.total_images} images in {time.perf_counter() - t0:.1f} s: {dict(report.split_counts)}"
        )
    t1 = time.perf_counter()
    edges_data = [Data(*load_dataset(args.out / name)) for name in ("1.txt", "2.txt")]
    test = Data(*load_dataset(args.out / "test.txt"))
    print(
        f"loaded {[len(d) for d in edges_data]} + test {len(test)} images in {time.perf_counter() - t1:.1f} s; "
        f"defect share {[round(float(d.y.mean()), 3) for d in edges_data]} / {float(test.y.mean()):.3f}",
        flush=True,
    )

    iface = load_interface()
    runs = []
    for r in range(args.repeats):
        print(f"run {r + 1}/{args.repeats} (tf seed {args.tf_seed + r})", flush=True)
        runs.append(run_once(args, iface, edges_data, test, args.tf_seed + r))

    finals = [run["final"] for run in runs]
    all_epochs = [s for run in runs for s in run["epoch_seconds"]]
    summary = {
        "dataset": str(args.out),
        # Only known when this run generated the data (see SYNTHETIC.md in the dataset otherwise).
        "scale": args.scale if generated else None,
        "dataset_seed": args.seed if generated else None,
        "contrast": contrast if generated else None,
        "class_weight": args.class_weight,
        "init": args.init,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "n_test": finals[0]["n"],
        "accuracy": [round(f["accuracy"], 4) for f in finals],
        "balanced_accuracy": [round(f["balanced_accuracy"], 4) for f in finals],
        "auc": [round(f["auc"], 4) for f in finals],
        "majority_baseline": round(finals[0]["majority_baseline"], 4),
        # The first epoch of each edge includes tf.function tracing; report it apart.
        "seconds_per_epoch_first": round(all_epochs[0], 2),
        "seconds_per_epoch_median": round(float(np.median(all_epochs)), 2),
        "cpu_count": os.cpu_count(),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
