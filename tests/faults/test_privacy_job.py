"""Differential privacy end to end: two real edges (the numpy training script) over a real broker.

Central DP: the edges send their updates as trained; the aggregator clips and noises (checked against the
captured blobs: the global model minus the mean of the clipped deltas has the noise's std).

Distributed DP: the plan tells each edge its clip norm and its share of the noise, and each update leaves
its training script already clipped and noised (the captured update's delta from the global model is the
noise's size, far past the clip norm, though the script trains a delta of its own). The aggregator folds
the updates with equal weights over both edges, and the budget allows two of the four planned rounds: the
job ends Succeeded after round 2, its status and round records carrying the epsilon dp-accounting gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from cloud_aggregator import epsilon_spent
from schemas import Phase, decode_weights
from tests.faults.conftest import RigFactory, reassemble

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

CLIP, Z, DELTA = 0.02, 1.0, 1e-5


def test_a_distributed_dp_job_noises_on_the_edges_and_stops_at_its_budget(rig: RigFactory) -> None:
    budget = (epsilon_spent(2, Z, DELTA) + epsilon_spent(3, Z, DELTA)) / 2  # two rounds fit, three do not
    dp = {
        "dp_mode": "distributed",
        "dp_clip_norm": str(CLIP),
        "dp_noise_multiplier": str(Z),
        "dp_delta": str(DELTA),
        "dp_target_epsilon": f"{budget:.6f}",
    }
    r = rig(2, exit_round=4, keras=False, hidden=4, proxies=False, agg_params=dp)
    status = r.wait_job(150)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe()
    assert status.exit_round == 4 and status.current_round == 2
    assert [record.round for record in status.rounds] == [1, 2]
    for record in status.rounds:
        assert record.epsilon == pytest.approx(epsilon_spent(record.round, Z, DELTA), rel=1e-5)
    privacy = status.privacy
    assert privacy is not None and privacy.mode == "distributed" and privacy.budget_spent and privacy.rounds == 2
    assert "privacy budget spent" in status.message
    assert any(e.reason == "PrivacyBudgetSpent" for e in r.watch.events)

    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    share = Z * CLIP / np.sqrt(2)  # each edge's noise std
    for round_ in (1, 2):
        previous = [np.float64(a) for a in decode_weights(blobs[("global", round_ - 1, "")][-1])[1]]
        deltas = []
        for edge in r.edges:
            (update,) = blobs[("update", round_, edge)]
            delta = [np.float64(a) - p for a, p in zip(decode_weights(update)[1], previous, strict=True)]
            deltas.append(delta)
            size = sum(d.size for d in delta)
            norm = float(np.sqrt(sum(np.sum(d**2) for d in delta)))
            # clipped to CLIP, plus noise of norm ~ share * sqrt(size): far above the clip norm alone
            assert norm > 2 * CLIP and norm == pytest.approx(share * np.sqrt(size), rel=0.5), (edge, round_, norm)
        # Both edges in: no noise added at the aggregator; the global model is the uniform mean of the two.
        got = decode_weights(blobs[("global", round_, "")][-1])[1]
        for t, g in enumerate(got):
            want = previous[t] + (deltas[0][t] + deltas[1][t]) / 2
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=f"round {round_} tensor {t}")
    assert ("global", 3, "") not in blobs
    r.finish()


def test_a_central_dp_job_clips_and_noises_at_the_aggregator(rig: RigFactory) -> None:
    """Central DP: the edges send their updates as trained; each round's global model is the previous one
    plus the mean of the clipped deltas plus noise of std z*C/n, and the status reports epsilon."""
    clip, z = 0.01, 2.0
    dp = {"dp_mode": "central", "dp_clip_norm": str(clip), "dp_noise_multiplier": str(z)}
    r = rig(2, exit_round=2, keras=False, hidden=4, proxies=False, agg_params=dp)
    status = r.wait_job(150)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe()
    assert status.privacy is not None and status.privacy.mode == "central" and not status.privacy.budget_spent
    assert status.privacy.epsilon == pytest.approx(epsilon_spent(2, z, DELTA), rel=1e-5)
    assert [record.epsilon for record in status.rounds] == [
        pytest.approx(epsilon_spent(t, z, DELTA), rel=1e-5) for t in (1, 2)
    ]
    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    residuals = []
    for round_ in (1, 2):
        previous = [np.float64(a) for a in decode_weights(blobs[("global", round_ - 1, "")][-1])[1]]
        clipped = []
        for edge in r.edges:
            (update,) = blobs[("update", round_, edge)]
            delta = [np.float64(a) - p for a, p in zip(decode_weights(update)[1], previous, strict=True)]
            norm = float(np.sqrt(sum(np.sum(d**2) for d in delta)))
            assert norm > clip  # the edge sent its delta as trained, unclipped
            clipped.append([d * min(1.0, clip / norm) for d in delta])
        got = decode_weights(blobs[("global", round_, "")][-1])[1]
        for t, g in enumerate(got):
            residuals.append(np.float64(g) - (previous[t] + (clipped[0][t] + clipped[1][t]) / 2))
    noise = np.concatenate([x.ravel() for x in residuals])  # 2 rounds x 36 coordinates
    assert float(noise.std()) == pytest.approx(z * clip / 2, rel=0.35)
    r.finish()
