"""Update compression: bytes on the wire per update and the final held-out accuracy, against plain float32.

Simulates the seed job in one process as benchmarks/learnability.py does (two edges train the example's
Keras model on the synthetic tiles, FedAvg, ``--rounds`` rounds, the global model scored on ``test.txt``),
but every update goes through the real wire path: the script's raw blob (`schemas.encode_weights`), the edge
service's encoding of its delta from the round's global model (`schemas.compress_update`, top-k with each
edge's residual carried across rounds), and the aggregator's decoding onto that global model
(`schemas.decode_weights(blob, base=...)`) before FedAvg. The bytes are the encoded blobs' real sizes,
headers included, divided by the raw float32 blob's in the same run. Each mode starts from the same seed,
so a repeat differs between modes only by the encoding. With ``--global-float16`` the global models are
float16-rounded too (``global_compression: float16``).

    .venv/bin/python benchmarks/compression.py --repeats 3 --out /tmp/learn

Goals (issue 11): <= 0.51x (float16), <= 0.26x (int8), <= 0.05x (top-k 1 %), with accuracy within one point
of uncompressed FedAvg for float16 and int8. Not a test: a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from learnability import Data, fedavg, load_interface  # noqa: E402

from edge_trainer import load_dataset  # noqa: E402
from flctl.synth import synthesize  # noqa: E402
from schemas import Codec, compress_update, decode_weights, encode_weights  # noqa: E402

MODES: dict[str, tuple[Codec | None, float]] = {
    "float32": (None, 0.0),
    "float16": ("float16", 0.0),
    "int8": ("int8", 0.0),
    "topk-1%": ("topk", 0.01),
    "topk-10%": ("topk", 0.1),
}


def run_mode(
    args: argparse.Namespace, mode: str, iface: Any, edges_data: list[Data], test: Data, *, seed: int
) -> dict[str, Any]:
    import keras

    codec, fraction = MODES[mode]
    keras.utils.set_random_seed(seed)
    edges = [iface.Estimator(class_weight="balanced", init_seed=seed) for _ in edges_data]
    global_weights = [np.asarray(w) for w in edges[0].get_weights()]
    residuals: list[Any] = [None for _ in edges]
    ratios: list[float] = []
    for round_ in range(1, args.rounds + 1):
        updates = []
        for k, (edge, data) in enumerate(zip(edges, edges_data, strict=True)):
            edge.set_weights(global_weights)
            edge.train(
                data, None, epochs=args.epochs, batch_size=32, learning_rate=0.001, validation_split=0.2, verbose=0
            )
            raw = encode_weights(
                edge.get_weights(), kind="update", job="bench", round_=round_, sender=f"e{k}", num_samples=len(data)
            )
            blob = raw
            if codec is not None:
                blob, residuals[k] = compress_update(
                    raw, global_weights, codec, fraction=fraction, residual=residuals[k]
                )
            ratios.append(len(blob) / len(raw))
            header, arrays = decode_weights(blob, base=global_weights)
            updates.append((header.num_samples, [np.asarray(a, dtype=np.float64) for a in arrays]))
        global_weights = [np.asarray(w, dtype=np.float32) for w in fedavg(updates)]
        if args.global_float16:
            global_weights = [w.astype(np.float16).astype(np.float32) for w in global_weights]
    edges[0].set_weights(global_weights)
    metrics = edges[0].evaluate(test)
    return {
        "mode": mode,
        "seed": seed,
        "bytes_ratio": round(float(np.mean(ratios)), 4),
        "raw_bytes": len(raw),
        "accuracy": round(float(metrics["accuracy"]), 4),
        "balanced_accuracy": round(float(metrics["balanced_accuracy"]), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/synth"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tf-seed", type=int, default=1)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--global-float16", action="store_true", help="float16-rounded global models too")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    if not (args.out / "test.txt").is_file():
        synthesize(args.out, scale=args.scale, seed=args.seed)
    edges_data = [Data(*load_dataset(args.out / name)) for name in ("1.txt", "2.txt")]
    test = Data(*load_dataset(args.out / "test.txt"))
    iface = load_interface()
    results = []
    for r in range(args.repeats):
        for mode in args.modes:
            result = run_mode(args, mode, iface, edges_data, test, seed=args.tf_seed + r)
            results.append(result)
            print(json.dumps(result), flush=True)

    base = {r["seed"]: r for r in results if r["mode"] == "float32"}
    print(f"\n{'mode':<10} {'bytes/update':>13} {'accuracy (per seed)':<28} {'Δ vs float32 (points)':<24} balanced acc")
    for mode in args.modes:
        rows = [r for r in results if r["mode"] == mode]
        accs = [r["accuracy"] for r in rows]
        delta = [round(100 * (r["accuracy"] - base[r["seed"]]["accuracy"]), 1) for r in rows if r["seed"] in base]
        print(
            f"{mode:<10} {np.mean([r['bytes_ratio'] for r in rows]):>12.4f}x {accs!s:<28} {delta!s:<24} "
            f"{[r['balanced_accuracy'] for r in rows]}"
        )
    print(f"\nraw float32 update blob: {results[0]['raw_bytes']:,} bytes; {time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
