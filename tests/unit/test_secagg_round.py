"""One secure aggregation round through `runtime`'s party functions and the `schemas` messages, in-process:
the unmasked mean equals the weighted FedAvg of the deltas of U3, with dropouts in each phase."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import (
    FixedPoint,
    RoundContext,
    RoundSecrets,
    SecAggError,
    mask_update,
    share_bundle,
    sum_masked,
    unmask_answer,
    unmask_total,
)
from schemas import (
    SecAggMember,
    SecAggSettings,
    SecAggState,
    ShareBundle,
    UnmaskAnswer,
    b64decode,
    b64encode,
    masked_blob,
    read_masked,
)

CONTEXT = RoundContext("job-a/0123abcd", 3)


def run_round(
    names: list[str], threshold: int, *, before_upload: set[str], before_answer: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """A whole round; edges in `before_upload` drop after sharing keys, in `before_answer` after uploading.
    Returns (the decoded weighted mean delta, plain weighted FedAvg of the uploaded deltas)."""
    rng = np.random.default_rng(len(names))
    deltas = {n: rng.normal(0, 0.05, 200) for n in names}
    samples = {n: int(rng.integers(5, 50)) for n in names}
    secrets = {n: RoundSecrets.fresh() for n in names}
    adverts = [secrets[n].key_advert(job="job-a", uid="u", round_=3, node=n, num_samples=samples[n]) for n in names]
    u1 = [
        SecAggMember(node=a.node, x=i + 1, c_public=a.c_public, s_public=a.s_public, num_samples=a.num_samples)
        for i, a in enumerate(adverts)
    ]
    state = SecAggState.model_validate_json(
        SecAggState(
            job="job-a",
            uid="u",
            round=3,
            phase="shares",
            threshold=threshold,
            clip=1.0,
            max_weight=max(samples.values()),
            u1=u1,
        ).to_json()
    )
    roster = {m.node: (m.x, b64decode(m.c_public, "c")) for m in state.u1}
    bundles: dict[str, ShareBundle] = {}
    for n in names:
        sealed, secrets[n] = share_bundle(secrets[n], CONTEXT, own=n, roster=roster, threshold=threshold)
        bundles[n] = ShareBundle(
            job="job-a", uid="u", round=3, node=n, sealed={k: b64encode(v) for k, v in sealed.items()}
        )
    u2 = list(names)
    fixed = FixedPoint(clip=state.clip, max_parties=len(state.u1))
    s_publics = {m.node: b64decode(m.s_public, "s") for m in state.u1}
    uploaded = [n for n in u2 if n not in before_upload]
    vectors = []
    for n in uploaded:
        masked = mask_update(
            secrets[n],
            CONTEXT,
            own=n,
            delta=deltas[n],
            weight=samples[n],
            max_weight=state.max_weight,
            fixed=fixed,
            peers={p: s_publics[p] for p in u2},
        )
        header, vector = read_masked(masked_blob(masked, job="job-a", round_=3, sender=n, num_samples=samples[n])) or (
            None,
            None,
        )
        assert header is not None and vector is not None and np.array_equal(vector, masked)
        vectors.append(vector)
    u3 = uploaded
    c_publics = {m.node: b64decode(m.c_public, "c") for m in state.u1}
    answers = []
    for n in (n for n in u3 if n not in before_answer):
        b, s = unmask_answer(
            secrets[n],
            CONTEXT,
            own=n,
            c_publics=c_publics,
            sealed_for_me={sender: b64decode(bundles[sender].sealed[n], "sealed") for sender in u2 if sender != n},
            u2=u2,
            u3=u3,
        )
        wire = UnmaskAnswer(
            job="job-a",
            uid="u",
            round=3,
            node=n,
            u3=u3,
            b_shares={k: b64encode(v) for k, v in b.items()},
            s_shares={k: b64encode(v) for k, v in s.items()},
        )
        assert not set(wire.b_shares) & set(wire.s_shares)  # never both secrets of one member
        answers.append(
            (
                {k: b64decode(v, "b") for k, v in wire.b_shares.items()},
                {k: b64decode(v, "s") for k, v in wire.s_shares.items()},
            )
        )
    total = unmask_total(
        sum_masked(vectors), CONTEXT, s_publics=s_publics, u2=u2, u3=u3, answers=answers, threshold=threshold
    )
    mean = fixed.decode_weighted_mean(total)
    plain = np.average([deltas[n] for n in u3], axis=0, weights=[samples[n] for n in u3])
    return mean, plain


@pytest.mark.parametrize(
    ("parties", "threshold", "before_upload", "before_answer"),
    [
        (3, 2, set(), set()),
        (3, 2, set(), {"edge3"}),  # the case: dropped after its masked upload
        (5, 3, {"edge2"}, {"edge4"}),  # one of each
        (4, 2, {"edge1", "edge4"}, set()),
    ],
)
def test_round_unmasks_to_weighted_fedavg(
    parties: int, threshold: int, before_upload: set[str], before_answer: set[str]
) -> None:
    names = [f"edge{i}" for i in range(1, parties + 1)]
    mean, plain = run_round(names, threshold, before_upload=before_upload, before_answer=before_answer)
    np.testing.assert_allclose(mean, plain, atol=1e-7)


def test_too_few_answers_cannot_unmask() -> None:
    with pytest.raises(SecAggError, match="threshold"):
        run_round(["edge1", "edge2", "edge3"], 3, before_upload=set(), before_answer={"edge1"})


def test_an_answer_refuses_a_u3_outside_u2_and_secrets_round_trip() -> None:
    secrets = RoundSecrets.fresh()
    assert RoundSecrets.from_json(secrets.to_json()) == secrets
    with pytest.raises(SecAggError, match="not in U2"):
        unmask_answer(
            secrets, CONTEXT, own="edge1", c_publics={}, sealed_for_me={}, u2=["edge1"], u3=["edge1", "edge2"]
        )
    with pytest.raises(SecAggError, match="unreadable"):
        RoundSecrets.from_json({"cPrivate": "zz"})


def test_settings_from_parameters() -> None:
    assert SecAggSettings.of({}, 3) is None
    assert SecAggSettings.of({"secure_aggregation": "false"}, 3) is None
    settings = SecAggSettings.of({"SECURE_AGGREGATION": "True"}, 5)
    assert settings is not None and settings.threshold == 3 and settings.clip == 8.0
    explicit = SecAggSettings.of({"secure_aggregation": "true", "secagg_threshold": "2", "secagg_clip": "0.5"}, 3)
    assert explicit == SecAggSettings(threshold=2, clip=0.5)
    with pytest.raises(ValueError, match=r"secagg_threshold=4: expected 2\.\.3"):
        SecAggSettings.of({"secure_aggregation": "true", "secagg_threshold": "4"}, 3)
    with pytest.raises(ValueError, match="at least 2 training workers"):
        SecAggSettings.of({"secure_aggregation": "true"}, 1)
