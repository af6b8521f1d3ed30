"""FedProx in the example's Estimator (examples/.../training_worker/interface.py), with TensorFlow: the
proximal term's gradient by hand on a tiny model, mu = 0 bit-identical to plain training, mu > 0 keeping
the trained weights nearer the global model."""

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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = importlib.util.spec_from_file_location("sdd_interface_fedprox", INTERFACE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Data:
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)


@pytest.fixture(scope="module")
def data(iface: ModuleType) -> Data:
    rng = np.random.default_rng(5)
    return Data(rng.random((8, *iface.INPUT_SHAPE), dtype=np.float32), np.array([0, 1, 1, 0, 0, 0, 1, 0]))


def train(iface: ModuleType, data: Data, **kwargs: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A fresh estimator (same seeded init on every call) trained 2 epochs under a fixed seed: (start, end)."""
    import keras

    keras.utils.set_random_seed(11)  # dropout (whose seed generators the layers draw when built) and shuffling
    estimator = iface.Estimator()
    start = estimator.get_weights()
    estimator.train(data, epochs=2, batch_size=4, learning_rate=0.001, validation_split=0.0, verbose=0, **kwargs)
    return start, estimator.get_weights()


def test_proximal_gradient_is_mu_times_the_distance(iface: ModuleType) -> None:
    """Hand-computed: with the data loss zeroed and w = w_global + 1, one SGD step of rate lr gives
    w - lr * mu (the gradient of (mu/2)||w - w_global||^2 is mu (w - w_global)), and the term is
    (mu/2) * number of parameters."""
    import keras
    from keras import ops

    mu, lr = 0.3, 0.5
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    w_global = [np.arange(6, dtype=np.float32).reshape(3, 2) / 10, np.array([0.5, -0.5], dtype=np.float32)]
    model.set_weights([w + 1.0 for w in w_global])

    class Zero(keras.losses.Loss):
        def call(self, y_true: Any, y_pred: Any) -> Any:
            return 0.0 * ops.sum(y_pred, axis=-1)  # differentiable, gradient 0: only the term moves w

    model.compile(loss=Zero(name="zero"), optimizer=keras.optimizers.SGD(learning_rate=lr))
    proximal = iface.ProximalTerm(model)
    proximal.anchor(w_global, mu)
    assert proximal.term() == pytest.approx(mu / 2 * 8)
    model.fit(np.ones((1, 3), dtype=np.float32), np.zeros((1, 2), dtype=np.float32), epochs=1, verbose=0)
    for got, anchor in zip(model.get_weights(), w_global, strict=True):
        np.testing.assert_allclose(got, anchor + 1.0 - lr * mu, rtol=1e-6)


def test_anchor_refuses_weights_of_another_model(iface: ModuleType) -> None:
    estimator = iface.Estimator()
    with pytest.raises(ValueError, match="global_weights has 2 arrays, the model 10"):
        iface.ProximalTerm(estimator.model).anchor(estimator.get_weights()[:2], 0.1)


@pytest.fixture(scope="module")
def plain(iface: ModuleType, data: Data) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training without FedProx (trained once for the tests below): (start, end)."""
    return train(iface, data)


def test_mu_zero_trains_bit_identically_to_no_term(
    iface: ModuleType, data: Data, plain: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    start, plain_end = plain
    _, zero = train(iface, data, mu=0.0, global_weights=start)
    assert any(not np.array_equal(a, b) for a, b in zip(start, plain_end, strict=True)), "training moved nothing"
    for a, b in zip(plain_end, zero, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mu_keeps_the_trained_weights_nearer_the_global_model(
    iface: ModuleType, data: Data, plain: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    start, plain_end = plain
    _, proximal = train(iface, data, mu=50.0, global_weights=start)

    def distance(weights: list[np.ndarray]) -> float:
        return float(np.sqrt(sum(np.sum((w - s).astype(np.float64) ** 2) for w, s in zip(weights, start, strict=True))))

    assert distance(proximal) < 0.9 * distance(plain_end), (distance(proximal), distance(plain_end))


def test_a_fedprox_model_saved_as_keras_loads_in_plain_keras(iface: ModuleType, data: Data, tmp_path: Path) -> None:
    """FedProx changes nothing a .keras file records (compiled loss, layer configs), so plain
    keras.models.load_model reads it without interface.py, with the trained weights."""
    import keras

    estimator = iface.Estimator()
    estimator.train(
        data, epochs=1, batch_size=4, validation_split=0.0, verbose=0, mu=0.1, global_weights=estimator.get_weights()
    )
    path = estimator.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, keras.losses.CategoricalCrossentropy)
    for a, b in zip(loaded.get_weights(), estimator.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mu_needs_the_global_weights(iface: ModuleType, data: Data) -> None:
    with pytest.raises(ValueError, match="needs the round's global_weights"):
        iface.Estimator().train(data, mu=0.1)
