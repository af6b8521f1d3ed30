"""Tiny Keras training worker for the fault tests: one hidden Dense layer on a few dozen seeded samples.

Parameters (worker environment, Sedna style): ``features`` and ``hidden`` size the model (``hidden``
makes it as large as a scenario needs, e.g. bigger than the broker's packet limit), ``epochs``,
``batch_size``, ``hold_rounds`` (see _common.py). Model format: ckpt.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import load_samples, wait_gate

from edge_trainer import BaseConfig, Context, FederatedLearning

FEATURES = int(Context.get_parameters("features", 8))
HIDDEN = int(Context.get_parameters("hidden", 16))


class Estimator:
    def __init__(self) -> None:
        import keras

        keras.utils.set_random_seed(7)
        self.model = keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(HIDDEN, activation="relu"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        self.model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
        self.calls = 0

    def train(self, train_data, valid_data=None, epochs=1, batch_size=8, **kwargs):
        self.calls += 1
        wait_gate(self.calls)
        history = self.model.fit(
            train_data.x, train_data.y, epochs=int(epochs), batch_size=int(batch_size), shuffle=False, verbose=0
        )
        return history.history

    def get_weights(self):
        return self.model.get_weights()

    def set_weights(self, weights):
        self.model.set_weights(weights)


def main() -> None:
    data = load_samples(BaseConfig.train_dataset_url, FEATURES)
    FederatedLearning(estimator=Estimator).train(
        train_data=data,
        epochs=int(Context.get_parameters("epochs", 1)),
        batch_size=int(Context.get_parameters("batch_size", 8)),
    )


if __name__ == "__main__":
    main()
