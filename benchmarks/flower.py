"""Side by side with Flower: the seed job run by this project and by Flower, same model, same data split,
same rounds; prints the wall-time ratio (this project / Flower) and both accuracies. Issue 12's goal: the
ratio <= 0.75 with the accuracies within 1 point.

The job: examples/surface_defect_detection (Sedna's model in its interface.py, the synthetic dataset of
flctl.synth, edge1 trains on 1.txt's images, edge2 on 2.txt's), 2 edges, 3 rounds x 1 local epoch, FedAvg
weighted by sample count, batch 32, Adam lr 0.001, balanced class weights, Keras' validation_split 0.2.
Each side's final model is scored afterwards, by the same script (benchmarks/_flower_score.py), on the
held-out test.txt: accuracy and balanced accuracy.

Fairness rules:
- Both sides are real processes on this machine over loopback. Neither runs TLS (Mosquitto on plain MQTT,
  Flower ``--insecure``). This project runs in its normal deployment: the broker (Mosquitto), the
  aggregator and two edge services are long-running daemons, started and online before the clock; timed
  from ``flctl create -f`` (the CLI as a process) until the job is Succeeded, i.e. every edge has saved
  the final model.
- Flower is timed three ways, because its two APIs put the clock in different places:
  ``flower-deployment``: the deployment engine Flower recommends (SuperLink + two SuperNodes, started and
  online before the clock), timed from ``flwr run <app> bench --stream`` until it returns after the
  ServerApp wrote the final model. Each message runs in a fresh ``flwr-clientapp`` process (subprocess
  isolation, the default) that imports TensorFlow and loads its data: that is Flower's cost, as our edge
  pays one TensorFlow import per job without a warm worker.
  ``flower-legacy-cold``: the older (deprecated) server/client API, timed from launching the server and
  the two clients to the server's exit: a legacy client serves one run and holds that job's model code
  and data, so its processes start per job.
  ``flower-legacy-warm``: the same run timed from the moment server and clients are connected with
  TensorFlow imported and the data loaded (Flower's best case, what no deployment gets for a new job).
- The same model code and Keras training: Flower's ClientApp/client calls the example's very
  ``Estimator.train`` with the job's parameters, on the same files. Same initial weights (the Estimator's
  seeded init, which our edges upload as round 0, Flower's ServerApp passes as ``initial_arrays`` and the
  legacy server takes from a client as Flower does by default). Adam's state carries over between rounds
  on every side (our script and the legacy client keep it in memory; the deployment engine runs each
  message in a fresh process, so its ClientApp keeps it in ``context.state``).
- The same evaluation work: our edges score each round's global model on their held-out share (the last
  20 %, what Keras validates on) once per round; Flower's FedAvg runs one evaluate round per round on the
  same share (``fraction_evaluate=1``). No centralised evaluation inside any run.
- The final model of every side is scored after its clock stops, by the same script.
- Our side's edge services take extra arguments (``--project-edge-arg``; ``--project-warm-worker`` adds
  ``--warm-worker``, off by default, for the edge service's warm worker once it has one).
- Threads: both sides use TensorFlow's defaults (no intra/inter-op limits), two trainers sharing two cores.
- The sides alternate (ours, Flower's deployment engine, Flower's legacy API; again), each on a fresh
  deployment; ``--repeats`` (default 3) runs; medians of the wall times, their ratios, and each side's
  accuracies per run and their mean. Training is not seeded (Keras shuffles, dropout), as in the demo,
  so accuracies vary by 1-4 points from run to run on both sides.
- The machine has 2 cores and other work may run on it: the ratio measured in one run is what counts.

Flower is an optional extra, never a runtime or test dependency. Every flwr release pins protobuf<7 (this
project's venv has 7.x; TensorFlow accepts >=6.31.1,<8), so install it in a second venv to keep the dev
venv as CI has it, and run the benchmark with that venv's python:

    python3 -m venv .bench/flower-venv && .bench/flower-venv/bin/pip install -e '.[bench]'
    .bench/flower-venv/bin/python benchmarks/flower.py [--repeats 3]

(or ``.venv/bin/pip install -e '.[bench]'``, which moves that venv's protobuf to 6.x).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._flower_common import Run, median_phases, prepare_data, summarize  # noqa: E402
from benchmarks._flower_project import run_project  # noqa: E402
from runtime import configure_logging  # noqa: E402

INSTALL = (
    "Flower is not installed in this venv. It is the optional 'bench' extra; install it in a second venv:\n"
    "    python3 -m venv .bench/flower-venv && .bench/flower-venv/bin/pip install -e '.[bench]'\n"
    "    .bench/flower-venv/bin/python benchmarks/flower.py"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "flower")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="dataset size relative to the real one")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic dataset's seed")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one side's job may take")
    parser.add_argument(
        "--project-edge-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for this project's edge services (repeatable), e.g. --project-edge-arg=--warm-worker",
    )
    parser.add_argument(
        "--project-warm-worker", action="store_true", help="shorthand for --project-edge-arg=--warm-worker"
    )
    parser.add_argument(
        "--flower-mode",
        choices=("deployment", "legacy", "both"),
        default="both",
        help="Flower's deployment engine (SuperLink + SuperNodes, flwr run), its older server/client API with "
        "warm clients (Flower's best case), or both (default)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every run and the summary here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.project_warm_worker:
        args.project_edge_arg.append("--warm-worker")
    return args


def _show(run: Run) -> None:
    parts = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in run.phases.items())
    print(
        f"  {run.side:7s} wall {run.wall_s:6.1f} s  accuracy {run.accuracy:.3f}  balanced {run.balanced_accuracy:.3f}"
        f"\n          {parts}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("flwr") is None:
        print(INSTALL, file=sys.stderr)
        return 2
    # Imports nothing of Flower's itself: it runs Flower's CLIs and the app scripts as processes.
    from benchmarks._flower_flwr import run_flower, run_flower_legacy

    # The benchmark's own MQTT sessions (flctl, the status watchers) log only problems.
    configure_logging(node="bench", role="cli", level="WARNING")
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    test_labels = prepare_data(workdir, args.scale, args.seed)
    print(f"data ready in {time.perf_counter() - t0:.1f} s under {workdir / 'data'}", flush=True)
    job = {"rounds": 3, "epochs": 1, "batch_size": 32, "learning_rate": 0.001, "validation_split": 0.2}
    flower_sides = {"deployment": [run_flower], "legacy": [run_flower_legacy], "both": [run_flower, run_flower_legacy]}
    runs: list[Run] = []
    for repeat in range(1, args.repeats + 1):
        print(f"repeat {repeat}/{args.repeats}", flush=True)
        runs.append(
            run_project(
                workdir, workdir / "project", test_labels, edge_args=args.project_edge_arg, timeout=args.timeout
            )
        )
        _show(runs[-1])
        for runner in flower_sides[args.flower_mode]:
            for run in runner(workdir, workdir / "flower", test_labels, timeout=args.timeout, **job):
                runs.append(run)
                _show(run)

    print()
    print(f"{'side':18s} {'median wall':>12s} {'accuracy':>9s} {'balanced':>9s}  per run (accuracy/balanced)")
    for side in dict.fromkeys(r.side for r in runs):
        mine = [r for r in runs if r.side == side]
        per_run = " ".join(f"{r.accuracy:.3f}/{r.balanced_accuracy:.3f}" for r in mine)
        acc = sum(r.accuracy for r in mine) / len(mine)
        bal = sum(r.balanced_accuracy for r in mine) / len(mine)
        print(f"{side:18s} {statistics.median(r.wall_s for r in mine):10.1f} s {acc:9.3f} {bal:9.3f}  {per_run}")
    summaries = [summarize(runs, side) for side in dict.fromkeys(r.side for r in runs) if side != "project"]
    for summary in summaries:
        print(
            f"ratio project/{summary.flower_side} {summary.ratio:.2f} (goal <= 0.75); accuracy gap "
            f"{summary.accuracy_gap_points:.1f} points (goal <= 1)"
        )
    print(f"project edge service args: {args.project_edge_arg or 'none'}")
    for side in dict.fromkeys(r.side for r in runs):
        medians = median_phases(runs, side)
        print(f"{side} phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    if args.json is not None:
        document = {"runs": [vars(r) for r in runs], "summaries": [vars(x) for x in summaries]}
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
