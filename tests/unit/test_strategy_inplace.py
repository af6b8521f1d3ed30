"""The in-place fold (`Strategy.fold_in_place`, the engine's fast path) equals the pure fold bit for bit.

Random updates, random sample counts and scales, every registered strategy (and DP's close on top of
FedAvg); then the engine: a job killed mid-round and restarted from its checkpoint and spool publishes
the same global model, bit for bit, as the run that was never interrupted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_aggregator import (
    AggregationState,
    FedAvg,
    Layout,
    Privacy,
    RobustStrategy,
    get_strategy,
    strategy_names,
)
from cloud_aggregator.testing import MemoryPort
from schemas import weights_digest
from tests.unit.test_aggregator_checkpoint import restarted
from tests.unit.test_aggregator_intake import send, training, transfer

Arrays = list[npt.NDArray[Any]]

# A tensor larger than one fold block (65,536 elements) and one that is not a multiple of it, an odd
# shape, an integer counter and a boolean mask: the block loop and every cast are exercised.
LAYOUT: Layout = (
    ("kernel", "float32", (300, 457)),
    ("bias", "float32", (457,)),
    ("half", "float16", (3, 5)),
    ("wide", "float64", (70_001,)),
    ("steps", "int64", (2,)),
    ("mask", "bool", (4,)),
)


def random_update(rng: np.random.Generator, scale: float = 1.0) -> Arrays:
    out: Arrays = []
    for _, dtype, shape in LAYOUT:
        kind = np.dtype(dtype).kind
        if kind == "f":
            out.append((rng.standard_normal(shape) * scale).astype(dtype))
        elif kind == "b":
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.integers(0, 1000, size=shape).astype(dtype))
    return out


def assert_same_state(a: AggregationState, b: AggregationState) -> None:
    assert (a.count, a.total_samples, a.total_weight) == (b.count, b.total_samples, b.total_weight)
    for x, y in zip(a.sums, b.sums, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit for bit, not approximately


@pytest.mark.parametrize("name", strategy_names())
def test_in_place_fold_equals_the_pure_fold_bit_for_bit(name: str) -> None:
    rng = np.random.default_rng(sum(map(ord, name)))
    strategy = get_strategy(name)
    previous = random_update(rng)
    pure = strategy.begin(LAYOUT, previous)
    fast = strategy.begin(LAYOUT, previous)
    for _ in range(5):
        update = random_update(rng, scale=float(rng.uniform(0.1, 100.0)))
        samples = int(rng.integers(1, 5000))
        scale = float(rng.choice([1.0, float(rng.uniform(0.01, 1.0))]))
        pure = strategy.fold(pure, update, samples, scale)
        fast = strategy.fold_in_place(fast, update, samples, scale)
        assert_same_state(pure, fast)
    if isinstance(strategy, RobustStrategy):
        return  # counts only: its values are aggregated from the spool at the close
    server = strategy.begin_server(LAYOUT)
    want, want_server = strategy.step(pure, previous, server)
    got, got_server = strategy.step(fast, previous, server)
    assert weights_digest(want) == weights_digest(got)
    if want_server is not None:
        assert got_server is not None and want_server.to_bytes() == got_server.to_bytes()


def test_in_place_fold_under_differential_privacy_closes_as_the_pure_one() -> None:
    """DP-FedAvg folds every update with weight 1 (`fold_scale`), then the close pads and noises the sum."""
    rng = np.random.default_rng(11)
    privacy = Privacy.of({"dp_mode": "central", "dp_noise_multiplier": "0.5", "dp_clip_norm": "1.0"}, workers=4)
    assert privacy is not None
    strategy, previous = FedAvg(), random_update(rng)
    pure = fast = strategy.begin(LAYOUT, previous)
    for _ in range(3):
        update, samples = random_update(rng), int(rng.integers(1, 500))
        pure = strategy.fold(pure, update, samples, privacy.fold_scale(samples))
        fast = strategy.fold_in_place(fast, update, samples, privacy.fold_scale(samples))
    want = privacy.close(pure, previous, np.random.default_rng(5))
    got = privacy.close(fast, previous, np.random.default_rng(5))
    assert_same_state(want, got)


def test_the_begin_state_stays_a_value_and_snapshot_freezes_a_working_state() -> None:
    rng = np.random.default_rng(2)
    strategy = FedAvg()
    empty = strategy.begin(LAYOUT)
    once = strategy.fold_in_place(empty, random_update(rng), 3)
    assert all(not s.any() for s in empty.sums) and empty.count == 0  # the first fold allocates its own
    frozen = once.snapshot()
    before = [s.copy() for s in frozen.sums]
    twice = strategy.fold_in_place(once, random_update(rng), 4)
    assert twice.sums[0] is once.sums[0]  # added in place: no new accumulator
    assert all(np.array_equal(a, b) for a, b in zip(frozen.sums, before, strict=True))
    assert all(not s.flags.writeable for s in frozen.sums) and not frozen.owned
    restored = AggregationState.from_bytes(twice.to_bytes())
    assert_same_state(restored, twice)


def test_the_in_place_fold_allocates_no_temporary_of_the_tensor_size() -> None:
    """After a round's first fold the accumulator is reused: a small scratch buffer, whatever the tensor's size."""
    import tracemalloc

    strategy = FedAvg()
    update = [np.ones(2_000_000, dtype=np.float32)]
    state = strategy.fold_in_place(strategy.begin((("w", "float32", (2_000_000,)),)), update, 1)
    tracemalloc.start()
    try:
        state = strategy.fold_in_place(state, update, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the pure fold allocates 3 x 16 MB here
    assert float(state.sums[0][0]) == 3.0 and float(state.sums[0][-1]) == 3.0


def _random_weights(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]


def test_a_restart_mid_round_publishes_the_uninterrupted_runs_model_bit_for_bit() -> None:
    """Kill after edge1's round-1 update was stored and folded; the restart refolds the spool in place."""
    first = transfer("edge1", 1, _random_weights(1), samples=17)
    second = transfer("edge2", 1, _random_weights(2), samples=5)

    straight = MemoryPort()
    job = training(straight)
    send(job, "edge1", *first, 1.0)
    send(job, "edge2", *second, 2.0)
    assert job.round == 2

    old = MemoryPort()
    job = training(old)
    send(job, "edge1", *first, 1.0)
    port, job = restarted(old)
    send(job, "edge2", *second, 102.0)
    assert job.round == 2

    want, got = straight.published_globals[-1], port.published_globals[-1]
    assert want.round == got.round == 1
    assert weights_digest(want.arrays) == weights_digest(got.arrays)
