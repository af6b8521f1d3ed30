"""An asynchronous job end to end: three real edges (the numpy training script) over a real broker, buffers of
two updates. edge3 is held in its first round (a slow edge) while edge1 and edge2 close rounds 1 and 2 without
it; edge1 is then held in round 3, and edge3's round-1 update, trained from model version 0, fills round 3's
buffer beside edge2's: two versions stale, rebased onto version 2 and discounted by (1 + 2) ** -0.5. The test
recomputes round 3's global model by hand from the captured blobs and reads the round's record, which says
which version each update was trained from."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import Phase, RoundRecord, decode_weights
from tests.faults.conftest import RigFactory, reassemble

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def test_a_slow_edges_stale_update_is_folded_into_a_later_buffer(rig: RigFactory) -> None:
    r = rig(
        3,
        exit_round=4,
        keras=False,
        hidden=4,
        proxies=False,
        agg_params={"aggregation_mode": "async", "buffer_size": "2", "max_staleness": "3"},
        edge_params={"edge3": {"hold_rounds": "1"}, "edge1": {"hold_rounds": "3"}},
    )
    r.watch.wait_rounds(2, timeout=120)  # edge1 and edge2 alone: edge3 is still in round 1
    r.open_gate("edge3", 1)
    r.watch.wait_rounds(3, timeout=60)
    r.open_gate("edge1", 3)
    status = r.wait_job(120)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe()
    assert [sorted(record.participants) for record in status.rounds[:2]] == [["edge1", "edge2"]] * 2
    assert r.capture is not None
    records = {
        record.round: record
        for record in (
            RoundRecord.model_validate_json(payload)
            for topic, payload in r.capture.messages
            if topic.endswith("/record") and payload
        )
    }
    round3 = records[3]
    assert round3.workers is not None
    assert sorted((w.node, w.trained_from, w.staleness) for w in round3.workers) == [
        ("edge2", 2, 0),
        ("edge3", 0, 2),
    ], round3
    assert round3.missing == [] and round3.stale == 1
    stale = [e.message for e in r.watch.events if e.reason == "UpdateAccepted" and "versions stale" in e.message]
    assert any(m.startswith("update from edge3 for round 1 ") and "2 versions stale) into round 3" in m for m in stale)

    # Round 3 by hand: edge3's update rebased onto v2, weighed n3 / sqrt(3); edge2's as it is, weighed n2.
    blobs = reassemble(r.capture.messages, r.topics)
    v0 = decode_weights(blobs[("global", 0, "")][-1])[1]
    v2 = decode_weights(blobs[("global", 2, "")][-1])[1]
    (u3,) = blobs[("update", 1, "edge3")]
    (u2,) = blobs[("update", 3, "edge2")]
    h3, a3 = decode_weights(u3)
    h2, a2 = decode_weights(u2)
    w3, w2 = h3.num_samples * 3**-0.5, float(h2.num_samples)
    got = decode_weights(blobs[("global", 3, "")][-1])[1]
    for t, g in enumerate(got):
        rebased = np.float64(v2[t]) + (np.float64(a3[t]) - np.float64(v0[t]))
        want = (w3 * rebased.astype(np.float32) + w2 * np.float64(a2[t])) / (w3 + w2)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=f"tensor {t}")
        # Not FedAvg of the raw weights: edge3's old model would pull the global model back towards v0.
        raw = (h3.num_samples * np.float64(a3[t]) + w2 * np.float64(a2[t])) / (h3.num_samples + w2)
        assert not np.allclose(g, raw, rtol=1e-4), f"tensor {t}"

    # Every edge ends with the final model, the slow one included. The job succeeds once the final round's
    # participants saved it (as a synchronous job does); the one left out of that round saves it too.
    for edge in r.edges:
        r.watch.wait_worker(edge, "Completed", None, timeout=60)
    digests = {node: w.model_digest for node, w in r.watch.workers.items()}
    assert set(digests) == {"edge1", "edge2", "edge3"} and len(set(digests.values())) == 1, digests
    r.finish()
