"""Secure aggregation end to end: three real edges (the numpy training script), the real aggregator, one
real broker, and a capture of every message of the job's rounds.

The wire-level test takes the aggregator's seat: from everything the edges published (adverts, sealed
bundles, masked updates, unmask answers) it rebuilds all an honest-but-curious aggregator can rebuild
(each self-mask seed, from the b-shares the answers carry) and shows that each edge's update stays hidden
under its pairwise masks (whose private keys no answer reveals), while the sum decodes to plain FedAvg of
the true updates (the scripts record what they trained). The dropout test kills an edge right after its
masked upload was stored: the round still closes, from two answers of three, with that edge's update in.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from runtime import FixedPoint, Share, expand_mask, reconstruct_secret
from schemas import (
    Channel,
    KeyAdvert,
    Phase,
    SecAggState,
    ShareBundle,
    UnmaskAnswer,
    b64decode,
    decode_weights,
    read_masked,
)
from tests.faults.conftest import Rig, RigFactory, reassemble

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

SECAGG = {"secure_aggregation": "true"}
RECORD = {"record_updates": "1"}

Arrays = list[np.ndarray]


def recorded(root: Path) -> list[tuple[Arrays, Arrays]]:
    """(start weights, trained weights) of every train call the edge's scripts recorded."""
    out = []
    for path in sorted((root / "recorded").glob("*.npz")):
        with np.load(path) as data:
            arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        half = len(arrays) // 2
        out.append((arrays[:half], arrays[half:]))
    return out


def true_update(r: Rig, edge: str, previous: Arrays) -> Arrays:
    """What `edge`'s script trained from the global model `previous` (the one recorded call that started there)."""
    found = [
        trained
        for start, trained in recorded(r.tmp / edge)
        if all(np.array_equal(s, p) for s, p in zip(start, previous, strict=True))
    ]
    assert found, f"{edge} recorded no training from this global model"
    return found[-1]


def flat(arrays: Arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def secagg_messages(r: Rig) -> dict[int, dict[Channel, list[tuple[str | None, bytes]]]]:
    """Every non-empty secure aggregation message by round and channel: (publishing node or None, payload)."""
    assert r.capture is not None
    out: dict[int, dict[Channel, list[tuple[str | None, bytes]]]] = defaultdict(lambda: defaultdict(list))
    for topic, payload in r.capture.messages:
        parsed = r.topics.parse(topic)
        if payload and parsed.round is not None and parsed.channel.value.startswith("secagg"):
            out[parsed.round][parsed.channel].append((parsed.node, payload))
    return out


def assert_global_is_fedavg(r: Rig, blobs: dict[tuple[str, int, str], list[bytes]], round_: int) -> None:
    previous = decode_weights(blobs[("global", round_ - 1, "")][-1])[1]
    trained = {edge: true_update(r, edge, previous) for edge in r.edges}
    weights = [r.samples(edge) for edge in r.edges]
    got = decode_weights(blobs[("global", round_, "")][-1])[1]
    for t, g in enumerate(got):
        want = np.average([np.float64(trained[e][t]) for e in r.edges], axis=0, weights=weights)
        np.testing.assert_allclose(np.float64(g), want, rtol=1e-5, atol=1e-6, err_msg=f"round {round_} tensor {t}")


def test_the_aggregator_holds_only_masked_updates_until_the_sum_unmasks(rig: RigFactory) -> None:
    r = rig(3, exit_round=2, keras=False, hidden=4, proxies=False, agg_params=SECAGG, common_params=RECORD)
    status = r.wait_job(180)
    assert status.phase is Phase.SUCCEEDED, r.watch.describe() + r.logs()
    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    messages = secagg_messages(r)

    for round_ in (1, 2):
        assert_global_is_fedavg(r, blobs, round_)
        states = [SecAggState.model_validate_json(p) for _, p in messages[round_][Channel.SECAGG_STATE]]
        assert [s.phase for s in states][:5] == ["keys", "shares", "masked", "unmask", "closed"]
        final = next(s for s in states if s.phase == "unmask")
        assert sorted(final.u3) == r.edges and final.threshold == 2
        fixed = FixedPoint(final.clip, max_parties=len(final.u1))
        answers = [UnmaskAnswer.model_validate_json(p) for _, p in messages[round_][Channel.SECAGG_UNMASK]]
        assert len({a.node for a in answers}) >= final.threshold
        previous = decode_weights(blobs[("global", round_ - 1, "")][-1])[1]
        for edge in r.edges:
            # What the edge published: public keys, sealed shares, its masked update. No plaintext.
            (advert_json,) = {p for n, p in messages[round_][Channel.SECAGG_KEYS] if n == edge}
            (bundle_json,) = {p for n, p in messages[round_][Channel.SECAGG_SHARES] if n == edge}
            advert, bundle = KeyAdvert.model_validate_json(advert_json), ShareBundle.model_validate_json(bundle_json)
            assert advert.node == edge and sorted(bundle.sealed) == [e for e in r.edges if e != edge]
            (blob,) = blobs[("update", round_, edge)]
            masked = read_masked(blob)
            assert masked is not None, f"{edge}'s round-{round_} upload is not a masked blob"
            trained = true_update(r, edge, previous)
            delta = flat(trained) - flat(previous)
            for payload in [blob, advert_json, bundle_json]:
                assert np.asarray(trained[0], dtype=np.float32).tobytes()[:64] not in payload

            # The aggregator's best: every answer's b-share of this edge rebuilds its self mask...
            assert all(edge not in a.s_shares for a in answers), "an answer revealed a mask key of an edge in U3"
            shares = [Share.from_bytes(b64decode(a.b_shares[edge], "share")) for a in answers if edge in a.b_shares]
            seed = reconstruct_secret(shares[: final.threshold])
            unmasked_self = masked[1] - expand_mask(seed, masked[1].size)
            # ...but the pairwise masks stay: what is left decodes to noise, not to the edge's delta.
            guess = fixed.decode(unmasked_self)[:-1]
            ratio = r.samples(edge) / final.max_weight
            assert guess.size == delta.size
            assert abs(float(np.corrcoef(guess, delta * ratio)[0, 1])) < 0.5
            assert float(np.max(np.abs(guess - delta * ratio))) > 100 * float(np.max(np.abs(delta))) + 1.0

    # When the job is over no secure aggregation message stays retained: each topic's last message is empty.
    last: dict[str, bytes] = {}
    for topic, payload in r.capture.messages:
        if "/secagg/" in topic:
            last[topic] = payload
    assert last and all(payload == b"" for payload in last.values()), sorted(t for t, p in last.items() if p)
    r.finish()


def test_a_round_completes_when_an_edge_dies_after_its_masked_upload(rig: RigFactory) -> None:
    """edge1 and edge2 are held in round 1 while edge3 uploads; edge3's service is killed once the aggregator
    stored its masked update (it never answers the unmask phase); edge1 and edge2 then train and answer: two
    answers of three rebuild edge3's self mask, and round 1's model is FedAvg of all three updates. edge3
    comes back and takes part in round 2."""
    held = {"edge1": {"hold_rounds": "1"}, "edge2": {"hold_rounds": "1"}}
    r = rig(
        3,
        exit_round=2,
        keras=False,
        hidden=4,
        proxies=False,
        agg_params=SECAGG,
        common_params=RECORD,
        edge_params=held,
    )
    r.watch.wait(
        lambda x: any(a.node == "edge3" and a.round == 1 and a.accepted for a in x.acks),
        timeout=120,
        what="edge3's masked round-1 update stored",
    )
    assert r.cluster.kill_node("edge3") == -9
    r.open_gate("edge1", 1)
    r.open_gate("edge2", 1)
    r.watch.wait(lambda x: x.status is not None and x.status.current_round >= 1, timeout=120, what="round 1 closed")
    r.cluster.restart_node("edge3")
    status = r.wait_job(180)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe() + r.logs()
    assert r.capture is not None
    messages = secagg_messages(r)
    answered = {n for n, _ in messages[1][Channel.SECAGG_UNMASK]}
    assert answered == {"edge1", "edge2"}, answered  # edge3 never answered round 1
    round_one = next(record for record in status.rounds if record.round == 1)
    assert sorted(round_one.participants) == r.edges
    blobs = reassemble(r.capture.messages, r.topics)
    for round_ in (1, 2):
        assert_global_is_fedavg(r, blobs, round_)
    r.finish()


def test_a_secure_round_survives_a_broker_that_comes_back_empty(rig: RigFactory) -> None:
    """Round 1 in phase masked (keys and bundles exchanged, the edges held in training); the broker is killed
    and comes back without any retained message, and edge3's service restarts meanwhile (its in-memory copies
    of the others' bundles gone): the aggregator publishes the round's state and every bundle again from its
    record, edge3 continues from its round file, and the round unmasks to FedAvg of all three updates."""
    r = rig(
        3,
        exit_round=1,
        keras=False,
        hidden=4,
        proxies=False,
        agg_params={**SECAGG, "secagg_threshold": "3"},  # edge3's answer is needed: it must read the bundles
        common_params={**RECORD, "hold_rounds": "1"},
    )
    r.watch.wait(
        lambda x: x.status is not None and "secure aggregation phase masked" in (x.status.message or ""),
        timeout=120,
        what="round 1 in phase masked",
    )
    r.kill_broker()
    r.cluster.restart_node("edge3")
    for edge in r.edges:
        r.open_gate(edge, 1)
    status = r.wait_job(180)

    assert status.phase is Phase.SUCCEEDED, r.watch.describe() + r.logs()
    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    assert_global_is_fedavg(r, blobs, 1)
    r.finish()
