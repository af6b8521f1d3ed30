"""The seed job as a Flower 1.x app (Message API): benchmarks/flower.py copies this file, the example's
``interface.py`` and a generated ``pyproject.toml`` into one app folder and runs it with ``flwr run``.

The ServerApp builds the initial weights with the example's ``Estimator`` (``init_seed`` 0, the weights
every edge of ours starts from), runs Flower's ``FedAvg`` (every node trains and evaluates every round,
weighted by ``num-examples``) and writes the final arrays and its timings to ``out-dir``. The ClientApp
trains exactly as the example's train.py does (``Estimator.train``: epochs, batch, Adam's learning rate,
balanced class weights, Keras' validation_split) on the label file its SuperNode names (``--node-config
data=...``), and evaluates the global model on the same held-out share our worker scores (the last
``validation_split`` of its samples, `held_out_share`).

Flower runs each message in a fresh ``flwr-clientapp`` process, so the Adam state our training script keeps
in memory between rounds travels here in ``context.state`` (Flower's mechanism for stateful clients):
without it Flower would restart Adam every round and the two sides would not train the same way.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from edge_trainer import load_dataset

_LOADED = time.time()  # this module imported: the process is up and Flower has installed the app


def _process_start() -> float:
    """When this process started (epoch seconds), from /proc: the import of flwr before us counts too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _LOADED


def _log(path: str, record: dict[str, Any]) -> None:
    """One JSON line per message; appends are atomic enough for one writer per file."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


class _Data:
    """The ``.x``/``.y``/``len()`` surface Estimator.train and evaluate read (TxtDataParse's)."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)


def held_out_share(n: int, validation_split: float) -> int:
    """Where Keras' validation_split (and our worker's federated evaluation) starts: floor(n * (1 - split))."""
    return math.floor(n * (1.0 - validation_split))


# -- ClientApp ------------------------------------------------------------------------------------------

client = ClientApp()


def _estimator(msg: Message, context: Context) -> tuple[Any, dict[str, float], float]:
    t_tf = time.time()
    from interface import Estimator  # imports TensorFlow/Keras: a fresh process per message pays it

    estimator = Estimator()
    estimator.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    return estimator, {"tf_import_s": time.time() - t_tf}, t_tf


def _log_handler(context: Context, kind: str, round_: int, started: float, timing: dict[str, Any]) -> None:
    """One handler's timing line (spawn, module load, handler start, end and the handler's own phases)."""
    record = {"kind": kind, "round": round_, "process_start": _process_start(), "module_loaded": _LOADED}
    _log(str(context.node_config["timings"]), {**record, "handler_start": started, "end": time.time(), **timing})


@client.train()
def train(msg: Message, context: Context) -> Message:
    started = time.time()
    estimator, timing, _ = _estimator(msg, context)
    config = msg.content["config"]
    t_data = time.time()
    x, y = load_dataset(str(context.node_config["data"]))
    timing["data_s"] = time.time() - t_data
    lr = float(config["learning-rate"])
    estimator.compile(lr)
    saved = context.state.get("optimizer")
    if isinstance(saved, ArrayRecord):
        # Our worker compiles once and keeps Adam's moments and step count across rounds: same here.
        optimizer = estimator.model.optimizer
        optimizer.build(estimator.model.trainable_variables)
        for variable, value in zip(optimizer.variables, saved.to_numpy_ndarrays(), strict=True):
            variable.assign(value)
    t_fit = time.time()
    history = estimator.train(
        _Data(x, y),
        None,
        epochs=int(config["epochs"]),
        batch_size=int(config["batch-size"]),
        learning_rate=lr,
        validation_split=float(config["validation-split"]),
    )
    timing["fit_s"] = time.time() - t_fit
    context.state["optimizer"] = ArrayRecord([np.asarray(v) for v in estimator.model.optimizer.variables])
    metrics = {k: float(v[-1]) for k, v in history.items()}
    reply = RecordDict(
        {
            "arrays": ArrayRecord(estimator.get_weights()),
            "metrics": MetricRecord({**metrics, "num-examples": len(x)}),
        }
    )
    _log_handler(context, "train", int(config["server-round"]), started, timing)
    return Message(content=reply, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    started = time.time()
    estimator, timing, _ = _estimator(msg, context)
    config = msg.content["config"]
    x, y = load_dataset(str(context.node_config["data"]))
    start = held_out_share(len(x), float(config["validation-split"]))
    scores = estimator.evaluate(_Data(x[start:], y[start:]))
    reply = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "accuracy": float(scores["accuracy"]),
                    "balanced-accuracy": float(scores["balanced_accuracy"]),
                    "num-examples": int(scores["n"]),
                }
            )
        }
    )
    _log_handler(context, "evaluate", int(config["server-round"]), started, timing)
    return Message(content=reply, reply_to=msg)


# -- ServerApp ------------------------------------------------------------------------------------------

server = ServerApp()


class _TimedFedAvg(FedAvg):
    """Flower's FedAvg, noting when each round's training and evaluation phases end."""

    def __init__(self, marks: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marks = marks

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        self.marks.append({"round": server_round, "phase": "train_sent", "t": time.time()})
        config["server-round"] = server_round
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        self.marks.append({"round": server_round, "phase": "train_replies", "t": time.time()})
        return super().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        config["server-round"] = server_round
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
        self.marks.append({"round": server_round, "phase": "evaluate_replies", "t": time.time()})
        return super().aggregate_evaluate(server_round, replies)


@server.main()
def main(grid: Grid, context: Context) -> None:
    started = time.time()
    cfg = context.run_config
    from interface import Estimator

    initial = ArrayRecord(Estimator().get_weights())
    ready = time.time()
    marks: list[dict[str, Any]] = []
    split = float(cfg["validation-split"])
    strategy = _TimedFedAvg(
        marks, fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2
    )
    train_config = ConfigRecord(
        {
            "epochs": int(cfg["epochs"]),
            "batch-size": int(cfg["batch-size"]),
            "learning-rate": float(cfg["learning-rate"]),
            "validation-split": split,
        }
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=train_config,
        evaluate_config=ConfigRecord({"validation-split": split}),
    )
    out = Path(str(cfg["out-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "final.npz", *result.arrays.to_numpy_ndarrays())
    evaluations = {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
    timings = {
        "process_start": _process_start(),
        "module_loaded": _LOADED,
        "main_start": started,
        "initial_ready": ready,
        "marks": marks,
        "end": time.time(),
        "evaluations": evaluations,
    }
    (out / "server-timings.json").write_text(json.dumps(timings))
