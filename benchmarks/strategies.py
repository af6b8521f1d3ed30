"""Strategies on skewed and poisoned fleets: held-out accuracy per aggregation strategy (issue 10 (a)-(c)).

Simulates a fleet of ``--edges`` edges in one process, without MQTT, as benchmarks/learnability.py does:
each edge is the example's own Estimator (examples/surface_defect_detection/training_worker/interface.py,
Sedna's Keras model, balanced class weights, batch 32, Adam lr 0.001) training ``--epochs`` local
epochs per round from the global model, exactly as the worker API drives it (the global weights set, then
``estimator.train(...)``, with FedProx's ``global_weights=`` and ``mu=`` when ``mu`` > 0). The aggregator
is the product's own code: ``cloud_aggregator.get_strategy(name, parameters)``, then ``clip``, ``fold``
and ``step`` as the engine calls them, or ``RobustStrategy.aggregate`` for the robust rules. After
``--rounds`` rounds the global model is scored on the whole held-out ``test.txt``.

Data: the synthetic magnetic tiles (``flctl.synth``), the two edges' label files ``1.txt`` + ``2.txt``
pooled (about 1,040 images, 29 % defects) and re-split over the fleet (benchmarks/fleet_data.py):

  central   the centralized baseline: one model, all the pooled data, rounds x epochs epochs
  iid       the pooled images split at random evenly over the edges
  skewed    edge 1 gets ``--defect-share`` (0.8) of the defect images, the others share the rest; the
            defect-free images are split evenly (edge 1 about 62 % defects, the others about 9 %)
  signflip  the iid split; edge ``--edges`` sends ``previous - k*(update - previous)`` every round
            (its honest update's delta negated, ``--flip-k`` = k, default 1)
  scaled    the iid split; that edge sends ``previous + 100*(update - previous)`` (``--scale-factor``)

Every repeat (``--repeats``, seed ``--seed`` + r) draws its own splits and initial model and runs every
scenario and strategy on them: all strategies of a repeat see the same data and the same start. Results:
accuracy and balanced accuracy, mean ± sample std over the repeats, as a markdown table; ``--json``
writes every run with its per-round scores. Not a test (not under tests/, not in ``make test``).

    .venv/bin/python benchmarks/strategies.py      # the full table: about 20 min alone on 2 cores, 42 shared
    .venv/bin/python benchmarks/strategies.py --scenarios central iid --repeats 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent, HERE):  # the repository's packages; fleet_data and learnability beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from fleet_data import (  # noqa: E402
    Variant,
    delta_norm,
    iid_split,
    markdown_table,
    parse_variant,
    pm,
    scale_delta,
    sign_flip,
    skewed_split,
)
from learnability import Data, load_interface  # noqa: E402

from cloud_aggregator import RobustStrategy, RobustUpdate, StrategyError, get_strategy  # noqa: E402
from edge_trainer import load_dataset  # noqa: E402
from flctl.synth import synthesize  # noqa: E402

SCENARIOS = ("central", "iid", "skewed", "signflip", "scaled")
SKEWED = [
    "FedAvg",
    "FedProx:mu=0.01",
    "FedProx:mu=0.1",
    "FedAvgM:server_learning_rate=1,server_momentum=0.5",
    "FedAdam:server_learning_rate=0.003",
    "FedAdam:server_learning_rate=0.01",
    "FedYogi:server_learning_rate=0.003",
    "FedYogi:server_learning_rate=0.01",
]
# clip_norm 1: about the honest updates' norm (0.5-1 after round 1, about 2 in round 1; printed per round).
ROBUST = ["FedAvg", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "FedAvg:clip_norm=1"]


class Fleet:
    """The edges' Estimators, built once per repeat and reset before every run to their state at birth.

    A fresh Estimator costs its first ``fit`` about 2 s of tracing (as much as a whole run's training of
    one edge); resetting the weights, Adam's slots and step and the dropout seed states gives the same
    start without it, so a run's result does not depend on the runs before it."""

    def __init__(self, iface: ModuleType, count: int, seed: int) -> None:
        self.estimators = [iface.Estimator(init_seed=seed) for _ in range(count)]
        self.initial = self.estimators[0].get_weights()
        # The Dropout layers' seed generators (the model's only non-trainable variables).
        self.born = [[np.array(v.numpy()) for v in e.model.non_trainable_variables] for e in self.estimators]

    def reset(self) -> None:
        for estimator, born in zip(self.estimators, self.born, strict=True):
            estimator.set_weights(self.initial)
            for variable, value in zip(estimator.model.non_trainable_variables, born, strict=True):
                variable.assign(value)
            if estimator.has_init:  # compiled: Adam's step counter and moments back to zero, lr kept
                for variable in estimator.model.optimizer.variables:
                    if not variable.path.endswith("learning_rate"):
                        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))


def train_args(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "validation_split": args.validation_split,
        "verbose": 0,
    }


def score(evaluator: Any, weights: list[np.ndarray], test: Data) -> dict[str, float]:
    evaluator.set_weights(weights)
    m = evaluator.evaluate(test)
    return {"accuracy": float(m["accuracy"]), "balanced_accuracy": float(m["balanced_accuracy"])}


def run_federated(
    args: argparse.Namespace,
    fleet: Fleet,
    evaluator: Any,
    *,
    parts: list[Data],
    test: Data,
    variant: Variant,
    attack: str,
) -> dict[str, Any]:
    """One job: `args.rounds` rounds of local training and aggregation by `variant`; scores per round."""
    strategy = get_strategy(variant.aggregation, variant.parameters)
    fleet.reset()
    previous = [np.array(w) for w in fleet.initial]
    layout = tuple((f"t{i}", w.dtype.name, tuple(w.shape)) for i, w in enumerate(previous))
    server = strategy.begin_server(layout)
    attacker = len(parts) - 1
    rounds: list[dict[str, Any]] = []
    for r in range(1, args.rounds + 1):
        for w in previous:
            w.setflags(write=False)  # the worker API hands the estimator read-only global arrays
        updates: list[tuple[int, list[np.ndarray]]] = []
        norms = []
        for k, (estimator, data) in enumerate(zip(fleet.estimators, parts, strict=True)):
            estimator.set_weights([np.array(w) for w in previous])
            proximal = {"global_weights": previous, "mu": variant.mu} if variant.mu > 0 else {}
            estimator.train(data, None, **train_args(args, args.epochs), **proximal)
            weights = estimator.get_weights()
            norms.append(delta_norm(weights, previous))
            if k == attacker and attack == "signflip":
                weights = sign_flip(weights, previous, args.flip_k)
            elif k == attacker and attack == "scaled":
                weights = scale_delta(weights, previous, args.scale_factor)
            updates.append((len(data), weights))
        try:
            if isinstance(strategy, RobustStrategy):
                robust = [RobustUpdate(f"edge{k + 1}", n, w) for k, (n, w) in enumerate(updates)]
                result = strategy.aggregate(robust, previous)
                new, notes = result.weights, result.notes
            else:
                state, notes = strategy.begin(layout, previous), {}
                for k, (n, w) in enumerate(updates):
                    clipped, note = strategy.clip(w, previous)
                    if note is not None:
                        notes[f"edge{k + 1}"] = note
                    state = strategy.fold(state, clipped, n)
                new, server = strategy.step(state, previous, server)
        except StrategyError as exc:  # the product would fail the job (AggregationFailed)
            print(f"    round {r}: aggregation failed: {exc}", flush=True)
            return {"rounds": rounds, "error": str(exc), "accuracy": math.nan, "balanced_accuracy": math.nan}
        previous = [np.array(w) for w in new]
        scores = score(evaluator, previous, test)
        excluded = sorted(node for node, note in notes.items() if note.startswith("excluded"))
        rounds.append({"round": r, **scores, "honest_norms": [round(x, 4) for x in norms], "excluded": excluded})
        print(
            f"    round {r}: bal_acc {scores['balanced_accuracy']:.3f} acc {scores['accuracy']:.3f}; "
            f"update norms median {np.median(norms):.3f} max {max(norms):.3f}"
            + (f"; excluded {', '.join(excluded)}" if excluded else "")
            + ("" if all(np.isfinite(w).all() for w in previous) else "; global model NOT FINITE"),
            flush=True,
        )
    return {"rounds": rounds, **{k: rounds[-1][k] for k in ("accuracy", "balanced_accuracy")}}


def run_central(
    args: argparse.Namespace, iface: ModuleType, evaluator: Any, *, pooled: Data, test: Data, seed: int
) -> dict[str, Any]:
    """The centralized baseline: the same model and start, all the data, rounds x epochs epochs."""
    import keras

    keras.utils.set_random_seed(seed)
    estimator = iface.Estimator(init_seed=seed)
    estimator.train(pooled, None, **train_args(args, args.rounds * args.epochs))
    return score(evaluator, estimator.get_weights(), test)


def load(args: argparse.Namespace) -> tuple[Data, Data]:
    if args.regenerate or not (args.out / "test.txt").is_file():
        t0 = time.perf_counter()
        report = synthesize(args.out, scale=args.scale, seed=args.data_seed)
        print(f"generated {report.total_images} images in {time.perf_counter() - t0:.0f} s into {args.out}")
    loaded = [load_dataset(args.out / name) for name in ("1.txt", "2.txt")]
    pooled = Data(np.concatenate([x for x, _ in loaded]), np.concatenate([y for _, y in loaded]))
    test = Data(*load_dataset(args.out / "test.txt"))
    print(
        f"pooled training set {len(pooled)} images ({pooled.y.mean():.1%} defects), test.txt {len(test)} "
        f"({test.y.mean():.1%} defects)",
        flush=True,
    )
    return pooled, test


def plan(args: argparse.Namespace) -> list[tuple[str, Variant | None]]:
    """(scenario, strategy) pairs of one repeat, in the order they run."""
    lists = {"iid": args.iid, "skewed": args.skewed, "signflip": args.robust, "scaled": args.robust}
    runs: list[tuple[str, Variant | None]] = []
    for scenario in args.scenarios:
        if scenario == "central":
            runs.append((scenario, None))
        else:
            runs += [(scenario, parse_variant(spec)) for spec in lists[scenario]]
    return runs


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915  (one flat driver reads best)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--repeats", type=int, default=3, help="seeds --seed, --seed+1, ...")
    parser.add_argument("--seed", type=int, default=1, help="first training seed (splits, init, TF)")
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic set size (1.0: 1,344 images)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/synth-strategies"), help="dataset folder")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--validation-split", type=float, default=0.0, help="0: every edge trains on all its data")
    parser.add_argument("--defect-share", type=float, default=0.8, help="skewed: edge 1's share of the defects")
    parser.add_argument("--flip-k", type=float, default=1.0, help="signflip: previous - k*(update - previous)")
    parser.add_argument("--scale-factor", type=float, default=100.0, help="scaled: previous + s*(update - previous)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--iid", nargs="+", default=["FedAvg"], metavar="STRATEGY", help="Name[:key=value,...]")
    parser.add_argument("--skewed", nargs="+", default=SKEWED, metavar="STRATEGY")
    parser.add_argument("--robust", nargs="+", default=ROBUST, metavar="STRATEGY", help="signflip and scaled")
    parser.add_argument("--json", type=Path, default=None, help="write every run here (after each run)")
    parser.add_argument("--from-json", type=Path, default=None, help="only print the table of a --json file")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        nan = {"accuracy": math.nan, "balanced_accuracy": math.nan}
        runs_done = [{**r, **{k: nan[k] for k in nan if r.get(k) is None}} for r in saved["runs"]]
        print(report(argparse.Namespace(**{**vars(args), **saved["numbers"]}), runs_done))
        return 0

    import keras

    runs = plan(args)
    for _, variant in runs:  # a typo fails now, not after twenty minutes
        if variant is not None:
            get_strategy(variant.aggregation, variant.parameters)
    pooled, test = load(args)
    iface = load_interface()
    results: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    total = len(runs) * args.repeats
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        rng = np.random.default_rng(seed)
        splits = {
            "iid": iid_split(len(pooled), args.edges, rng),
            "skewed": skewed_split(pooled.y, args.edges, args.defect_share, rng),
        }
        print(
            f"repeat {repeat + 1}/{args.repeats} (seed {seed}): skewed split sizes "
            f"{[len(s) for s in splits['skewed']]}, defect shares {[round(float(pooled.y[s].mean()), 2) for s in splits['skewed']]}",
            flush=True,
        )
        keras.utils.set_random_seed(seed)
        fleet = Fleet(iface, args.edges, seed)
        evaluator = iface.Estimator(init_seed=seed)
        for scenario, variant in runs:
            label = "centralized" if variant is None else variant.spec
            t0 = time.perf_counter()
            print(f"[{len(results) + 1}/{total}] seed {seed} {scenario} {label}", flush=True)
            if variant is None:
                outcome: dict[str, Any] = run_central(args, iface, evaluator, pooled=pooled, test=test, seed=seed)
            else:
                keras.utils.set_random_seed(seed)
                split = splits["skewed" if scenario == "skewed" else "iid"]
                parts = [Data(pooled.x[s], pooled.y[s]) for s in split]
                attack = scenario if scenario in ("signflip", "scaled") else ""
                outcome = run_federated(args, fleet, evaluator, parts=parts, test=test, variant=variant, attack=attack)
            seconds = time.perf_counter() - t0
            results.append(
                {"scenario": scenario, "strategy": label, "seed": seed, "seconds": round(seconds, 1), **outcome}
            )
            save(args, results)
            elapsed = time.perf_counter() - t_start
            print(
                f"    -> bal_acc {outcome['balanced_accuracy']:.3f} acc {outcome['accuracy']:.3f} in {seconds:.0f} s; "
                f"{elapsed / 60:.1f} min elapsed, about {elapsed / len(results) * (total - len(results)) / 60:.1f} min to go",
                flush=True,
            )
    print()
    print(report(args, results))
    if args.json is not None:
        print(f"\nwrote {args.json}")
    return 0


def save(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Rewrite --json with the runs so far: an interrupted benchmark keeps what it measured."""
    if args.json is None:
        return
    numbers = {k: getattr(args, k) for k in ("edges", "rounds", "epochs", "seed")}
    document = {"arguments": {k: str(v) for k, v in vars(args).items()}, "numbers": numbers, "runs": results}
    args.json.write_text(json.dumps(_no_nan(document), indent=1))


def _no_nan(value: Any) -> Any:
    """`value` with NaN (a failed run's score) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    """The markdown table, then whether issue 10's goals hold."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in results:
        groups.setdefault((run["scenario"], run["strategy"]), []).append(run)

    def mean_of(key: tuple[str, str]) -> float:
        values = [r["balanced_accuracy"] for r in groups.get(key, []) if not math.isnan(r["balanced_accuracy"])]
        return float(np.mean(values)) if values else math.nan

    reference = {"central": None, "iid": ("central", "centralized"), "skewed": ("iid", "FedAvg")}
    reference |= {"signflip": ("iid", "FedAvg"), "scaled": ("iid", "FedAvg")}
    rows = []
    for (scenario, strategy), runs in groups.items():
        ref = reference[scenario]
        gap = mean_of((scenario, strategy)) - mean_of(ref) if ref else math.nan
        rows.append(
            [
                scenario,
                strategy,
                pm([r["accuracy"] for r in runs]),
                pm([r["balanced_accuracy"] for r in runs]),
                "" if math.isnan(gap) else f"{100 * gap:+.1f}",
            ]
        )
    header = ["scenario", "strategy", "accuracy", "balanced accuracy", "Δ bal. acc. (points) vs reference"]
    lines = [
        f"{args.edges} edges, {args.rounds} rounds x {args.epochs} local epoch(s), {len(results) and len({r['seed'] for r in results})} "
        f"seeds from {args.seed}; mean ± sample std; reference: iid vs centralized, the others vs iid FedAvg",
        "",
        markdown_table(header, rows),
        "",
    ]
    iid = mean_of(("iid", "FedAvg"))
    skewed = {s: mean_of(("skewed", s)) for sc, s in groups if sc == "skewed"}
    if skewed and not math.isnan(iid):
        best = max(skewed, key=lambda s: -1.0 if math.isnan(skewed[s]) else skewed[s])
        gap = 100 * (iid - skewed[best])
        lines.append(
            f"skewed: best {best} {skewed[best]:.3f}, {-gap:+.1f} points vs iid FedAvg {iid:.3f}: "
            f"goal (at most 3 below) {'holds' if gap <= 3 else 'FAILS'}"
        )
    for attack in ("signflip", "scaled"):
        scores = {s: mean_of((sc, s)) for sc, s in groups if sc == attack}
        if not scores or math.isnan(iid):
            continue
        robust = {s: v for s, v in scores.items() if s != "FedAvg" and not math.isnan(v)}
        fedavg = scores.get("FedAvg", math.nan)
        best = max(robust, key=lambda s: robust[s]) if robust else None
        if best is not None:
            gap = 100 * (iid - robust[best])
            collapse = 100 * (iid - fedavg)
            lines.append(
                f"{attack}: best {best} {robust[best]:.3f}, {-gap:+.1f} points vs clean FedAvg {iid:.3f} "
                f"(goal: at most 2 below: {'holds' if gap <= 2 else 'FAILS'}); FedAvg {fedavg:.3f}, {-collapse:+.1f} points"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
