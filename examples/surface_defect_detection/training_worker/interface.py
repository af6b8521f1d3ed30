"""Estimator of the surface defect detection example: Sedna's exact Keras model, on Keras 3.

Mirrors ``examples/federated_learning/surface_defect_detection/training_worker/interface.py`` of
kubeedge/sedna. Same network, same label encoding, same ``train``/``get_weights``/``set_weights``/
``save``/``load`` surface, so the worker (``edge_trainer.FederatedLearning``) can drive it the way
Sedna's library drives the original. Deliberate differences are marked "Sedna:" in comments.

Labels are one-hot and inverted relative to the raw label file value, as in Sedna:
raw 0 (no defect) -> ``[0, 1]``, raw 1 (defect) -> ``[1, 0]``; output index 0 is P(defect).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# Sedna selects its Keras backend with this variable; our worker ignores it, it is kept so the
# file reads like the original. Keras 3 must run on TensorFlow here: checkpoints are written
# with tf.train.Checkpoint, which only tracks TensorFlow variables.
os.environ.setdefault("BACKEND_TYPE", "KERAS")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
from keras import ops
from keras.layers import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from keras.models import Sequential

INPUT_SHAPE = (128, 128, 3)
CHECKPOINT_NAME = "model.ckpt"  # <model dir>/model.ckpt.{index,data-*}, Sedna's Model CR format "ckpt"

# Output index 0 is "defect", index 1 "no defect" (Sedna's inverted one-hot).
DEFECT_INDEX = 0


def to_one_hot(labels: Any) -> np.ndarray:
    """Raw 0/1 labels -> Sedna's inverted one-hot; already one-hot ``(N, 2)`` input is returned as is."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 2:
        return y.astype(np.float32)
    raw = y.astype(np.int64).reshape(-1)
    if raw.size and not np.isin(raw, (0, 1)).all():
        raise ValueError("raw labels must be 0 (no defect) or 1 (defect)")
    one_hot = np.zeros((raw.size, 2), dtype=np.float32)
    one_hot[raw == 1, DEFECT_INDEX] = 1.0
    one_hot[raw == 0, 1 - DEFECT_INDEX] = 1.0
    return one_hot


def to_defect_flags(labels: Any) -> np.ndarray:
    """One-hot (Sedna encoding) or raw labels -> int array, 1 = defect."""
    y = np.asarray(labels)
    if y.ndim == 2:
        return np.asarray(np.argmax(y, axis=1) == DEFECT_INDEX, dtype=np.int64)
    return y.astype(np.int64).reshape(-1)


def balanced_class_weight(y_one_hot: np.ndarray) -> dict[int, float]:
    """Keras ``class_weight`` giving both classes the same total weight (``n / (2 * n_class)``)."""
    counts = y_one_hot.sum(axis=0)
    total = float(counts.sum())
    return {i: (total / (2.0 * float(c)) if c > 0 else 1.0) for i, c in enumerate(counts)}


def binary_metrics(defect_true: np.ndarray, defect_pred: np.ndarray) -> dict[str, float | int]:
    """Accuracy, balanced accuracy (mean per-class recall) and the majority-class baseline."""
    n = int(defect_true.size)
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    tp = int(((defect_true == 1) & (defect_pred == 1)).sum())
    tn = int(((defect_true == 0) & (defect_pred == 0)).sum())
    fp = int(((defect_true == 0) & (defect_pred == 1)).sum())
    fn = int(((defect_true == 1) & (defect_pred == 0)).sum())
    recalls = [hits / total for hits, total in ((tp, tp + fn), (tn, tn + fp)) if total > 0]
    positives = tp + fn
    return {
        "n": n,
        "accuracy": (tp + tn) / n,
        "balanced_accuracy": sum(recalls) / len(recalls),
        # What "always predict the most frequent class" scores: the number to beat (~0.70 here).
        "majority_baseline": max(positives, n - positives) / n,
        "defect_recall": tp / positives if positives else math.nan,
        "no_defect_recall": tn / (tn + fp) if tn + fp else math.nan,
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


class _Pull(keras.regularizers.Regularizer):
    """One variable's share of the proximal term, ``(mu/2) * ||v - anchor||^2``, on top of the
    variable's own regularizer if it had one."""

    def __init__(self, anchor: keras.Variable, mu: keras.Variable, previous: Any) -> None:
        self.anchor, self.mu, self.previous = anchor, mu, previous

    def __call__(self, x: Any) -> Any:
        pull = 0.5 * self.mu * ops.sum(ops.square(x - self.anchor))
        return pull if self.previous is None else pull + self.previous(x)


class ProximalTerm:
    """FedProx's local objective on a Keras model: the compiled loss plus ``(mu/2) * sum ||w - w_global||^2``
    over the model's trainable variables (Li et al. 2020, the paper's squared norm).

    Attached as weight regularizers, so Keras' own train step adds the term (once per batch, after
    the loss applied the sample and class weights) inside its gradient tape, and nothing about the
    compiled loss, the layers' configs or the saved model changes: a checkpoint or ``.keras`` file is
    Sedna's. ``w_global`` and ``mu`` live in non-trainable variables that `anchor` re-assigns each
    round, so the train function is traced once, not once per round. Attach it before the model's
    first ``fit`` (or rebuild the train function). Non-trainable weights get no term.
    """

    def __init__(self, model: keras.Model) -> None:
        self._count = len(model.weights)  # global_weights come in get_weights() order: model.weights
        self._indices = [i for i, v in enumerate(model.weights) if v.trainable]
        self._variables = [model.weights[i] for i in self._indices]
        self._anchors = [
            keras.Variable(ops.zeros(v.shape, dtype=v.dtype), trainable=False, name=f"anchor_{n}")
            for n, v in enumerate(self._variables)
        ]
        self._mu = keras.Variable(0.0, trainable=False, dtype="float32", name="proximal_mu")
        for variable, anchor in zip(self._variables, self._anchors, strict=True):
            variable.regularizer = _Pull(anchor, self._mu, variable.regularizer)

    def anchor(self, global_weights: Any, mu: float) -> None:
        """Set this round's global weights (all of them, in ``get_weights()`` order) and ``mu``."""
        arrays = list(global_weights)
        if len(arrays) != self._count:
            raise ValueError(f"global_weights has {len(arrays)} arrays, the model {self._count} (get_weights() order)")
        for anchor, i in zip(self._anchors, self._indices, strict=True):
            anchor.assign(np.asarray(arrays[i], dtype=anchor.dtype).reshape(anchor.shape))
        self._mu.assign(float(mu))

    def term(self) -> float:
        """``(mu/2) * sum ||w - w_global||^2`` for the current weights."""
        return float(
            sum(float(ops.sum(ops.square(v - a))) for v, a in zip(self._variables, self._anchors, strict=True))
            * 0.5
            * float(self._mu.numpy())
        )


def _checkpoint_prefix(path: str | os.PathLike[str]) -> Path:
    """A model directory means ``<dir>/model.ckpt``; anything else is taken as a checkpoint prefix."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


class Estimator:
    """Sedna's surface defect detection model, trainable locally and exchangeable via weights."""

    def __init__(self, **kwargs: Any) -> None:
        """Model init.

        ``init_seed`` (default 0) seeds the initial weights, ``None`` draws them at random as
        Sedna does. ``class_weight``: ``"balanced"`` (default), ``None`` or an explicit
        ``{index: weight}`` dict for ``train``; Sedna has no class weighting (see ``train``).
        """
        self.model = self.build(kwargs.get("init_seed", 0))
        self.has_init = False
        self.class_weight: str | dict[int, float] | None = kwargs.get("class_weight", "balanced")
        self.proximal: ProximalTerm | None = None  # FedProx's term, once a train call had mu > 0

    @staticmethod
    def build(init_seed: int | None = None) -> keras.Model:
        """Sedna's network: 423,874 parameters in 10 weight arrays, softmax over 2 classes.

        Sedna: unseeded Glorot-uniform kernels and zero biases (Keras' defaults), which
        ``init_seed=None`` keeps. With a seed (the default), three deliberate changes to the
        *initial values* only; layers, shapes and the parameter count are untouched, and
        everything stays trainable:

        * Every edge starts from the same weights. Unseeded, each edge began from its own random
          network and round 1's FedAvg averaged unrelated networks (hidden units are not aligned
          between them), which wasted that round.
        * He-uniform instead of Glorot-uniform kernels, the standard init for ReLU layers.
        * The first convolution's bias starts at ``-0.5 * sum(kernel)`` per filter, i.e. the
          network initially sees ``x - 0.5`` instead of ``x``. Sedna feeds raw ``/255`` pixels
          (mean ~0.5, no normalisation); without centring every ReLU feature is dominated by that
          constant, all images look alike to the dense layers, the output stays at ~0.5 for every
          image and the model sits on a plateau for 40-80 Adam steps. The demo budget is ~13 steps
          per round per edge. Folding the centring into the initial bias keeps the preprocessing
          and the saved model exactly Sedna's (any consumer feeds plain ``/255`` pixels).

        Measured with benchmarks/learnability.py (2 edges, 3 rounds x 1 epoch, batch 32, lr 0.001,
        balanced class weights) on the synthetic data, balanced accuracy on test.txt: Sedna's
        unseeded init 0.50 in 3 of 3 runs (stuck predicting one class); this init 0.92-0.95 over
        5 training seeds (0.80-0.91 on another dataset seed).
        """

        def kernel(index: int) -> Any:
            if init_seed is None:
                return "glorot_uniform"
            return keras.initializers.HeUniform(seed=init_seed * 100 + index)

        model = Sequential()
        # Sedna passes input_shape to the first Conv2D; Keras 3 wants an Input layer instead (and
        # warns otherwise). The resulting network is identical.
        model.add(Input(shape=INPUT_SHAPE))
        model.add(Conv2D(64, kernel_size=(3, 3), activation="relu", strides=(2, 2), kernel_initializer=kernel(0)))
        model.add(MaxPooling2D(pool_size=(2, 2)))
        model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", kernel_initializer=kernel(1)))
        model.add(MaxPooling2D(pool_size=(2, 2)))
        model.add(Flatten())
        model.add(Dropout(0.25))
        model.add(Dense(64, activation="relu", kernel_initializer=kernel(2)))
        model.add(Dense(32, activation="relu", kernel_initializer=kernel(3)))
        model.add(Dropout(0.5))
        model.add(Dense(2, activation="softmax", kernel_initializer=kernel(4)))
        if init_seed is not None:
            conv = model.layers[0]
            kernel_values = conv.get_weights()[0]
            # bias = -w . (0.5, ..., 0.5): the filter's response to a uniform mid-grey patch is 0.
            conv.set_weights([kernel_values, -0.5 * kernel_values.sum(axis=(0, 1, 2))])

        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        return model

    def compile(self, learning_rate: float) -> None:
        """(Re)compile with Adam(learning_rate) and plain categorical cross-entropy.

        Sedna compiles with ``CategoricalCrossentropy(from_logits=True)`` on top of the softmax
        layer, i.e. a softmax applied twice, which flattens the gradients. The output already is
        a probability distribution, so the loss must take probabilities (``from_logits=False``).
        """
        self.model.compile(
            loss=keras.losses.CategoricalCrossentropy(from_logits=False),
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            metrics=[keras.metrics.CategoricalAccuracy(name="categorical_accuracy")],
        )
        self.has_init = True

    def train(
        self,
        train_data: Any,
        valid_data: Any = None,
        *,
        epochs: int = 1,
        batch_size: int = 1,
        learning_rate: float = 0.01,
        validation_split: float = 0.2,
        mu: float = 0.0,
        global_weights: Any = None,
        **kwargs: Any,
    ) -> dict[str, list[float]]:
        """Model train: ``epochs`` local epochs on ``train_data.x``/``train_data.y``.

        Compiles on the first call only (as Sedna does), so Adam's moment estimates carry over
        from one federated round to the next while the weights are replaced by the aggregate.
        Without ``valid_data`` Keras holds out the LAST ``validation_split`` of the samples
        (unshuffled). Returns the Keras history as plain python floats (Sedna used ``np.float``,
        which NumPy 1.24 removed).

        FedProx (not in Sedna): with ``mu > 0`` the worker API passes the round's ``global_weights``
        and the loss becomes cross-entropy + ``(mu/2)·||w - global_weights||²`` (`ProximalTerm`; the
        history's ``loss`` includes the term). ``mu = 0`` trains exactly as before.
        """
        mu = float(mu)
        if mu > 0 and global_weights is None:
            raise ValueError(f"mu={mu:g} (FedProx) needs the round's global_weights")
        if not self.has_init:
            self.compile(float(learning_rate))
        if mu > 0 and self.proximal is None:
            self.proximal = ProximalTerm(self.model)
            # A train function traced before (plain rounds; never in a job, whose mu is fixed) knows no
            # regularizers: trace it again.
            self.model.make_train_function(force=True)
        if self.proximal is not None:
            self.proximal.anchor(global_weights if mu > 0 else self.get_weights(), mu)
        x = np.asarray(train_data.x, dtype=np.float32)
        y = to_one_hot(train_data.y)
        fit_args: dict[str, Any] = {
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            # One line per epoch: progress bars turn into megabytes of carriage returns in logs.
            "verbose": kwargs.get("verbose", 2),
        }
        has_valid = valid_data is not None and len(valid_data) > 0
        if has_valid:
            fit_args["validation_data"] = (np.asarray(valid_data.x, dtype=np.float32), to_one_hot(valid_data.y))
            fitted = y
        else:
            fit_args["validation_split"] = float(validation_split)
            # Keras trains on the first floor(n * (1 - split)) samples; weight only those.
            fitted = y[: math.floor(len(y) * (1.0 - float(validation_split)))]
        # Sedna: no class weighting. The data is ~70 % "no defect", and with the demo's budget
        # (3 rounds x 1 epoch x ~13 batches per edge) an unweighted model first learns the prior and
        # keeps answering "no defect" for most tiles. Weighting each class by n / (2 * n_class),
        # from the edge's own labels (nothing leaves the edge), makes a missed defect cost as much
        # as a false alarm: balanced accuracy 0.92-0.95 instead of 0.59-0.88 unweighted
        # (benchmarks/learnability.py). Pass class_weight=None to train as Sedna does.
        class_weight = kwargs.get("class_weight", self.class_weight)
        if class_weight == "balanced":
            fit_args["class_weight"] = balanced_class_weight(fitted) if len(fitted) else None
        elif class_weight is not None:
            fit_args["class_weight"] = dict(class_weight)
        history = self.model.fit(x, y, **fit_args)
        return {k: [float(v) for v in values] for k, values in history.history.items()}

    def get_weights(self) -> list[np.ndarray]:
        """The 10 weight arrays (kernel and bias of each Conv2D/Dense layer), in layer order."""
        return [np.asarray(w) for w in self.model.get_weights()]

    def set_weights(self, weights: Any) -> None:
        """Replace the weights; accepts numpy arrays or nested lists (Sedna's JSON wire format)."""
        self.model.set_weights([np.asarray(w, dtype=np.float32) for w in weights])

    def predict(self, datas: Any, **kwargs: Any) -> np.ndarray:
        """Class probabilities ``(N, 2)``; index 0 is P(defect). ``datas`` is an array or has ``.x``."""
        x = np.asarray(getattr(datas, "x", datas), dtype=np.float32)
        return np.asarray(self.model.predict(x, batch_size=kwargs.get("batch_size", 32), verbose=0))

    def evaluate(self, test_data: Any, **kwargs: Any) -> dict[str, float | int]:
        """Model evaluate: accuracy, balanced accuracy, majority baseline and the confusion counts.

        ``test_data.y`` may be raw 0/1 labels or Sedna one-hot. Sedna returned sklearn's
        ``precision_score(average="micro")``, which for single-label data equals the accuracy; on
        a 70/30 dataset accuracy alone hides a model that never finds a defect, hence the rest.
        """
        probabilities = self.predict(test_data.x, **kwargs)
        predicted = (np.argmax(probabilities, axis=1) == DEFECT_INDEX).astype(np.int64)
        return binary_metrics(to_defect_flags(test_data.y), predicted)

    def save(self, model_path: str | os.PathLike[str] | None = None) -> str:
        """Save the weights; returns the written path.

        A ``.keras`` path writes Keras' native model file. Anything else is a model
        directory (created if needed) or a path ending in ``.ckpt``, and gets a TensorFlow
        checkpoint ``<dir>/model.ckpt`` (Sedna's Model CR format "ckpt"), readable with
        ``tf.train.Checkpoint(model=estimator.model).read(prefix)``.
        Sedna: ``model.save(path)`` wrote a SavedModel directory on TF 2.3.
        """
        if model_path is None:
            raise ValueError("model_path is required")
        path = Path(model_path)
        if path.suffix == ".keras":
            path.parent.mkdir(parents=True, exist_ok=True)
            self.model.save(path)
            return str(path)
        import tensorflow as tf

        prefix = path if path.suffix == ".ckpt" else path / CHECKPOINT_NAME
        prefix.parent.mkdir(parents=True, exist_ok=True)
        return str(tf.train.Checkpoint(model=self.model).write(str(prefix)))

    def load(self, model_url: str | os.PathLike[str]) -> None:
        """Restore weights saved by :meth:`save` (model directory, ``.ckpt`` prefix or ``.keras`` file)."""
        path = Path(model_url)
        if path.suffix == ".keras":
            if not path.is_file():
                raise FileNotFoundError(f"no model file at {path}")
            self.model.load_weights(path)
            return
        import tensorflow as tf

        prefix = _checkpoint_prefix(path)
        if not Path(f"{prefix}.index").is_file():
            raise FileNotFoundError(f"no TensorFlow checkpoint at {prefix} (expected {prefix}.index)")
        try:
            status = tf.train.Checkpoint(model=self.model).read(str(prefix))
            # The model's variables must all come from the checkpoint; optimizer slots possibly
            # present in it are irrelevant for inference, hence expect_partial.
            status.assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError) as exc:
            raise ValueError(f"checkpoint {prefix} does not hold this model's weights: {exc}") from exc

    def load_weights(self, model: str | os.PathLike[str]) -> bool:
        """Load ``model`` only if it exists (Sedna's semantics); returns whether it loaded."""
        path = Path(model)
        exists = path.is_file() if path.suffix == ".keras" else Path(f"{_checkpoint_prefix(path)}.index").is_file()
        if exists:
            self.load(path)
        return exists
