"""Aggregation strategies: FedAvg is the sample-weighted mean, pure, streaming and order-independent."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cloud_aggregator import (
    AggregationState,
    AggregatorError,
    FedAvg,
    Layout,
    Strategy,
    StrategyError,
    get_strategy,
    strategy_names,
)

Arrays = list[npt.NDArray[Any]]


def layout_of(arrays: Arrays) -> Layout:
    return tuple((f"w{i}", a.dtype.name, tuple(a.shape)) for i, a in enumerate(arrays))


def random_model(rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> Arrays:
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


def aggregate(strategy: Strategy, updates: list[tuple[Arrays, int]]) -> Arrays:
    state = strategy.begin(layout_of(updates[0][0]))
    for arrays, n in updates:
        state = strategy.fold(state, arrays, n)
    return strategy.finish(state)


def numpy_weighted_mean(updates: list[tuple[Arrays, int]]) -> Arrays:
    total = sum(n for _, n in updates)
    result: Arrays = []
    for i, first in enumerate(updates[0][0]):
        acc = np.zeros(first.shape, np.float64)
        for arrays, n in updates:
            acc += arrays[i].astype(np.float64) * n
        result.append((acc / total).astype(first.dtype))
    return result


def test_fedavg_equals_numpy_weighted_mean() -> None:
    """FedAvg over several float32 tensors of random sizes equals numpy's sample-weighted mean."""
    rng = np.random.default_rng(1)
    shapes = [tuple(int(d) for d in rng.integers(1, 9, size=rng.integers(1, 4))) for _ in range(5)]
    updates = [(random_model(rng, shapes), int(rng.integers(1, 500))) for _ in range(4)]

    result = aggregate(FedAvg(), updates)

    expected = numpy_weighted_mean(updates)
    for got, want in zip(result, expected, strict=True):
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    shapes=st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), min_size=1, max_size=4),
    count=st.integers(min_value=1, max_value=5),
)
def test_fedavg_matches_weighted_mean_property(data: st.DataObject, shapes: list[tuple[int, ...]], count: int) -> None:
    """For any shapes, float32 values and positive sample counts, FedAvg is the weighted mean (float tolerance)."""
    elements = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
    updates = [
        (
            [data.draw(hnp.arrays(np.float32, shape, elements=elements)) for shape in shapes],
            data.draw(st.integers(min_value=1, max_value=10_000)),
        )
        for _ in range(count)
    ]

    result = aggregate(FedAvg(), updates)

    for got, want in zip(result, numpy_weighted_mean(updates), strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_fold_order_does_not_matter() -> None:
    """Folding the same updates in another order gives the same model within float tolerance."""
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    updates = [(random_model(rng, shapes), int(rng.integers(1, 100))) for _ in range(6)]

    forward = aggregate(FedAvg(), updates)
    backward = aggregate(FedAvg(), list(reversed(updates)))
    shuffled = aggregate(FedAvg(), [updates[i] for i in rng.permutation(len(updates))])

    for a, b, c in zip(forward, backward, shuffled, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6)


def test_inputs_are_not_mutated() -> None:
    """fold and finish leave the update arrays and the previous state untouched; states are read-only."""
    rng = np.random.default_rng(3)
    arrays = random_model(rng, [(5,), (2, 3)])
    copies = [a.copy() for a in arrays]
    strategy = FedAvg()
    empty = strategy.begin(layout_of(arrays))

    once = strategy.fold(empty, arrays, 10)
    twice = strategy.fold(once, arrays, 30)
    result = strategy.finish(twice)

    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert empty.count == 0 and empty.total_samples == 0
    assert all(not s.any() for s in empty.sums)
    assert once.count == 1 and once.total_samples == 10
    assert all(not s.flags.writeable for s in twice.sums)
    result[0][0] = 99.0  # the result is the caller's own
    np.testing.assert_allclose(strategy.finish(twice)[0], copies[0], rtol=1e-6)


def test_memory_does_not_grow_with_updates() -> None:
    """The state holds one float64 accumulator per tensor, whatever the number of folded updates."""
    rng = np.random.default_rng(4)
    arrays = random_model(rng, [(16, 16), (16,)])
    strategy = FedAvg()
    state = strategy.begin(layout_of(arrays))
    size = sum(s.nbytes for s in state.sums)

    for n in range(1, 50):
        state = strategy.fold(state, arrays, n)

    assert sum(s.nbytes for s in state.sums) == size
    assert state.count == 49


def test_state_round_trips_through_bytes() -> None:
    """A mid-round state serialised and restored continues exactly where it left off."""
    rng = np.random.default_rng(5)
    a, b = random_model(rng, [(3, 3), (7,)]), random_model(rng, [(3, 3), (7,)])
    strategy = FedAvg()
    state = strategy.fold(strategy.begin(layout_of(a)), a, 5)

    restored = AggregationState.from_bytes(state.to_bytes())
    resumed = strategy.finish(strategy.fold(restored, b, 7))

    direct = strategy.finish(strategy.fold(state, b, 7))
    for x, y in zip(resumed, direct, strict=True):
        np.testing.assert_array_equal(x, y)
    assert restored.layout == state.layout and restored.total_samples == 5


def test_fold_rejects_arrays_that_do_not_fit() -> None:
    """Wrong tensor count, shape, dtype or a non-positive sample count raise StrategyError."""
    arrays = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    strategy = FedAvg()
    state = strategy.begin(layout_of(arrays))

    with pytest.raises(StrategyError, match="expected 2 tensors"):
        strategy.fold(state, arrays[:1], 1)
    with pytest.raises(StrategyError, match=r"tensor 1 \(w1\)"):
        strategy.fold(state, [arrays[0], np.zeros(4, np.float32)], 1)
    with pytest.raises(StrategyError, match="float32"):
        strategy.fold(state, [arrays[0], np.zeros(3, np.float64)], 1)
    with pytest.raises(StrategyError, match="num_samples"):
        strategy.fold(state, arrays, 0)
    with pytest.raises(StrategyError, match="nothing to average"):
        strategy.finish(state)


def test_unknown_strategy_names_the_known_ones() -> None:
    """An unknown aggregation name raises StrategyError listing the registered names."""
    with pytest.raises(StrategyError) as info:
        get_strategy("FedProx")

    assert "FedProx" in str(info.value)
    assert "FedAvg" in str(info.value)
    assert isinstance(info.value, AggregatorError)


@pytest.mark.parametrize("name", ["FedAvg", "fedavg", "FEDAVG", "fed_avg", "Fed-Avg"])
def test_fedavg_aliases(name: str) -> None:
    """FedAvg is found case-insensitively, ignoring '-' and '_'."""
    assert isinstance(get_strategy(name), FedAvg)
    assert strategy_names() == [
        "Bulyan",
        "FedAdagrad",
        "FedAdam",
        "FedAvg",
        "FedAvgM",
        "FedMedian",
        "FedTrimmedAvg",
        "FedYogi",
        "Krum",
        "MultiKrum",
    ]


def test_integer_tensors_are_rounded_back() -> None:
    """Non-float tensors are averaged in float64 and rounded back to their dtype."""
    strategy = FedAvg()
    a, b = [np.array([1, 2], np.int32)], [np.array([2, 4], np.int32)]

    result = aggregate(strategy, [(a, 1), (b, 1)])

    assert result[0].dtype == np.int32
    np.testing.assert_array_equal(result[0], [2, 3])


def test_fedprox_as_a_server_rule_says_it_is_the_training_workers_mu() -> None:
    """FedProx is not a server-side rule (its server averages): a user who writes it where Sedna's YAML names
    the aggregation learns where it goes instead."""
    with pytest.raises(StrategyError) as info:
        get_strategy("Fed_Prox")

    assert "FedProx is client-side" in str(info.value) and "mu parameter" in str(info.value)
    with pytest.raises(StrategyError) as other:
        get_strategy("FedNope")
    assert "client-side" not in str(other.value)
