"""benchmarks/fleet_data.py: the splits, poisons and strategy specs of benchmarks/strategies.py (numpy only)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

FLEET_DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet_data.py"


@pytest.fixture(scope="module")
def fd() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fleet_data", FLEET_DATA)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_iid_split_is_a_partition_of_near_equal_parts(fd: ModuleType) -> None:
    parts = fd.iid_split(1043, 5, np.random.default_rng(3))
    assert sorted(len(p) for p in parts) == [208, 208, 209, 209, 209]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1043))
    again = fd.iid_split(1043, 5, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_skewed_split_gives_edge_one_the_defect_share(fd: ModuleType) -> None:
    # 300 defects, 700 defect-free: edge 1 gets 240 defects, the 4 others 15 each; 140 defect-free each.
    y = np.array([1] * 300 + [0] * 700)
    parts = fd.skewed_split(y, 5, 0.8, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    assert [int(y[p].sum()) for p in parts] == [240, 15, 15, 15, 15]
    assert [int((y[p] == 0).sum()) for p in parts] == [140] * 5


def test_skewed_split_refuses_an_edge_left_empty(fd: ModuleType) -> None:
    with pytest.raises(ValueError, match="empty"):
        fd.skewed_split(np.array([1, 1, 0]), 5, 1.0, np.random.default_rng(0))


def test_poisons_and_the_delta_norm(fd: ModuleType) -> None:
    previous = [np.array([1.0, 2.0], dtype=np.float32), np.array([[0.5]], dtype=np.float32)]
    update = [np.array([1.5, 1.0], dtype=np.float32), np.array([[0.5]], dtype=np.float32)]
    flipped = fd.sign_flip(update, previous)
    assert [a.tolist() for a in flipped] == [[0.5, 3.0], [[0.5]]]
    assert flipped[0].dtype == np.float32
    assert [a.tolist() for a in fd.scale_delta(update, previous, 100.0)] == [[51.0, -98.0], [[0.5]]]
    assert fd.delta_norm(update, previous) == pytest.approx(math.sqrt(0.25 + 1.0))


def test_parse_variant_maps_fedprox_to_fedavg_with_mu(fd: ModuleType) -> None:
    prox = fd.parse_variant("FedProx:mu=0.01")
    assert (prox.aggregation, prox.parameters, prox.mu) == ("FedAvg", {}, 0.01)
    adam = fd.parse_variant("FedAdam:server_learning_rate=0.01, beta_1=0.9")
    assert (adam.aggregation, adam.parameters, adam.mu) == (
        "FedAdam",
        {"server_learning_rate": "0.01", "beta_1": "0.9"},
        0.0,
    )
    with pytest.raises(ValueError, match="mu > 0"):
        fd.parse_variant("FedProx")
    with pytest.raises(ValueError, match="not key=value"):
        fd.parse_variant("FedAvg:clip_norm")


def test_mean_std_and_the_table(fd: ModuleType) -> None:
    assert fd.pm([0.9, 0.92, math.nan]) == "0.910 ± 0.014"
    assert fd.pm([math.nan]) == "failed"
    assert fd.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
