"""A poisoning edge against FedMedian, end to end: three real edges (the numpy training script) over a
real broker, one of which sends the global model plus 100 times its trained delta. The published global
models are the coordinate-wise median computed by hand from the captured updates, they stay between the
honest edges' values, and FedAvg of the same updates (computed too) would have been dragged far away."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import Phase, decode_weights
from tests.faults.conftest import RigFactory, reassemble
from tests.faults.test_robust_kill import median_by_hand

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def test_fedmedian_ignores_an_update_scaled_by_100(rig: RigFactory) -> None:
    r = rig(
        3,
        exit_round=2,
        keras=False,
        hidden=4,
        agg_params={"aggregation_algorithm": "FedMedian"},
        edge_params={"edge3": {"poison_scale": "100"}},
    )
    status = r.wait_job(120)
    assert status.phase is Phase.SUCCEEDED, r.watch.describe()
    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    updates = r.updates_by_round(blobs, (1, 2))
    (round0,) = blobs[("global", 0, "")]
    want = median_by_hand(decode_weights(round0)[1], updates)
    previous = [np.asarray(a, np.float64) for a in decode_weights(round0)[1]]
    for round_ in (1, 2):
        got = [np.asarray(a, np.float64) for a in decode_weights(blobs[("global", round_, "")][-1])[1]]
        for g, w in zip(got, want[round_], strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)
        sent = [(h.num_samples, [np.asarray(a, np.float64) for a in arrays])
                for h, arrays in (decode_weights(b) for b in updates[round_])]  # fmt: skip
        honest, poisoned = sent[:2], sent[2]
        fedavg = [sum(n * u[t] for n, u in sent) / sum(n for n, _ in sent) for t in range(len(got))]
        for t, g in enumerate(got):
            low = np.minimum(honest[0][1][t], honest[1][1][t])
            high = np.maximum(honest[0][1][t], honest[1][1][t])
            # The median of three with one extreme value lies between the other two, coordinate by coordinate.
            assert np.all((g >= low - 1e-6) & (g <= high + 1e-6)), f"round {round_}, tensor {t}"
        # How far each model moved from the honest edges' mean: FedAvg by ~100·n3/N times a delta.
        honest_mean = [(honest[0][1][t] + honest[1][1][t]) / 2 for t in range(len(got))]
        off_median = np.sqrt(sum(np.sum((g - m) ** 2) for g, m in zip(got, honest_mean, strict=True)))
        off_fedavg = np.sqrt(sum(np.sum((f - m) ** 2) for f, m in zip(fedavg, honest_mean, strict=True)))
        poison = np.sqrt(sum(np.sum((p - q) ** 2) for p, q in zip(poisoned[1], previous, strict=True)))
        assert off_fedavg > 10 * off_median, (round_, off_fedavg, off_median)
        assert off_fedavg > 0.1 * poison  # FedAvg followed the poisoned delta a good part of the way
        previous = got
    r.finish()
