"""Accuracy against epsilon: client-level differential privacy on the synthetic surface-defect task.

Simulates, in one process and without MQTT (like ``benchmarks/learnability.py``), a federated job of
``--clients`` edges, each holding a shard of the synthetic training data (``1.txt`` + ``2.txt``, pooled
and dealt round-robin), training the example's Keras model (``interface.py``'s Estimator) for
``--epochs`` local epochs per round over ``--rounds`` rounds, and scores the global model on the held-out
``test.txt``. For each budget epsilon (at ``--delta``, over all the rounds) the noise multiplier z comes
from ``dp_accounting``'s calibration, and the rounds run through the product's own code:

- ``central``: each update clipped by the aggregator (`Strategy.clip` at C), folded with equal weights
  and noised at the close (`cloud_aggregator.Privacy.close`: std z*C on the sum, over the fixed
  denominator of every client);
- ``local``: each client clips and noises its own delta with std z*C (`edge_trainer.privatise_update`,
  the worker API's code), the aggregator takes their uniform mean (distributed DP would add z*C/sqrt(n)
  per client: statistically the central case);
- ``inf``: plain FedAvg (sample-weighted, no clip, no noise), the non-private reference.

The epsilon each run reports is the product's accountant (`cloud_aggregator.epsilon_spent`) after its
rounds. C is ``--clip``, or with ``auto`` the median update norm of a non-private first round (chosen on
the data itself, as benchmarks do; a real job would fix it beforehand). Not a test: minutes on 2 cores.

    .venv/bin/python benchmarks/privacy.py --clients 10 --rounds 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.learnability import Data, fedavg, load_interface  # noqa: E402
from cloud_aggregator import FedAvg, Privacy, epsilon_spent  # noqa: E402
from edge_trainer import load_dataset, privatise_update  # noqa: E402
from flctl.synth import synthesize  # noqa: E402

Arrays = list[np.ndarray]


def calibrate(epsilon: float, rounds: int, delta: float) -> float:
    """The noise multiplier z whose `rounds` Gaussian rounds (every client each round) spend `epsilon`."""
    import dp_accounting
    from dp_accounting.mechanism_calibration import calibrate_dp_mechanism

    def event(z: float) -> Any:
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)

    z = float(
        calibrate_dp_mechanism(
            dp_accounting.rdp.RdpAccountant,
            event,
            epsilon,
            delta,
            dp_accounting.mechanism_calibration.LowerEndpointAndGuess(1e-4, 1.0),
        )
    )
    assert epsilon_spent(rounds, z, delta) <= epsilon * 1.001, (z, epsilon_spent(rounds, z, delta), epsilon)
    return z


def shards(data: list[Data], clients: int) -> list[Data]:
    x = np.concatenate([d.x for d in data])
    y = np.concatenate([d.y for d in data])
    return [Data(x[k::clients], y[k::clients]) for k in range(clients)]


def delta_norm(update: Arrays, base: Arrays) -> float:
    return float(
        math.sqrt(sum(float(np.sum((np.float64(u) - np.float64(b)) ** 2)) for u, b in zip(update, base, strict=True)))
    )


class Clients:
    """Every client's local training on one Keras model, one after the other (building one model per client
    would cost more than the training itself). Each client keeps its own Adam moments from round to round,
    as a real edge's Estimator does: they are swapped in and out around its training."""

    def __init__(self, args: argparse.Namespace, edge: Any, data: list[Data]) -> None:
        self.args, self.edge, self.data = args, edge, data
        edge.compile(args.lr)
        optimizer = edge.model.optimizer
        optimizer.build(edge.model.trainable_variables)
        fresh = [v.numpy() for v in optimizer.variables]
        self.moments = [[np.array(v) for v in fresh] for _ in data]

    def train(self, base: Arrays) -> list[tuple[int, Arrays]]:
        updates = []
        optimizer = self.edge.model.optimizer
        for shard, moments in zip(self.data, self.moments, strict=True):
            for variable, value in zip(optimizer.variables, moments, strict=True):
                variable.assign(value)
            self.edge.set_weights([np.array(a) for a in base])
            self.edge.train(shard, None, epochs=self.args.epochs, batch_size=self.args.batch_size,
                            learning_rate=self.args.lr, validation_split=0.0, verbose=0)  # fmt: skip
            moments[:] = [v.numpy() for v in optimizer.variables]
            updates.append((len(shard), [np.asarray(w) for w in self.edge.get_weights()]))
        return updates


def aggregate(mode: str, privacy: Privacy | None, updates: list[tuple[int, Arrays]], base: Arrays) -> Arrays:
    """One round's global model through the product's code for `mode`."""
    if privacy is None:
        return [a.astype(b.dtype) for a, b in zip(fedavg(updates), base, strict=True)]
    strategy = FedAvg()
    if mode == "central":
        strategy.clip_norm = privacy.clip_norm
    layout = tuple((f"w{i}", b.dtype.name, tuple(b.shape)) for i, b in enumerate(base))
    state = strategy.begin(layout)
    for n, trained in updates:
        if mode == "central":
            sent, _ = strategy.clip(trained, base)
        else:  # the edge's own code, fresh entropy as on a real edge
            sent = privatise_update(trained, base, privacy.clip_norm, privacy.edge_noise_std())
        state = strategy.fold(state, sent, n, privacy.fold_scale(n))
    return strategy.finish(privacy.close(state, base, np.random.default_rng()), base)


def run_once(
    args: argparse.Namespace,
    iface: Any,
    data: list[Data],
    test: Data,
    *,
    mode: str,
    epsilon: float,
    clip: float,
    seed: int,
) -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(seed)
    edge = iface.Estimator(init_seed=seed)
    clients = Clients(args, edge, data)
    base = [np.asarray(w) for w in edge.get_weights()]
    privacy = None
    if math.isfinite(epsilon):
        z = calibrate(epsilon, args.rounds, args.delta)
        privacy = Privacy(mode, clip, z, args.delta, None, len(data))  # type: ignore[arg-type]
    for _ in range(args.rounds):
        base = aggregate(mode, privacy, clients.train(base), base)
    edge.set_weights(base)
    metrics = edge.evaluate(test)
    return {
        "mode": mode if privacy else "fedavg",
        "target_epsilon": epsilon if math.isfinite(epsilon) else None,
        "noise_multiplier": round(privacy.noise_multiplier, 4) if privacy else 0.0,
        "epsilon": round(privacy.epsilon(args.rounds), 3) if privacy else None,
        "accuracy": round(float(metrics["accuracy"]), 4),
        "balanced_accuracy": round(float(metrics["balanced_accuracy"]), 4),
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/synth"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--modes", default="central,local")
    parser.add_argument("--clip", default="auto", help="C, or auto: the median update norm of a non-private round")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tf-seed", type=int, default=1)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    if not (args.out / "test.txt").is_file():
        synthesize(args.out, scale=args.scale, seed=0)
    data = shards([Data(*load_dataset(args.out / n)) for n in ("1.txt", "2.txt")], args.clients)
    test = Data(*load_dataset(args.out / "test.txt"))
    iface = load_interface()
    print(f"{args.clients} clients of {[len(d) for d in data]} images; test {len(test)}", flush=True)

    if args.clip == "auto":
        import keras

        keras.utils.set_random_seed(args.tf_seed)
        edge = iface.Estimator(init_seed=args.tf_seed)
        base = [np.asarray(w) for w in edge.get_weights()]
        norms = [delta_norm(u, base) for _, u in Clients(args, edge, data).train(base)]
        clip = float(np.median(norms))
        print(f"update norms in a non-private first round: {[round(n, 3) for n in norms]}; C = {clip:.4g}", flush=True)
    else:
        clip = float(args.clip)

    epsilons = [float(e) for e in args.epsilons.split(",")]
    results = []
    for epsilon in epsilons:
        for mode in args.modes.split(",") if math.isfinite(epsilon) else ["fedavg"]:
            for r in range(args.repeats):
                result = run_once(args, iface, data, test, mode=mode, epsilon=epsilon, clip=clip, seed=args.tf_seed + r)
                results.append(result)
                print(json.dumps(result), flush=True)

    print("\n| mode | target epsilon | z | epsilon spent | accuracy | balanced accuracy |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(r["mode"], r["target_epsilon"] or math.inf) for r in results}, key=lambda k: (k[1], k[0]))
    for mode, eps in keys:
        rows = [r for r in results if r["mode"] == mode and (r["target_epsilon"] or math.inf) == eps]
        accs = "/".join(f"{r['accuracy']:.3f}" for r in rows)
        bals = "/".join(f"{r['balanced_accuracy']:.3f}" for r in rows)
        spent = rows[0]["epsilon"]
        print(
            f"| {mode} | {'inf' if math.isinf(eps) else f'{eps:g}'} | {rows[0]['noise_multiplier']:g} | "
            f"{'-' if spent is None else spent} | {accs} | {bals} |"
        )
    print(json.dumps({"clients": args.clients, "rounds": args.rounds, "epochs": args.epochs, "clip": round(clip, 4),
                      "delta": args.delta, "cpu_count": os.cpu_count(),
                      "total_seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
