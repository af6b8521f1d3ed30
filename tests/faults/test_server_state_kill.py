"""The aggregator killed -9 in the middle of a FedAdam round: the restart resumes with the optimiser's
moments of the last closed round, so every global model is still what FedAdam computes, by hand, from
the updates the edges sent (real broker, real services, the numpy training script)."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import Phase, decode_weights
from tests.faults.conftest import RigFactory, reassemble
from tests.integration.test_fedadam_job import fedadam_by_hand

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

ADAM = {"aggregation_algorithm": "FedAdam", "server_learning_rate": "0.05", "beta_1": "0.8", "beta_2": "0.95"}


def test_aggregator_sigkill_mid_fedadam_round_keeps_the_optimiser_state(rig: RigFactory) -> None:
    r = rig(2, keras=False, agg_params=ADAM, edge_params={"edge2": {"hold_rounds": "2"}})
    uid = r.kill_aggregator_mid_round_two()  # round 1 closed (a server step taken), round 2 half in
    status = r.wait_job(120)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe()
    assert status.uid == uid, "the restarted aggregator started the job over instead of resuming it"
    assert [(x.round, sorted(x.participants)) for x in status.rounds] == [(n, ["edge1", "edge2"]) for n in (1, 2, 3)]
    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    updates = r.updates_by_round(blobs, (1, 2, 3))
    (round0,) = blobs[("global", 0, "")]
    want = fedadam_by_hand(decode_weights(round0)[1], updates, eta=0.05, beta_1=0.8, beta_2=0.95, tau=1e-3)
    for round_ in (1, 2, 3):
        got = decode_weights(blobs[("global", round_, "")][-1])[1]
        for i, (g, w) in enumerate(zip(got, want[round_], strict=True)):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7, err_msg=f"round {round_}, tensor {i}")
    r.finish()
