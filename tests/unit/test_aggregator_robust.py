"""The engine with a robust rule: the round closes from the spool, its record audits each update, and an
aggregator killed mid-close restarts to the same global model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from cloud_aggregator import StateError
from cloud_aggregator.engine import SpooledUpdate, Stage
from cloud_aggregator.service import StateStore
from cloud_aggregator.testing import MemoryPort
from schemas import Phase
from tests.unit.test_aggregator_intake import transfer
from tests.unit.test_aggregator_server_state import EDGES, begin, deliver, globals_of, started, update_of
from tests.unit.test_job_rounds import JOB

MEDIAN = {"aggregation_algorithm": "FedMedian"}


def by_hand_round1() -> list[np.ndarray]:
    """Round 1 of `update_of` from the init [zeros(3,2), ones(4)], worked out by hand: the median of two
    deltas is their plain mean (samples 10 and 30 do not count), so tensor 0 is the mean of
    0.1 + 0.01·i and -0.05 + 0.01·i, tensor 1 the mean of i + 1 and -0.5·i + 1."""
    i6 = np.arange(6, dtype=np.float64).reshape(3, 2)
    i4 = np.arange(4, dtype=np.float64)
    return [(0.025 + 0.01 * i6).astype(np.float32), (0.25 * i4 + 1.0).astype(np.float32)]


def test_fedmedian_closes_from_the_spool_to_the_hand_computed_model() -> None:
    port = MemoryPort()
    job = begin(port, MEDIAN)
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    assert job.round == 2
    got = port.published_globals[-1]
    assert got.round == 1
    for a, want in zip(got.arrays, by_hand_round1(), strict=True):
        np.testing.assert_allclose(a, want, rtol=1e-6)
    # FedAvg (sample-weighted 10:30) gives another model: tensor 0 would be -0.0125 + 0.01·i.
    assert not np.allclose(got.arrays[0], (-0.0125 + 0.01 * np.arange(6).reshape(3, 2)))
    record = port.round_records[(JOB, 1)]
    assert record is not None and record.excluded == 0
    assert record.workers is not None and [w.robust for w in record.workers] == [None, None]
    assert port.job_status(JOB).rounds[-1].excluded == 0  # the summary keeps the count


def test_clip_norm_is_applied_before_fedavg_and_audited() -> None:
    port = MemoryPort()
    job = begin(port, {"aggregation_algorithm": "FedAvg", "clip_norm": "0.5"})
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    record = port.round_records[(JOB, 1)]
    assert record is not None and record.workers is not None and record.excluded is None
    notes = {w.node: w.robust for w in record.workers}
    # edge1's delta: 0.1 + 0.01·i (i < 6) and 0, 1, 2, 3; squares 0.0955 + 14: norm sqrt(14.0955) = 3.7544.
    assert notes["edge1"] is not None and notes["edge1"].startswith("clipped from norm 3.754")
    assert notes["edge1"].endswith(" to 0.5")
    closed = [e.message for e in port.job_status(JOB).events if e.reason == "RoundClosed"]
    assert closed[0].startswith("round 1: FedAvg (clip_norm=0.5) of 2 updates")


def test_a_kill_mid_close_reruns_the_close_identically() -> None:
    """Both updates of round 1 are in the spool but the round's checkpoint is not written (the process
    died while closing): the restart refolds the spool and publishes the very bytes of an uninterrupted run."""
    clean = MemoryPort()
    job = begin(clean, MEDIAN)
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    want = globals_of(clean)[1]

    old = MemoryPort()
    job = begin(old, MEDIAN)
    deliver(job, "edge1", 1, 1.0)
    # edge2's update reaches the spool, then SIGKILL before the round's close is committed.
    manifest, chunks = transfer("edge2", 1, update_of("edge2", 1), samples=30)
    old.store_update(JOB, 1, "edge2", manifest.transfer, b"".join(chunks))
    assert old.disk.checkpoints[JOB][0].closed_round == 0 and 1 not in globals_of(old)

    for attempt in (1, 2):  # each restart from the disk exactly as the crash left it
        port = MemoryPort(disk=copy.deepcopy(old.disk))
        job = started(port, MEDIAN, resume=True, at=100.0 * attempt)
        assert job.stage is Stage.TRAINING and job.round == 2
        assert globals_of(port)[1] == want
        assert port.disk.checkpoints[JOB][0].closed_round == 1
        assert 1 not in port.disk.spool.get(JOB, {})  # committed, then the spool dropped


def test_the_state_store_maps_a_spooled_update_read_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.store_update(JOB, 1, "edge1", "ab" * 8, b"blob-1")
    view = store.read_spooled_update(JOB, 1, "edge1", "ab" * 8)
    assert view.readonly and bytes(view) == b"blob-1"
    store.drop_spool(JOB, 1)  # the mapping outlives the file's name
    assert bytes(view) == b"blob-1"
    with pytest.raises(StateError, match="cannot read the spooled update of edge2 for round 1"):
        store.read_spooled_update(JOB, 1, "edge2", "cd" * 8)


def test_a_spooled_update_lost_before_the_close_fails_the_round_naming_it() -> None:
    port = MemoryPort()
    job = begin(port, MEDIAN)
    deliver(job, "edge1", 1, 1.0)
    port.disk.spool[JOB][1][0] = SpooledUpdate("edge1", port.disk.spool[JOB][1][0].transfer, b"garbage")
    deliver(job, "edge2", 1, 1.0)
    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert status.message.startswith("round 1: the spooled update of edge1 cannot be read: ")
    assert status.conditions[-1].reason == "AggregationFailed"


def test_krum_with_too_few_updates_fails_the_round_naming_krum_f() -> None:
    port = MemoryPort()
    job = begin(port, {"aggregation_algorithm": "Krum", "krum_f": "1"})
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert status.message == "round 1: Krum with krum_f=1 needs more than 4 updates, the round has 2"


def test_a_robust_rule_clips_at_its_close_and_audits_it() -> None:
    port = MemoryPort()
    job = begin(port, {**MEDIAN, "clip_norm": "0.5"})
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    record = port.round_records[(JOB, 1)]
    assert record is not None and record.workers is not None
    notes = {w.node: w.robust for w in record.workers}
    assert notes["edge1"] is not None and notes["edge1"].startswith("clipped from norm 3.754")
    assert notes["edge2"] is not None and notes["edge2"].endswith(" to 0.5")
    # Both deltas now have norm 0.5: the model moved by at most 0.5 from the init.
    moved = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(
        port.published_globals[-1].arrays, [np.zeros((3, 2)), np.ones(4)], strict=True)))  # fmt: skip
    assert moved <= 0.5 + 1e-6
