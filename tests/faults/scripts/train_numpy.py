"""Numpy-only training worker for the many-edges fault test.

Twenty edges means twenty training scripts at once on a two-core machine: each Keras script costs
seconds of CPU and hundreds of MB just to import TensorFlow, which would make the scenario about
process start-up instead of about the broker. This estimator (a linear least-squares model trained
with one gradient step per round) has the same surface the worker API drives (get_weights,
set_weights, train, save), and its weights are as large as the scenario wants (``features`` x
``hidden``), so the transfers carry the many chunks the scenario is about. It honours FedProx's ``mu``
(tests/integration/test_fedprox_job.py recomputes a job's final model from its data). Saved with
``estimator.save(path)`` (no Keras ``.model``): ``<path>.npz``.
"""

from __future__ import annotations

import numpy as np
from _common import load_samples, record_update, wait_gate

from edge_trainer import BaseConfig, Context, FederatedLearning

FEATURES = int(Context.get_parameters("features", 8))
HIDDEN = int(Context.get_parameters("hidden", 16))
LOCAL_STEPS = int(Context.get_parameters("local_steps", 1))  # one gradient step per round unless a test asks
# A poisoning edge for the robust-aggregation tests: it sends the global model plus its trained delta
# times this factor (1: honest).
POISON_SCALE = float(Context.get_parameters("poison_scale", 1))
# The secure aggregation tests compare what the aggregator could see with each edge's true update: with
# ``record_updates`` the script keeps every round's start and trained weights under its node root.
RECORD = bool(Context.get_parameters("record_updates", ""))


class Estimator:
    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.w = (rng.standard_normal((FEATURES, HIDDEN)) * 0.1).astype(np.float32)
        self.b = np.zeros(HIDDEN, dtype=np.float32)
        self.start = [self.w, self.b]  # the weights this round trained from (the global model)
        self.calls = 0

    def train(self, train_data, valid_data=None, learning_rate=0.01, global_weights=None, mu=0.0, **kwargs):
        """``local_steps`` full-batch gradient steps; with FedProx (``mu`` > 0, the worker API passes the
        round's ``global_weights``) each step's gradient gains ``mu * (w - w_global)``."""
        self.calls += 1
        wait_gate(self.calls)
        x = train_data.x
        target = np.repeat(train_data.y.astype(np.float32)[:, None], HIDDEN, axis=1)
        for _ in range(LOCAL_STEPS):
            error = x @ self.w + self.b - target
            grad_w = x.T @ error / len(x)
            grad_b = error.mean(axis=0)
            if mu:
                grad_w = grad_w + mu * (self.w - global_weights[0])
                grad_b = grad_b + mu * (self.b - global_weights[1])
            self.w = (self.w - learning_rate * grad_w).astype(np.float32)
            self.b = (self.b - learning_rate * grad_b).astype(np.float32)
        if RECORD:
            record_update(self.calls, self.start, self.get_weights())
        return {"loss": [float((error**2).mean())]}

    def get_weights(self):
        if POISON_SCALE == 1 or not self.calls:
            return [self.w, self.b]
        return [
            (s + (a - s) * POISON_SCALE).astype(np.float32) for a, s in zip([self.w, self.b], self.start, strict=True)
        ]

    def predict(self, x):
        """The probability of class 1 (what the worker API's federated evaluation scores)."""
        return 1.0 / (1.0 + np.exp(-(x @ self.w + self.b).mean(axis=1)))

    def set_weights(self, weights):
        self.w, self.b = (np.array(w, dtype=np.float32) for w in weights)
        self.start = [self.w, self.b]

    def save(self, model_path):
        path = f"{model_path}.npz"
        with open(path, "wb") as f:
            np.savez(f, w=self.w, b=self.b)
        return path


def main() -> None:
    data = load_samples(BaseConfig.train_dataset_url, FEATURES)
    # With a validation_split the worker API scores every global model on that share (federated evaluation).
    split = float(Context.get_parameters("validation_split", 0) or 0)
    rate = float(Context.get_parameters("learning_rate", 0.01))
    extra = {"validation_split": split} if split else {}
    FederatedLearning(estimator=Estimator).train(train_data=data, learning_rate=rate, **extra)


if __name__ == "__main__":
    main()
