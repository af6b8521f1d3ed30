"""Server-side optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) against results computed by hand.

Each test runs three rounds of two updates (1 and 3 samples) on a tiny model: a float64 vector, a
float32 vector (cast back every round) and an int64 counter (which takes the plain mean). The expected
values are computed here, formula by formula, with numpy; the strategy is only driven through
`begin`/`fold`/`step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_aggregator import (
    AggregatorError,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    ServerState,
    Strategy,
    StrategyError,
    get_strategy,
)
from schemas import PARAMETER_BOUNDS

Arrays = list[npt.NDArray[Any]]
F64 = npt.NDArray[np.float64]

X0: Arrays = [np.array([1.0, -0.5]), np.array([0.25, 2.0], np.float32), np.array([4], np.int64)]
LAYOUT = (("w", "float64", (2,)), ("b", "float32", (2,)), ("count", "int64", (1,)))
# Round r: (update of edge A with 1 sample, update of edge B with 3 samples)
ROUNDS: list[tuple[Arrays, Arrays]] = [
    (
        [np.array([0.6, 0.1]), np.array([0.5, 1.0], np.float32), np.array([3], np.int64)],
        [np.array([1.2, -0.9]), np.array([0.0, 2.5], np.float32), np.array([7], np.int64)],
    ),
    (
        [np.array([0.2, 0.4]), np.array([1.0, 0.0], np.float32), np.array([1], np.int64)],
        [np.array([0.9, -0.3]), np.array([-0.5, 1.5], np.float32), np.array([2], np.int64)],
    ),
    (
        [np.array([-1.0, 2.0]), np.array([0.3, 0.3], np.float32), np.array([8], np.int64)],
        [np.array([0.5, 0.5]), np.array([0.1, 0.7], np.float32), np.array([8], np.int64)],
    ),
]


def run(strategy: Strategy) -> list[Arrays]:
    """The global model after each round, the server state carried from round to round."""
    x, server = X0, strategy.begin_server(LAYOUT)
    out = []
    for a, b in ROUNDS:
        state = strategy.fold(strategy.fold(strategy.begin(LAYOUT, x), a, 1), b, 3)
        x, server = strategy.step(state, x, server)
        out.append(x)
    return out


def expected(update: Callable[[F64, F64, dict[str, F64]], F64], slots: tuple[str, ...]) -> list[Arrays]:
    """By hand: the weighted mean (1·a + 3·b)/4 per tensor, then `update` on each float tensor."""
    x = [np.array(t) for t in X0]
    state = [{k: np.zeros(2) for k in slots}, {k: np.zeros(2) for k in slots}]
    out = []
    for a, b in ROUNDS:
        mean = [(1.0 * np.asarray(a[i], np.float64) + 3.0 * np.asarray(b[i], np.float64)) / 4.0 for i in range(3)]
        w = update(np.asarray(x[0], np.float64), mean[0], state[0])
        f = update(np.asarray(x[1], np.float64), mean[1], state[1]).astype(np.float32)
        c = np.rint(mean[2]).astype(np.int64)  # the counter: the plain mean, rounded
        x = [w, f, c]
        out.append(x)
    return out


def check(got: list[Arrays], want: list[Arrays]) -> None:
    for r, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        assert [a.dtype for a in g] == [np.float64, np.float32, np.int64], r
        np.testing.assert_allclose(g[0], w[0], rtol=1e-12, atol=1e-15, err_msg=f"round {r}")
        np.testing.assert_allclose(g[1], w[1], rtol=1e-6, err_msg=f"round {r}")
        np.testing.assert_array_equal(g[2], w[2], err_msg=f"round {r}")


def test_fedavgm_three_rounds_by_hand() -> None:
    eta, beta = 0.7, 0.5

    def update(x: F64, mean: F64, s: dict[str, F64]) -> F64:
        g = x - mean  # the pseudo-gradient: opposite sign of the progress
        s["v"] = beta * s["v"] + g
        return x - eta * s["v"]

    check(run(FedAvgM(server_learning_rate=eta, server_momentum=beta)), expected(update, ("v",)))


def test_fedadam_three_rounds_by_hand() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3

    def update(x: F64, mean: F64, s: dict[str, F64]) -> F64:
        d = mean - x
        s["m"] = b1 * s["m"] + (1 - b1) * d
        s["v"] = b2 * s["v"] + (1 - b2) * d * d
        return x + eta * s["m"] / (np.sqrt(s["v"]) + tau)

    check(run(FedAdam()), expected(update, ("m", "v")))


def test_fedyogi_three_rounds_by_hand() -> None:
    eta, b1, b2, tau = 0.05, 0.8, 0.9, 1e-2

    def update(x: F64, mean: F64, s: dict[str, F64]) -> F64:
        d = mean - x
        s["m"] = b1 * s["m"] + (1 - b1) * d
        s["v"] = s["v"] - (1 - b2) * d * d * np.sign(s["v"] - d * d)
        return x + eta * s["m"] / (np.sqrt(s["v"]) + tau)

    strategy = FedYogi(server_learning_rate=eta, beta_1=b1, beta_2=b2, tau=tau)
    check(run(strategy), expected(update, ("m", "v")))


def test_fedadagrad_three_rounds_by_hand() -> None:
    eta, tau = 0.1, 1e-3

    def update(x: F64, mean: F64, s: dict[str, F64]) -> F64:
        d = mean - x
        s["m"] = d  # beta_1 = 0 by default: m is the progress itself
        s["v"] = s["v"] + d * d
        return x + eta * s["m"] / (np.sqrt(s["v"]) + tau)

    check(run(FedAdagrad()), expected(update, ("m", "v")))


def one_step(strategy: Strategy, x: float, mean: float) -> float:
    layout = (("w", "float64", ()),)
    state = strategy.fold(strategy.begin(layout), [np.array(mean)], 1)
    return float(strategy.finish(state, [np.array(x)])[0])


def test_published_reference_values() -> None:
    """The scalar cases of docs' reference (Reddi et al.; Hsu et al.), with the stated hyper-parameters."""
    assert one_step(FedAdam(), 0.0, 0.1) == pytest.approx(0.0909091, abs=1e-7)
    assert one_step(FedYogi(server_learning_rate=0.1), 0.0, 0.1) == pytest.approx(0.0909091, abs=1e-7)
    assert one_step(FedAdagrad(), 0.0, 0.1) == pytest.approx(0.0990099, abs=1e-7)
    momentum = FedAvgM(server_learning_rate=1.0, server_momentum=0.9)
    layout = (("w", "float64", ()),)
    x, server = [np.array(1.0)], momentum.begin_server(layout)
    for mean, want in ((0.8, 0.8), (0.7, 0.52)):
        x, server = momentum.step(momentum.fold(momentum.begin(layout), [np.array(mean)], 1), x, server)
        assert float(x[0]) == pytest.approx(want)


def test_fedavgm_without_momentum_is_fedavg() -> None:
    plain = FedAvgM(server_learning_rate=1.0, server_momentum=0.0)
    x = X0
    server = plain.begin_server(LAYOUT)
    for a, b in ROUNDS:
        state = plain.fold(plain.fold(plain.begin(LAYOUT), a, 1), b, 3)
        x, server = plain.step(state, x, server)
        avg = FedAvg()
        want = avg.finish(avg.fold(avg.fold(avg.begin(LAYOUT), a, 1), b, 3))
        for got, w in zip(x, want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-6)


@pytest.mark.parametrize("cls", [FedAvgM, FedAdam, FedYogi, FedAdagrad])
def test_server_state_round_trips_without_pickle_and_is_never_mutated(cls: type[Strategy]) -> None:
    strategy = cls()
    server = strategy.begin_server(LAYOUT)
    assert server is not None and server.steps == 0
    state = strategy.fold(strategy.fold(strategy.begin(LAYOUT), ROUNDS[0][0], 1), ROUNDS[0][1], 3)
    before = server.to_bytes()
    _, after = strategy.step(state, X0, server)
    assert server.to_bytes() == before  # the old state is a value
    assert after is not None and after.steps == 1
    copy = ServerState.from_bytes(after.to_bytes())
    assert copy.strategy == cls.name and copy.layout == LAYOUT and copy.steps == 1
    for k in after.slots:
        for a, b in zip(after.slots[k], copy.slots[k], strict=True):
            np.testing.assert_array_equal(a, b)
            assert not b.flags.writeable
    with pytest.raises(StrategyError, match="not a serialised server state"):
        ServerState.from_bytes(b"not an npz")


def test_a_server_state_of_another_strategy_is_refused() -> None:
    state = FedAdam().fold(FedAdam().begin(LAYOUT), ROUNDS[0][0], 1)
    with pytest.raises(StrategyError, match="belongs to FedAvgM"):
        FedAdam().step(state, X0, FedAvgM().begin_server(LAYOUT))


def test_fedavg_keeps_no_server_state() -> None:
    assert FedAvg().begin_server(LAYOUT) is None


def test_hyper_parameters_come_from_the_aggregation_workers_parameters() -> None:
    """Own name or UPPERCASE spelling, defaults otherwise; other parameters are the script's business."""
    strategy = get_strategy("fed_adam", {"beta_1": "0.5", "TAU": "0.01", "exit_round": "3", "learning_rate": "9"})
    assert dict(strategy.hyper) == {"server_learning_rate": 0.1, "beta_1": 0.5, "beta_2": 0.99, "tau": 0.01}
    assert strategy.describe() == "FedAdam (server_learning_rate=0.1, beta_1=0.5, beta_2=0.99, tau=0.01)"
    assert dict(get_strategy("FedAvgM").hyper) == {"server_learning_rate": 1.0, "server_momentum": 0.9}
    assert dict(get_strategy("FedYogi").hyper)["server_learning_rate"] == 0.01
    assert set(get_strategy("FedAdagrad").hyper) == {"server_learning_rate", "beta_1", "tau"}
    assert get_strategy("FedAvg", {"server_momentum": "0.5"}).describe() == "FedAvg"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beta_2": "1"}, "aggregationWorker parameter beta_2='1' (FedAdam): expected a number in [0, 1)"),
        ({"TAU": "0"}, "aggregationWorker parameter TAU='0' (FedAdam): expected a number in (0, 1]"),
        ({"server_learning_rate": "nan"}, "server_learning_rate='nan' (FedAdam): expected a number in (0, 10]"),
    ],
)
def test_hyper_parameters_out_of_bounds_are_refused(params: dict[str, str], message: str) -> None:
    with pytest.raises(StrategyError) as info:
        get_strategy("FedAdam", params)
    assert message in str(info.value) and isinstance(info.value, AggregatorError)


def test_every_hyper_parameter_has_a_bound_that_holds_its_default() -> None:
    """The single rule: each strategy's hyper-parameters are in schemas.PARAMETER_BOUNDS."""
    for cls in (FedAvgM, FedAdam, FedYogi, FedAdagrad):
        for name, default in cls.defaults.items():
            assert PARAMETER_BOUNDS[name].problem(repr(default)) is None, (cls.name, name)


def test_unknown_hyper_parameter_in_code_is_refused() -> None:
    with pytest.raises(StrategyError, match="FedAvgM has no hyper-parameter beta_1"):
        FedAvgM(beta_1=0.5)
