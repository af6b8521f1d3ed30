"""Robust aggregation rules and norm clipping against results computed by hand."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from cloud_aggregator import (
    AggregationState,
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    RobustUpdate,
    StrategyError,
    get_strategy,
)

ZERO = [np.zeros(1, np.float32)]


def scalars(values: list[float], samples: list[int] | None = None) -> list[RobustUpdate]:
    counts = samples or [10] * len(values)
    return [
        RobustUpdate(f"n{i}", n, [np.array([v], np.float32)])
        for i, (v, n) in enumerate(zip(values, counts, strict=True))
    ]


def value(weights: list[npt.NDArray[np.float32]]) -> float:
    return float(weights[0][0])


# The reference example (algorithms.md §3): [0, 0.1, 0.3, 0.35, 10] with f = 1.
REFERENCE = [0.0, 0.1, 0.3, 0.35, 10.0]


def test_reference_values_of_every_rule() -> None:
    updates = scalars(REFERENCE)
    assert value(FedMedian().aggregate(updates, ZERO).weights) == pytest.approx(0.3)
    trimmed = FedTrimmedAvg(trim_beta=0.2).aggregate(updates, ZERO)  # int(0.2 * 5) = 1 at each end
    assert value(trimmed.weights) == pytest.approx(0.25)  # (0.1 + 0.3 + 0.35) / 3
    krum = Krum(krum_f=1).aggregate(updates, ZERO)
    assert value(krum.weights) == pytest.approx(0.3)
    # Scores: sum of the m-f-2 = 2 smallest squared distances to the others.
    assert krum.notes == {
        "n0": "excluded by Krum (score 0.1)",  # 0.01 + 0.09
        "n1": "excluded by Krum (score 0.05)",  # 0.01 + 0.04
        "n2": "kept by Krum (score 0.0425)",  # 0.0025 + 0.04
        "n3": "excluded by Krum (score 0.065)",  # 0.0025 + 0.0625
        "n4": "excluded by Krum (score 187.212)",  # 9.65^2 + 9.7^2
    }
    assert krum.excluded == ("n0", "n1", "n3", "n4")
    multi = MultiKrum(krum_f=1, krum_m=3).aggregate(updates, ZERO)
    assert value(multi.weights) == pytest.approx(0.25)  # (0.1 + 0.3 + 0.35) / 3
    assert multi.excluded == ("n0", "n4")


def test_bulyan_selects_by_repeated_krum_then_averages_the_closest_to_the_median() -> None:
    """m = 7, f = 1: θ = 5 picks, β = 3. Krum scores over the updates left (4, 3, 2, 1, 0 nearest):
    n2 (0.1425), n1 (0.1625), n3 (0.125), then n0 and n4 tie at 0.16 (the first name wins), then n4;
    the picks [0, 0.1, 0.3, 0.35, 0.4] have median 0.3, and its 3 closest, 0.3, 0.35, 0.4, average 0.35."""
    updates = scalars([0.0, 0.1, 0.3, 0.35, 0.4, 10.0, -8.0])
    result = Bulyan(krum_f=1).aggregate(updates, ZERO)
    assert value(result.weights) == pytest.approx(0.35)
    assert result.excluded == ("n5", "n6")
    assert result.notes == {
        "n0": "selected by Bulyan (4 of 5)",
        "n1": "selected by Bulyan (2 of 5)",
        "n2": "selected by Bulyan (1 of 5)",
        "n3": "selected by Bulyan (3 of 5)",
        "n4": "selected by Bulyan (5 of 5)",
        "n5": "excluded by Bulyan",
        "n6": "excluded by Bulyan",
    }
    with pytest.raises(StrategyError, match="Bulyan with krum_f=1 needs at least 7 updates, the round has 6"):
        Bulyan(krum_f=1).aggregate(updates[:6], ZERO)
    assert isinstance(get_strategy("bulyan", {"krum_f": "2"}), Bulyan)


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    assert value(FedMedian().aggregate(scalars([1, 2, 3, 10]), ZERO).weights) == pytest.approx(2.5)


def test_rules_apply_to_deltas_from_the_previous_model() -> None:
    previous = [np.array([5.0], np.float32)]
    # Deltas -4, -3, -2, 5 around 5: the median delta is -2.5, so the model is 2.5 (same as on values).
    assert value(FedMedian().aggregate(scalars([1, 2, 3, 10]), previous).weights) == pytest.approx(2.5)


def test_trimmed_mean_cuts_int_beta_m_at_each_end_and_notes_it() -> None:
    updates = scalars([1, 2, 3, 10])
    trimmed = FedTrimmedAvg(trim_beta=0.25).aggregate(updates, ZERO)  # k = 1: mean of 2 and 3
    assert value(trimmed.weights) == pytest.approx(2.5)
    assert trimmed.notes == {"n0": "trimmed at 1 of 1 coordinates", "n3": "trimmed at 1 of 1 coordinates"}
    assert trimmed.excluded == ()
    # int(0.2 * 4) = 0 (Flower's rule): nothing is trimmed, the plain mean.
    assert value(FedTrimmedAvg(trim_beta=0.2).aggregate(updates, ZERO).weights) == pytest.approx(4.0)


def test_per_coordinate_rules_work_per_coordinate() -> None:
    updates = [
        RobustUpdate("a", 1, [np.array([[1.0, 9.0]], np.float32)]),
        RobustUpdate("b", 1, [np.array([[2.0, 8.0]], np.float32)]),
        RobustUpdate("c", 1, [np.array([[30.0, -70.0]], np.float32)]),
    ]
    result = FedMedian().aggregate(updates, [np.zeros((1, 2), np.float32)])
    np.testing.assert_allclose(result.weights[0], [[2.0, 8.0]])
    assert result.weights[0].dtype == np.float32


def honest_and_attacker(attack: float) -> list[RobustUpdate]:
    honest = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.05], [1.05, 1.1], [0.95, 0.95]]
    updates = [RobustUpdate(f"edge{i}", 10 * (i + 1), [np.array(h, np.float64)]) for i, h in enumerate(honest)]
    return [*updates, RobustUpdate("attacker", 10, [np.array([1.0, 1.0]) * attack])]


@pytest.mark.parametrize("attack", [-1.0, -100.0, 100.0], ids=["sign-flipped", "flipped-scaled", "scaled"])
def test_krum_keeps_an_honest_update_and_excludes_the_attacker(attack: float) -> None:
    updates = honest_and_attacker(attack)
    result = Krum(krum_f=1).aggregate(updates, [np.zeros(2)])
    assert "attacker" in result.excluded
    assert result.notes["attacker"].startswith("excluded by Krum")
    kept = [u for u in updates if u.node not in result.excluded]
    assert len(kept) == 1
    np.testing.assert_array_equal(result.weights[0], kept[0].arrays[0])
    # edge0 = [1, 1] is nearest to the other honest ones; by hand, its squared distances to edge4 (0.005),
    # edge2 (0.0125), edge3 (0.0125), edge1 (0.02): the m-f-2 = 3 nearest sum to 0.03, the smallest score
    # (edge4's is 0.005 + 0.0125 + 0.025 = 0.0425).
    assert kept[0].node == "edge0"
    assert result.notes["edge0"] == "kept by Krum (score 0.03)"
    assert result.notes["edge4"] == "excluded by Krum (score 0.0425)"


def test_multikrum_averages_the_kept_updates_by_samples() -> None:
    updates = honest_and_attacker(-100.0)
    result = MultiKrum(krum_f=1, krum_m=0).aggregate(updates, [np.zeros(2)])  # keeps m - f = 5
    assert result.excluded == ("attacker",)
    honest = updates[:5]
    total = sum(u.num_samples for u in honest)
    want = sum(u.num_samples * np.asarray(u.arrays[0]) for u in honest) / total
    np.testing.assert_allclose(result.weights[0], want)


def test_krum_refuses_too_few_updates() -> None:
    with pytest.raises(StrategyError, match=r"Krum with krum_f=1 needs more than 4 updates, the round has 4"):
        Krum(krum_f=1).aggregate(scalars([1, 2, 3, 4]), ZERO)
    with pytest.raises(StrategyError, match="krum_m=9 must be between 1 and the round's 5 updates"):
        MultiKrum(krum_f=1, krum_m=9).aggregate(scalars(REFERENCE), ZERO)


def test_krum_counts_identical_updates_as_neighbours() -> None:
    """Flower skips self by argsort position, which breaks on duplicates; we skip by index."""
    result = Krum(krum_f=1).aggregate(scalars([1, 1, 1, 1, 50]), ZERO)
    assert value(result.weights) == 1.0 and result.excluded[-1] == "n4"


def test_the_result_does_not_depend_on_the_spool_order() -> None:
    updates = scalars(REFERENCE)
    for strategy in (FedMedian(), FedTrimmedAvg(), Krum(), MultiKrum()):
        forward = strategy.aggregate(updates, ZERO)
        backward = strategy.aggregate(updates[::-1], ZERO)
        assert [w.tobytes() for w in forward.weights] == [w.tobytes() for w in backward.weights]
        assert forward.notes == backward.notes


def test_clipping_scales_the_delta_to_clip_norm() -> None:
    strategy = get_strategy("FedAvg", {"clip_norm": "1"})
    previous = [np.array([1.0, 1.0], np.float32), np.array([7], np.int64)]
    arrays = [np.array([4.0, 5.0], np.float32), np.array([9], np.int64)]  # float delta (3, 4): norm 5
    clipped, note = strategy.clip(arrays, previous)
    np.testing.assert_allclose(clipped[0], [1.6, 1.8], rtol=1e-6)  # 1 + 3/5, 1 + 4/5
    assert clipped[0].dtype == np.float32
    assert clipped[1].tolist() == [9]  # integer tensors are not a direction: untouched
    assert note == "clipped from norm 5 to 1"
    same, none = strategy.clip([np.array([1.5, 1.0], np.float32), arrays[1]], previous)
    assert none is None and same[0].tolist() == [1.5, 1.0]
    assert "clip_norm=1" in strategy.describe()


def test_clipping_comes_before_a_robust_rule() -> None:
    strategy = get_strategy("FedMedian", {"clip_norm": "2"})
    result = strategy.aggregate(scalars([1, 4, 10]), ZERO)  # deltas clipped to 1, 2, 2 -> median 2
    assert value(result.weights) == pytest.approx(2.0)
    assert result.notes == {"n1": "clipped from norm 4 to 2", "n2": "clipped from norm 10 to 2"}


def test_integer_tensors_are_rounded_back() -> None:
    updates = [RobustUpdate(f"n{i}", 1, [np.array([v], np.int32)]) for i, v in enumerate([1, 2, 4, 7])]
    result = FedMedian().aggregate(updates, [np.zeros(1, np.int32)])
    assert result.weights[0].dtype == np.int32 and result.weights[0].tolist() == [3]  # 3.0 exactly


def test_fold_only_counts_and_its_state_round_trips() -> None:
    strategy = get_strategy("FedMedian")
    layout = (("w", "float32", (1000,)),)
    state = strategy.begin(layout)
    state = strategy.fold(state, [np.ones(1000, np.float32)], 7)
    assert state.count == 1 and state.total_samples == 7
    assert all(s.size == 0 for s in state.sums)  # no accumulator of the model's size
    again = AggregationState.from_bytes(state.to_bytes())
    assert again.count == 1 and again.total_samples == 7 and again.layout == layout
    with pytest.raises(StrategyError, match="needs the round's updates"):
        strategy.finish(state)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"aggregation_algorithm": "x", "trim_beta": "0.5"}, "trim_beta='0.5'"),
        ({"krum_f": "1.5"}, "krum_f='1.5'"),
        ({"clip_norm": "-1"}, "clip_norm='-1'"),
        ({"CLIP_NORM": "nan"}, "clip_norm='nan'"),
    ],
)
def test_parameters_out_of_bounds_are_refused(params: dict[str, str], message: str) -> None:
    name = "FedTrimmedAvg" if "trim_beta" in params else "Krum"
    with pytest.raises(StrategyError, match=message):
        get_strategy(name, params)


def test_names_and_hyper_parameters() -> None:
    assert isinstance(get_strategy("fed_median"), FedMedian) and isinstance(get_strategy("median"), FedMedian)
    trimmed = get_strategy("FedTrimmedAvg", {"TRIM_BETA": "0.1"})
    assert trimmed.hyper == {"trim_beta": 0.1}
    multi = get_strategy("multi-krum", {"krum_f": "2", "krum_m": "3"})
    assert isinstance(multi, MultiKrum) and multi.hyper == {"krum_f": 2, "krum_m": 3}
    assert not isinstance(get_strategy("FedAvg"), FedMedian) and isinstance(get_strategy("FedAvg"), FedAvg)
