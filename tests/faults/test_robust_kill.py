"""The aggregator killed -9 in the middle of a FedMedian round: the restart closes the round from the
durable spool, so every global model is still the coordinate-wise median computed by hand from the
updates the edges sent (real broker, real services, the numpy training script)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from schemas import Phase, decode_weights
from tests.faults.conftest import RigFactory, reassemble

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

MEDIAN = {"aggregation_algorithm": "FedMedian"}


def median_by_hand(
    start: list[npt.NDArray[np.generic]], updates: dict[int, list[bytes]]
) -> dict[int, list[npt.NDArray[np.float64]]]:
    """Round by round: previous + the coordinate-wise median of the deltas, sample counts ignored."""
    model = [np.asarray(a, dtype=np.float64) for a in start]
    out = {}
    for round_ in sorted(updates):
        arrays = [decode_weights(blob)[1] for blob in updates[round_]]
        model = [
            (p + np.median(np.stack([np.asarray(u[t], np.float64) - p for u in arrays]), axis=0))
            .astype(start[t].dtype)
            .astype(np.float64)
            for t, p in enumerate(model)
        ]
        out[round_] = model
    return out


def test_aggregator_sigkill_mid_fedmedian_round_closes_it_from_the_spool(rig: RigFactory) -> None:
    r = rig(2, keras=False, agg_params=MEDIAN, edge_params={"edge2": {"hold_rounds": "2"}})
    uid = r.kill_aggregator_mid_round_two()  # round 1 closed, edge1's round-2 update is in the spool
    status = r.wait_job(120)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe()
    assert status.uid == uid, "the restarted aggregator started the job over instead of resuming it"
    assert [(x.round, sorted(x.participants), x.excluded) for x in status.rounds] == [
        (n, ["edge1", "edge2"], 0) for n in (1, 2, 3)
    ]
    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    updates = r.updates_by_round(blobs, (1, 2, 3))
    (round0,) = blobs[("global", 0, "")]
    want = median_by_hand(decode_weights(round0)[1], updates)
    for round_ in (1, 2, 3):
        got = decode_weights(blobs[("global", round_, "")][-1])[1]
        for i, (g, w) in enumerate(zip(got, want[round_], strict=True)):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7, err_msg=f"round {round_}, tensor {i}")
    r.finish()
