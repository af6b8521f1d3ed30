"""The seed job on Flower's older (deprecated in 1.x) server/client API, for benchmarks/flower.py
``--flower-mode legacy``: Flower's best case, every process warm before the clock starts.

    python sdd_legacy.py server ADDRESS OUT_DIR ROUNDS EPOCHS BATCH LR SPLIT
    python sdd_legacy.py client ADDRESS LABELS

The clients build the example's Estimator (TensorFlow imported, the data loaded: what a legacy client
does before it connects) and stay connected for the whole run, so Adam's state lives in memory as in our
training script. The server takes its initial weights from one client (Flower's default without
``initial_parameters``; our aggregator takes round 0 from an edge's hello), waits until both clients are
connected, prints ``ready`` and then waits for one line on stdin: the benchmark starts its clock and
sends ``go``. It writes ``final.npz`` and ``server-timings.json`` into OUT_DIR and exits.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import NumPyClient, start_client
from flwr.common import parameters_to_ndarrays
from flwr.server import ServerConfig, start_server
from flwr.server.strategy import FedAvg

from edge_trainer import load_dataset


class _Data:
    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)


class SddClient(NumPyClient):
    def __init__(self, labels: str) -> None:
        from interface import Estimator

        self.estimator = Estimator()
        self.x, self.y = load_dataset(labels)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return self.estimator.get_weights()

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        self.estimator.set_weights(parameters)
        history = self.estimator.train(
            _Data(self.x, self.y),
            None,
            epochs=int(config["epochs"]),
            batch_size=int(config["batch-size"]),
            learning_rate=float(config["learning-rate"]),
            validation_split=float(config["validation-split"]),
        )
        return self.estimator.get_weights(), len(self.x), {k: float(v[-1]) for k, v in history.items()}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        self.estimator.set_weights(parameters)
        start = math.floor(len(self.x) * (1.0 - float(config["validation-split"])))
        scores = self.estimator.evaluate(_Data(self.x[start:], self.y[start:]))
        return 0.0, int(scores["n"]), {"accuracy": float(scores["accuracy"])}


class _GatedFedAvg(FedAvg):
    """FedAvg that keeps the last aggregate, notes each phase's end, and holds round 0 until ``go``."""

    def __init__(self, marks: list[dict[str, Any]], clients: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marks, self.clients = marks, clients
        self.latest: Any = None

    def initialize_parameters(self, client_manager: Any) -> Any:
        if not client_manager.wait_for(self.clients, timeout=300):
            raise RuntimeError(f"{self.clients} clients did not connect within 300 s")
        print("ready", flush=True)
        sys.stdin.readline()  # the benchmark's clock starts, then it sends "go"
        self.marks.append({"round": 0, "phase": "go", "t": time.time()})
        return None  # Flower then asks one client for its initial weights

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        self.marks.append({"round": server_round, "phase": "train_sent", "t": time.time()})
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        self.marks.append({"round": server_round, "phase": "train_replies", "t": time.time()})
        aggregated = super().aggregate_fit(server_round, results, failures)
        self.latest = aggregated[0]
        return aggregated

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        self.marks.append({"round": server_round, "phase": "evaluate_replies", "t": time.time()})
        return super().aggregate_evaluate(server_round, results, failures)


def server(argv: list[str]) -> None:
    """ADDRESS OUT_DIR ROUNDS EPOCHS BATCH LR SPLIT (the module docstring)."""
    address, out_dir, rounds, epochs, batch, lr, split = argv
    marks: list[dict[str, Any]] = []
    fit_config = {
        "epochs": int(epochs),
        "batch-size": int(batch),
        "learning-rate": float(lr),
        "validation-split": float(split),
    }
    strategy = _GatedFedAvg(
        marks,
        2,
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=2,
        min_evaluate_clients=2,
        min_available_clients=2,
        on_fit_config_fn=lambda _r: fit_config,
        on_evaluate_config_fn=lambda _r: {"validation-split": float(split)},
    )
    start_server(server_address=address, config=ServerConfig(num_rounds=int(rounds)), strategy=strategy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "final.npz", *parameters_to_ndarrays(strategy.latest))
    (out / "server-timings.json").write_text(json.dumps({"marks": marks, "end": time.time()}))


def client(address: str, labels: str) -> None:
    start_client(server_address=address, client=SddClient(labels).to_client(), insecure=True)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "server":
        server(rest)
    else:
        client(*rest)
