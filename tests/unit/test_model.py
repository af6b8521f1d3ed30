"""The surface defect detection example's Estimator (examples/.../training_worker/interface.py), with TensorFlow."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

INTERFACE = (
    Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection" / "training_worker" / "interface.py"
)


@pytest.fixture(scope="module")
def iface() -> ModuleType:
    # examples/ is not a package: load interface.py by path, as the worker's script directory would.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = importlib.util.spec_from_file_location("sdd_interface_under_test", INTERFACE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def estimator(iface: ModuleType) -> Any:
    return iface.Estimator()


class Data:
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)


def test_model_has_sednas_423874_parameters(estimator: Any) -> None:
    """Sedna's network has exactly 423,874 trainable parameters."""
    assert estimator.model.count_params() == 423_874
    assert sum(int(np.prod(w.shape)) for w in estimator.model.trainable_weights) == 423_874


def test_model_exchanges_ten_weight_arrays(estimator: Any) -> None:
    """get_weights returns kernel and bias of the 5 weight layers, in Sedna's order and shapes."""
    shapes = [w.shape for w in estimator.get_weights()]
    assert shapes == [
        (3, 3, 3, 64),
        (64,),
        (3, 3, 64, 32),
        (32,),
        (6272, 64),
        (64,),
        (64, 32),
        (32,),
        (32, 2),
        (2,),
    ]


def test_output_is_a_softmax_over_two_classes(iface: ModuleType, estimator: Any) -> None:
    """The last layer is a 2-unit softmax: predictions are probabilities summing to 1."""
    import keras

    last = estimator.model.layers[-1]
    assert last.units == 2 and last.activation is keras.activations.softmax
    probabilities = estimator.predict(np.random.default_rng(0).random((3, *iface.INPUT_SHAPE), dtype=np.float32))
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_training_loss_takes_probabilities_not_logits(iface: ModuleType) -> None:
    """train() compiles categorical cross-entropy with from_logits=False (Sedna's from_logits=True is a bug)."""
    import keras

    est = iface.Estimator()
    est.compile(learning_rate=0.001)
    assert isinstance(est.model.loss, keras.losses.CategoricalCrossentropy)
    assert est.model.loss.get_config()["from_logits"] is False
    assert float(est.model.optimizer.learning_rate.numpy()) == pytest.approx(0.001)


def test_labels_are_one_hot_inverted_like_sedna(iface: ModuleType) -> None:
    """Raw 0 (no defect) becomes [0, 1] and raw 1 (defect) [1, 0]; one-hot input passes through."""
    np.testing.assert_array_equal(iface.to_one_hot([0, 1, 0]), [[0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(iface.to_one_hot(np.array([[1, 0]])), [[1, 0]])
    np.testing.assert_array_equal(iface.to_defect_flags(np.array([[1, 0], [0, 1]])), [1, 0])
    with pytest.raises(ValueError):
        iface.to_one_hot([2])


def test_train_returns_a_history_of_python_floats(iface: ModuleType) -> None:
    """train() fits with validation_split and returns {metric: [float, ...]} for the report."""
    rng = np.random.default_rng(1)
    data = Data(rng.random((10, *iface.INPUT_SHAPE), dtype=np.float32), np.array([0, 1] * 5))
    history = iface.Estimator().train(
        data, epochs=1, batch_size=4, learning_rate=0.001, validation_split=0.2, verbose=0
    )
    assert {"loss", "categorical_accuracy", "val_loss", "val_categorical_accuracy"} <= set(history)
    assert all(type(v) is float for values in history.values() for v in values)


def test_balanced_class_weight_equalises_the_classes(iface: ModuleType) -> None:
    """With 70/30 labels each class gets n / (2 * n_class), so both weigh the same in total."""
    weights = iface.balanced_class_weight(iface.to_one_hot([0] * 7 + [1] * 3))
    assert weights[iface.DEFECT_INDEX] * 3 == pytest.approx(weights[1 - iface.DEFECT_INDEX] * 7)


def test_seeded_init_is_identical_on_every_edge(iface: ModuleType) -> None:
    """Two Estimators built with the default seed start from identical weights; init_seed=None does not."""
    a, b = iface.Estimator(), iface.Estimator()
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    c = iface.Estimator(init_seed=None)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
    assert not c.get_weights()[1].any()  # Keras' default: zero biases


def test_first_conv_bias_centres_the_input(estimator: Any) -> None:
    """The first conv's initial bias cancels a uniform mid-grey input: bias = -0.5 * sum(kernel)."""
    kernel, bias = estimator.get_weights()[:2]
    np.testing.assert_allclose(bias, -0.5 * kernel.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_set_weights_accepts_nested_lists(iface: ModuleType, estimator: Any) -> None:
    """set_weights takes Sedna's wire format (nested python lists) as well as arrays."""
    other = iface.Estimator(init_seed=7)
    other.set_weights([w.tolist() for w in estimator.get_weights()])
    assert all(np.array_equal(x, y) for x, y in zip(other.get_weights(), estimator.get_weights(), strict=True))


def test_checkpoint_round_trip(iface: ModuleType, estimator: Any, tmp_path: Path) -> None:
    """save(dir) writes <dir>/model.ckpt (tf.train.Checkpoint) and load(dir or prefix) restores it."""
    import tensorflow as tf

    prefix = estimator.save(tmp_path / "model")
    assert prefix == str(tmp_path / "model" / "model.ckpt")
    restored = iface.Estimator(init_seed=3)
    restored.load(tmp_path / "model")
    assert all(np.array_equal(x, y) for x, y in zip(restored.get_weights(), estimator.get_weights(), strict=True))
    # The format the edge trainer writes: tf.train.Checkpoint(model=...).write(prefix)
    other = iface.Estimator(init_seed=4)
    tf.train.Checkpoint(model=other.model).write(str(tmp_path / "w" / "model.ckpt"))
    restored.load(tmp_path / "w" / "model.ckpt")
    assert np.array_equal(restored.get_weights()[0], other.get_weights()[0])
    assert restored.load_weights(tmp_path / "absent") is False
    with pytest.raises(FileNotFoundError):
        restored.load(tmp_path / "absent")


def test_binary_metrics_report_the_majority_baseline(iface: ModuleType) -> None:
    """Accuracy, balanced accuracy and the always-majority baseline on a 70/30 toy case."""
    truth = np.array([0] * 7 + [1] * 3)
    never_defect = iface.binary_metrics(truth, np.zeros(10, dtype=np.int64))
    assert never_defect["accuracy"] == pytest.approx(0.7)
    assert never_defect["balanced_accuracy"] == pytest.approx(0.5)
    assert never_defect["majority_baseline"] == pytest.approx(0.7)
    perfect = iface.binary_metrics(truth, truth)
    assert perfect["accuracy"] == perfect["balanced_accuracy"] == 1.0
