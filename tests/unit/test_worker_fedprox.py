"""FedProx in the worker API: `FederatedLearning` gives the estimator the global weights of the round it
trains and `mu`, over a real worker channel (a socket pair; the test plays the node service)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_trainer import FederatedLearning, WorkerError
from runtime import WorkerChannel
from schemas import WorkerFrame, decode_weights, encode_weights

TIMEOUT = 30.0
Arrays = list[npt.NDArray[Any]]


def blob(arrays: Arrays, round_: int) -> bytes:
    return encode_weights(arrays, kind="global", job="j", round_=round_, sender="cloud0", num_samples=4)


def global_model(value: float) -> Arrays:
    return [np.full((2, 3), value, dtype=np.float32), np.full(3, -value, dtype=np.float32)]


class ProxEstimator:
    """Keeps what each train call got; trains by changing its weights in place (as some estimators do)."""

    def __init__(self) -> None:
        self.weights = global_model(0.0)
        self.calls: list[dict[str, Any]] = []

    def train(self, train_data: Any, valid_data: Any = None, global_weights: Any = None, mu: float = 0.0) -> Any:
        self.calls.append(
            {"global_weights": global_weights, "mu": mu, "seen": [np.array(a) for a in global_weights or []]}
        )
        for w in self.weights:
            np.add(w, 1.0, out=w)  # in place: the anchor the API gave must not move with it
        return {"loss": [1.0]}

    def get_weights(self) -> Arrays:
        return self.weights

    def set_weights(self, weights: Arrays) -> None:
        self.weights = weights  # keeps the API's arrays themselves


class SednaEstimator:
    """A script written for Sedna: train takes no keyword arguments beyond its own."""

    def __init__(self) -> None:
        self.weights = global_model(0.0)
        self.trained = 0

    def train(self, train_data: Any, valid_data: Any = None) -> Any:
        self.trained += 1
        return {"loss": [1.0]}

    def get_weights(self) -> Arrays:
        return self.weights

    def set_weights(self, weights: Arrays) -> None:
        self.weights = weights


class Worker:
    """`FederatedLearning(estimator).train(...)` in a thread; `service` is the node service's end."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, estimator: Any, **train_kwargs: Any) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.service = WorkerChannel(a)
        monkeypatch.setenv("FL_WORKER_FD", str(b.detach()))
        self.estimator = estimator
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(train_kwargs,), daemon=True)
        self.thread.start()

    def _run(self, train_kwargs: dict[str, Any]) -> None:
        try:
            FederatedLearning(self.estimator).train([1, 2, 3, 4], **train_kwargs)
        except BaseException as exc:  # the test reads it
            self.error = exc

    def recv(self) -> tuple[WorkerFrame, bytes | None]:
        return self.service.recv(timeout=TIMEOUT)

    def train_round(self, round_: int, arrays: Arrays) -> Arrays:
        self.service.send(WorkerFrame(type="train", round=round_, has_body=True), blob(arrays, round_))
        frame, body = self.recv()
        assert frame.type == "update" and frame.round == round_, frame
        assert body is not None
        return list(decode_weights(body)[1])

    def stop(self) -> None:
        self.service.send(WorkerFrame(type="stop"))
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        self.service.close()


@pytest.fixture(autouse=True)
def no_mu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("mu", "MU"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_each_train_call_gets_the_global_weights_of_its_round_and_mu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("mu", "0.5")
    estimator = ProxEstimator()
    worker = Worker(monkeypatch, estimator)
    assert worker.recv()[0].type == "hello"
    first = worker.train_round(1, global_model(1.0))
    worker.train_round(2, global_model(7.0))
    worker.stop()
    assert worker.error is None

    assert [c["mu"] for c in estimator.calls] == [0.5, 0.5]
    for call, value in zip(estimator.calls, (1.0, 7.0), strict=True):
        for seen, expected in zip(call["seen"], global_model(value), strict=True):
            np.testing.assert_array_equal(seen, expected)  # this round's, not the one before
        # The estimator changed its weights in place after the call: the anchor it was given did not move.
        for anchor, expected in zip(call["global_weights"], global_model(value), strict=True):
            np.testing.assert_array_equal(anchor, expected)
            assert not anchor.flags.writeable
    np.testing.assert_array_equal(first[0], np.full((2, 3), 2.0))  # trained: global + 1


def test_train_mu_keyword_wins_over_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MU", "0.5")
    estimator = ProxEstimator()
    worker = Worker(monkeypatch, estimator, mu=0.01)
    worker.recv()
    worker.train_round(1, global_model(1.0))
    worker.stop()
    assert worker.error is None and [c["mu"] for c in estimator.calls] == [0.01]


def test_without_mu_a_sedna_script_trains_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("mu", "0")
    estimator = SednaEstimator()
    worker = Worker(monkeypatch, estimator)
    worker.recv()
    worker.train_round(1, global_model(1.0))
    worker.stop()
    assert worker.error is None and estimator.trained == 1


def test_mu_with_an_estimator_that_cannot_take_it_fails_before_the_hello(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("mu", "0.5")
    worker = Worker(monkeypatch, SednaEstimator())
    frame, _ = worker.recv()
    worker.thread.join(TIMEOUT)
    assert frame.type == "error" and frame.message is not None
    assert "mu=0.5 (FedProx) but estimator.train takes no global_weights and mu" in frame.message
    assert isinstance(worker.error, WorkerError)
    worker.service.close()


@pytest.mark.parametrize("raw", ["-1", "abc", "nan", "1001"])
def test_a_bad_mu_names_the_parameter_and_the_bound(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("mu", raw)
    worker = Worker(monkeypatch, ProxEstimator())
    frame, _ = worker.recv()
    worker.thread.join(TIMEOUT)
    assert frame.type == "error"
    assert (
        frame.message
        == f"parameter mu={raw!r}: expected a number in [0, 1000] (FedProx's proximal weight; 0: plain FedAvg training)"
    )
    worker.service.close()
