"""Federated evaluation on the edge: the global model scored on this worker's held-out data.

Runs in the training script's process (`FederatedLearning`), on the weights the node service sent, before
they are trained on. The held-out data is, in this order:

1. the ``valid_data`` the script passes to ``train`` (Sedna's example parses ``TEST_DATASET_URL`` into it),
   when it has samples;
2. else the last ``validation_split`` share of ``train_data`` (a ``train`` keyword argument), exactly the
   samples Keras holds out for its ``val_*`` metrics (``floor(n * (1 - split))`` onwards, unshuffled);
3. else none: the worker reports no evaluation.

The model's output (``estimator.predict``) is read as class scores: ``(N, C)`` probabilities (softmax
applied first when the rows are not distributions) or ``(N,)``/``(N, 1)`` probabilities of class 1.
Labels are class indices or one-hot rows. What comes back is a `schemas.Evaluation`: the confusion matrix
(which adds up across edges), accuracy, balanced accuracy and the mean cross-entropy. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import MAX_EVAL_CLASSES, Evaluation

__all__ = ["HeldOut", "evaluate", "held_out"]

# Keras' epsilon: a probability of 0 for the true class costs -log(1e-7) ~ 16, never inf.
_EPSILON = 1e-7


@dataclass(frozen=True)
class HeldOut:
    """The samples a worker scores every global model on, and where they come from (for its log)."""

    x: Any
    labels: npt.NDArray[np.int64]  # class indices
    source: str


def held_out(train_data: Any, valid_data: Any, kwargs: Mapping[str, Any]) -> HeldOut | None:
    """This worker's held-out data (see the module docstring), or None when it has none."""
    if valid_data is not None and _length(valid_data) > 0 and hasattr(valid_data, "x"):
        labels = _class_indices(getattr(valid_data, "y", None))
        if labels is not None and len(labels) == _length(valid_data.x):
            return HeldOut(valid_data.x, labels, f"valid_data ({len(labels)} samples)")
    split = kwargs.get("validation_split")
    try:
        share = float(split) if split is not None else 0.0
    except (TypeError, ValueError):
        return None
    if not 0.0 < share < 1.0 or not hasattr(train_data, "x"):
        return None
    labels = _class_indices(getattr(train_data, "y", None))
    n = _length(train_data.x)
    if labels is None or len(labels) != n:
        return None
    start = math.floor(n * (1.0 - share))
    if start >= n:
        return None
    return HeldOut(train_data.x[start:], labels[start:], f"the last {share:g} of train_data ({n - start} samples)")


def evaluate(estimator: Any, data: HeldOut, round_: int) -> Evaluation:
    """Score the estimator's current weights on `data`; ValueError when its output is not class scores."""
    raw = np.asarray(estimator.predict(data.x), dtype=np.float64)
    probabilities = _probabilities(raw, len(data.labels))
    classes = probabilities.shape[1]
    if classes > MAX_EVAL_CLASSES:
        raise ValueError(f"the model predicts {classes} classes; an evaluation reports at most {MAX_EVAL_CLASSES}")
    if data.labels.size and (data.labels.min() < 0 or data.labels.max() >= classes):
        raise ValueError(f"labels {sorted(set(data.labels.tolist()))} do not index the model's {classes} outputs")
    predicted = np.argmax(probabilities, axis=1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (data.labels, predicted), 1)
    true_p = probabilities[np.arange(len(data.labels)), data.labels]
    loss = float(np.mean(-np.log(np.clip(true_p, _EPSILON, 1.0)))) if len(data.labels) else None
    return Evaluation.of(round_, confusion.tolist(), loss=loss)


def _probabilities(raw: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim == 1:
        if raw.shape[0] != n or raw.min(initial=0.0) < 0.0 or raw.max(initial=0.0) > 1.0:
            raise ValueError("a single output must be the probability of class 1, one per sample")
        return np.stack([1.0 - raw, raw], axis=1)
    if raw.ndim != 2 or raw.shape[0] != n or raw.shape[1] < 2:
        raise ValueError(f"predict returned shape {raw.shape}, expected ({n}, classes)")
    if not np.isfinite(raw).all():
        raise ValueError("predict returned NaN or inf")
    if raw.min() >= 0.0 and np.allclose(raw.sum(axis=1), 1.0, atol=1e-3):
        return raw
    shifted = np.exp(raw - raw.max(axis=1, keepdims=True))  # logits: softmax
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def _class_indices(y: Any) -> npt.NDArray[np.int64] | None:
    if y is None:
        return None
    try:
        array = np.asarray(y)
    except (TypeError, ValueError):
        return None
    if array.ndim == 2 and array.shape[1] >= 2:
        return np.asarray(np.argmax(array, axis=1), dtype=np.int64)
    if array.ndim in (1, 2) and array.dtype.kind in "iuf" and array.size:
        flat = array.reshape(-1)
        if np.all(flat == np.round(flat)):
            return flat.astype(np.int64)
    return None


def _length(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return 0
