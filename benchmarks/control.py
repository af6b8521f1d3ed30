"""Control traffic per round and edge: every message but the weights transfers, at 2, 10 and 100 edges.

Drives the real aggregator (`cloud_aggregator.engine.Controller`, which puts the event stream in front of
its port as the service does) over a counting `MemoryPort`, with N simulated edges that report the way
`edge_trainer`'s `EdgeJob` and its service do (`tests/helpers/fleet.py`: a whole `WorkerStatus` with
metrics, evaluation and ledger summary on each state change, each update as a chunked transfer). Time is
simulated (timed arrivals, the service's 0.2 s timer), so 100 edges take seconds and the figures do not
depend on the machine's load.

Control = job statuses, the event stream, round records, the plan, acks (published by the aggregator) and
the edges' worker statuses. Left out: the transfers (manifests and chunks, both directions).

    .venv/bin/python benchmarks/control.py                       # 2, 10, 100 edges, 12 rounds; interval 1 s and 0
    .venv/bin/python benchmarks/control.py --edges 10 --rounds 5 --status-interval 1 --train-seconds 20

Prints per configuration: publications and bytes per round and edge of each kind (over the steady rounds,
neither the first nor the last), the status's mean and largest size, then a table with each interval's
control bytes per edge against publishing every change (`--status-interval 0`, no coalescing) in the same
run. Exit 1 when the goal (at most 5 kB per round and edge at 10 edges and more) is not met.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the simulated fleet is the status traffic tests' (tests/helpers/fleet.py)
    sys.path.insert(0, str(REPO))

from tests.helpers.status_fleet import Fleet  # noqa: E402


def report(n: int, fleet: Fleet) -> dict[str, float]:
    tallies = fleet.port.tallies
    rounds = fleet.rounds
    steady = range(2, rounds)  # rounds without the start and the end
    out: dict[str, float] = {}
    for kind, tally in sorted(tallies.items()):
        out[f"{kind} B/round/edge"] = sum(tally.size[r] for r in steady) / len(steady) / n
        out[f"{kind} msgs/round"] = sum(tally.count[r] for r in steady) / len(steady)
    total = sum(sum(t.size.values()) for t in tallies.values())
    out["control B/round/edge (steady)"] = sum(out[f"{k} B/round/edge"] for k in tallies)
    out["control B/round/edge (whole job)"] = total / rounds / n
    status = tallies["job status"]
    out["mean job status B"] = sum(status.size.values()) / max(1, sum(status.count.values()))
    out["largest job status B"] = status.largest
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, nargs="+", default=[2, 10, 100])
    parser.add_argument("--rounds", type=int, default=12, help="12: rounds 11 on hold the status's full history")
    parser.add_argument("--train-seconds", type=float, default=3.0, help="simulated local training per round")
    parser.add_argument(
        "--status-interval", type=float, nargs="+", default=[1.0, 0.0], help="0: every change (no coalescing)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    goal_ok = True
    summary: dict[tuple[int, float], tuple[float, float, float]] = {}
    for interval in args.status_interval:
        for n in args.edges:
            fleet = Fleet(n, args.rounds, interval=interval, train_s=args.train_seconds, seed=args.seed)
            started = time.perf_counter()
            fleet.run()
            # The whole simulation's time (edges, counting, the memory port's copies included): an upper bound
            # of what the engine spends, and machine-dependent; the counts are not.
            seconds = (time.perf_counter() - started) / args.rounds
            figures = report(n, fleet)
            per_edge = figures["control B/round/edge (steady)"]
            summary[(n, interval)] = (per_edge, figures["job status msgs/round"], seconds)
            label = "every change" if interval <= 0 else f"interval {interval:g} s"
            print(f"\n== {n} edges, {args.rounds} rounds, {label} (steady rounds 2..{args.rounds - 1})")
            for key, value in figures.items():
                print(f"  {key:40s} {value:10.1f}")
            print(f"  {'simulated round, wall s (this machine)':40s} {seconds:10.2f}")
            if interval > 0 and n >= 10:
                ok = per_edge <= 5000
                goal_ok &= ok
                print(f"  goal <= 5000 B/round/edge: {'met' if ok else 'NOT met'} ({per_edge / 5000:.2f}x the goal)")
    print("\nedges  interval  control B/round/edge  status msgs/round  vs every change  wall s/round")
    for (n, interval), (per_edge, msgs, seconds) in summary.items():
        every = summary.get((n, 0.0))
        ratio = f"{per_edge / every[0]:.3f}x" if every is not None and interval > 0 else "-"
        print(f"{n:5d}  {interval:8g}  {per_edge:19.0f}  {msgs:17.1f}  {ratio:>15s}  {seconds:12.2f}")
    return 0 if goal_ok else 1


if __name__ == "__main__":
    sys.exit(main())
