"""Local and distributed DP in the worker API: the update's delta is clipped and noised before it leaves
the script, only when the plan's parameters say so (a real worker channel; the test plays the service)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edge_trainer import WorkerError, privatise_update
from tests.unit.test_worker_fedprox import TIMEOUT, Arrays, SednaEstimator, Worker, global_model

NAMES = ("dp_mode", "dp_clip_norm", "dp_noise_std")


@pytest.fixture(autouse=True)
def no_dp(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (*NAMES, "mu"):
        for spelling in (name, name.upper()):
            monkeypatch.delenv(spelling, raising=False)
    yield


class Stepper(SednaEstimator):
    """Moves every weight by +3 per round: a delta of norm 3*sqrt(9) = 9 from the global model."""

    def train(self, train_data: Any, valid_data: Any = None) -> Any:
        self.weights = [np.array(w) + 3.0 for w in self.weights]
        return {"loss": [1.0]}

    def set_weights(self, weights: Arrays) -> None:
        self.weights = [np.array(w) for w in weights]


def delta_norm(update: Arrays, base: Arrays) -> float:
    return float(np.sqrt(sum(np.sum((u.astype(np.float64) - b) ** 2) for u, b in zip(update, base, strict=True))))


def one_round(monkeypatch: pytest.MonkeyPatch) -> tuple[Arrays, Arrays]:
    worker = Worker(monkeypatch, Stepper())
    assert worker.recv()[0].type == "hello"
    base = global_model(1.0)
    update = worker.train_round(1, base)
    worker.stop()
    assert worker.error is None
    return update, base


def test_without_dp_parameters_the_update_leaves_as_trained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("dp_mode", "central")  # the aggregator's business: nothing on the edge
    update, base = one_round(monkeypatch)
    assert all(np.array_equal(u, b + 3.0) for u, b in zip(update, base, strict=True))


def test_local_dp_clips_the_delta_and_noises_it_with_fresh_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("dp_mode", "local")
    monkeypatch.setenv("dp_clip_norm", "0.5")
    monkeypatch.setenv("dp_noise_std", "0")
    update, base = one_round(monkeypatch)
    assert delta_norm(update, base) == pytest.approx(0.5, rel=1e-5)  # 9 clipped to 0.5, no noise
    # the direction is kept: every coordinate moved by the same amount
    moved = np.concatenate([(u - b).ravel() for u, b in zip(update, base, strict=True)])
    assert np.allclose(moved, moved[0]) and moved[0] > 0

    monkeypatch.setenv("dp_noise_std", "0.2")
    first, _ = one_round(monkeypatch)
    second, _ = one_round(monkeypatch)
    assert delta_norm(first, base) != pytest.approx(0.5, rel=1e-3)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))  # never the same noise


def test_a_bad_dp_parameter_fails_the_worker_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DP_MODE", "distributed")
    monkeypatch.setenv("dp_clip_norm", "1")
    worker = Worker(monkeypatch, Stepper())
    frame, _ = worker.recv()  # the error frame, before any hello
    worker.thread.join(TIMEOUT)
    worker.service.close()
    assert frame.type == "error" and "parameter dp_noise_std='' (dp_mode distributed): missing" in frame.message
    assert isinstance(worker.error, WorkerError)


def test_privatise_update_noise_has_the_stated_std_and_leaves_integers() -> None:
    base = [np.zeros(200_000, np.float32), np.arange(3, dtype=np.int64)]
    trained = [np.zeros(200_000, np.float32), np.arange(3, dtype=np.int64) + 1]
    rng = np.random.default_rng(11)  # a fixed seed only in this test
    noised = privatise_update(trained, base, clip_norm=1.0, noise_std=0.3, rng=rng)
    assert float(np.std(noised[0])) == pytest.approx(0.3, rel=0.02)
    assert abs(float(np.mean(noised[0]))) < 0.01
    assert noised[0].dtype == np.float32 and np.array_equal(noised[1], trained[1])


def test_privatise_update_bounds_the_norm_over_all_floating_tensors() -> None:
    base = [np.zeros((4, 4), np.float32), np.zeros(4, np.float64)]
    trained = [np.full((4, 4), 2.0, np.float32), np.full(4, -2.0, np.float64)]  # norm sqrt(80)
    clipped = privatise_update(trained, base, clip_norm=2.0, noise_std=0.0)
    assert delta_norm(clipped, base) == pytest.approx(2.0, rel=1e-6)
    small = privatise_update([np.full(4, 0.1)], [np.zeros(4)], clip_norm=2.0, noise_std=0.0)
    assert np.allclose(small[0], 0.1)  # within the bound: unchanged
