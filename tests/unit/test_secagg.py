"""Secure aggregation's primitives (runtime): the fixed-point ring encoding, key agreement, masks that
cancel bit for bit, share encryption, and the whole SecAgg arithmetic of one round simulated in-process
(key advertisement, Shamir shares sealed pair by pair, masking, one edge dropping after masking, unmasking
from t survivors' shares). The MQTT protocol is not built yet (docs/dev/secagg.md)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from runtime import (
    SEED_BYTES,
    FixedPoint,
    RoundContext,
    SecAggError,
    Share,
    expand_mask,
    mask_input,
    open_share,
    reconstruct_secret,
    seal_share,
    split_secret,
    sum_masked,
    unmask_sum,
)

CONTEXT = RoundContext(job="surface-defect-detection", round=3)


def public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


# -- fixed-point encoding ---------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    values=arrays(np.float64, st.integers(1, 64), elements=st.floats(-2.0, 2.0)),
    parties=st.integers(1, 1000),
)
def test_encode_decode_round_trip_within_half_a_step(values: NDArray[np.float64], parties: int) -> None:
    fixed = FixedPoint(clip=2.0, max_parties=parties)

    decoded = fixed.decode(fixed.encode(values))

    # Half a step, plus the float64 rounding of the subtraction itself: an exact tie (1.0 with 34 parties
    # is 31580641.5 steps) is half a step away, and `decoded - values` near 1 is only good to an ulp of 1.
    ulp = np.spacing(np.maximum(np.abs(values), np.abs(decoded)))
    assert (np.abs(decoded - values) <= fixed.step / 2 + 2 * ulp).all()


@pytest.mark.parametrize(("clip", "parties"), [(1.0, 10), (8.0, 1000), (0.05, 100)])
def test_a_full_sum_at_the_clip_bound_does_not_wrap(clip: float, parties: int) -> None:
    fixed = FixedPoint(clip=clip, max_parties=parties)
    rng = np.random.default_rng(7)
    updates = [rng.uniform(-clip, clip, 50) for _ in range(parties - 2)]
    updates += [np.full(50, clip), np.full(50, -clip)]
    extreme = [np.full(50, clip)] * parties

    total = fixed.decode(sum_masked([fixed.encode(update) for update in updates]))
    top = fixed.decode(sum_masked([fixed.encode(update) for update in extreme]))

    assert np.max(np.abs(total - np.sum(updates, axis=0))) <= parties * fixed.step / 2 * (1 + 1e-9)
    assert np.max(np.abs(top - parties * clip)) <= parties * fixed.step / 2 * (1 + 1e-9)
    assert fixed.limit * parties < 2**31


def test_values_beyond_the_clip_are_clipped_and_non_finite_refused() -> None:
    fixed = FixedPoint(clip=1.0, max_parties=4)

    assert fixed.decode(fixed.encode([5.0, -5.0, 0.25])).tolist() == pytest.approx([1.0, -1.0, 0.25], abs=fixed.step)
    with pytest.raises(SecAggError, match="NaN or infinite"):
        fixed.encode([0.0, float("nan")])
    with pytest.raises(SecAggError, match="clip must be a positive finite number"):
        FixedPoint(clip=0.0, max_parties=4)
    with pytest.raises(SecAggError, match="decode expects a uint32 ring vector"):
        fixed.decode(np.zeros(3, dtype=np.int64))  # type: ignore[arg-type]


def test_weighted_encoding_decodes_to_the_sample_weighted_mean() -> None:
    fixed = FixedPoint(clip=0.5, max_parties=3)  # clip < 1: the weight slot still fits
    rng = np.random.default_rng(11)
    updates = [rng.uniform(-0.5, 0.5, 20) for _ in range(3)]
    samples = [10.0, 30.0, 60.0]

    total = sum_masked([fixed.encode_weighted(u, n, max_weight=100.0) for u, n in zip(updates, samples, strict=True)])
    mean = fixed.decode_weighted_mean(total)

    assert mean.shape == (20,)
    np.testing.assert_allclose(mean, np.average(updates, axis=0, weights=samples), atol=20 * fixed.step)
    with pytest.raises(SecAggError, match=r"weight must be in \(0, max_weight=100.0\]"):
        fixed.encode_weighted(updates[0], 101.0, max_weight=100.0)


# -- keys, masks ----------------------------------------------------------------------------------------


def test_both_parties_derive_the_same_key_bound_to_purpose_job_and_round() -> None:
    alice, bob = X25519PrivateKey.generate(), X25519PrivateKey.generate()

    key = CONTEXT.derive_key(alice, public(bob), purpose="mask", own="edge1", peer="edge2")

    assert key == CONTEXT.derive_key(bob, public(alice), purpose="mask", own="edge2", peer="edge1")
    assert len(key) == SEED_BYTES
    others = {
        CONTEXT.derive_key(alice, public(bob), purpose="share", own="edge1", peer="edge2"),
        RoundContext(CONTEXT.job, 4).derive_key(alice, public(bob), purpose="mask", own="edge1", peer="edge2"),
        RoundContext("other-job", 3).derive_key(alice, public(bob), purpose="mask", own="edge1", peer="edge2"),
        CONTEXT.derive_key(alice, public(bob), purpose="mask", own="edge1", peer="edge3"),
    }
    assert key not in others and len(others) == 4
    with pytest.raises(SecAggError, match="'edge2''s public key is not a usable X25519 key"):
        CONTEXT.derive_key(alice, bytes(32), purpose="mask", own="edge1", peer="edge2")  # low-order point
    with pytest.raises(SecAggError, match="not a usable X25519 key"):
        CONTEXT.derive_key(alice, public(bob)[:31], purpose="mask", own="edge1", peer="edge2")


def test_mask_expansion_is_deterministic_per_seed() -> None:
    seed = os.urandom(SEED_BYTES)

    first = expand_mask(seed, 1000)

    assert first.dtype == np.uint32 and first.shape == (1000,)
    assert np.array_equal(first, expand_mask(seed, 1000))
    assert np.array_equal(first[:10], expand_mask(seed, 10))  # a prefix: one keystream
    assert not np.array_equal(first, expand_mask(os.urandom(SEED_BYTES), 1000))
    with pytest.raises(SecAggError, match="a mask seed is 32 bytes, got 16"):
        expand_mask(bytes(16), 10)


def pairwise_setup(names: list[str]) -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
    """Each party's self seed, and its pair seeds derived from the others' advertised public keys."""
    keys = {name: X25519PrivateKey.generate() for name in names}
    publics = {name: public(key) for name, key in keys.items()}
    self_seeds = {name: os.urandom(SEED_BYTES) for name in names}
    pair_seeds = {
        u: {v: CONTEXT.derive_key(keys[u], publics[v], purpose="mask", own=u, peer=v) for v in names if v != u}
        for u in names
    }
    return self_seeds, pair_seeds


@pytest.mark.parametrize("parties", [2, 5, 10])
def test_masks_cancel_bit_for_bit(parties: int) -> None:
    names = [f"edge{i}" for i in range(parties)]
    fixed = FixedPoint(clip=1.0, max_parties=parties)
    rng = np.random.default_rng(parties)
    encoded = {name: fixed.encode(rng.uniform(-1, 1, 257)) for name in names}
    self_seeds, pair_seeds = pairwise_setup(names)

    masked = [
        mask_input(encoded[u], own=u, self_seed=self_seeds[u], pair_seeds=pair_seeds[u])
        for u in random.sample(names, parties)
    ]
    unmasked = unmask_sum(sum_masked(masked), self_seeds=self_seeds.values())

    assert unmasked.dtype == np.uint32
    assert np.array_equal(unmasked, sum_masked(encoded.values()))
    # Without removing the self masks, the sum is still masked.
    assert np.mean(sum_masked(masked) == sum_masked(encoded.values())) < 0.01


def test_one_masked_update_alone_is_not_its_input_and_looks_uniform() -> None:
    """A structured input (a constant, mostly zeros) comes out with uniform bytes: chi-square over the 256
    byte values with a wide bound (255 degrees of freedom: mean 255, sd 22.6; the bound is about 10 sd)."""
    fixed = FixedPoint(clip=1.0, max_parties=3)
    x = fixed.encode(np.where(np.arange(100_000) % 10 == 0, 0.5, 0.0))
    seeds = [bytes([i]) * SEED_BYTES for i in (1, 2, 3)]  # fixed seeds: the test is deterministic

    y = mask_input(x, own="edge1", self_seed=seeds[0], pair_seeds={"edge0": seeds[1], "edge2": seeds[2]})

    assert np.count_nonzero(y == x) <= 2
    counts = np.bincount(y.view(np.uint8), minlength=256)
    expected = y.nbytes / 256
    chi_square = float(np.sum((counts - expected) ** 2 / expected))
    assert chi_square < 480, chi_square
    assert abs(float(np.mean(y)) / 2**32 - 0.5) < 0.01  # the top bits too (byte counts alone mix positions)


# -- share encryption -------------------------------------------------------------------------------------


def test_sealed_shares_open_only_as_sent() -> None:
    key = os.urandom(SEED_BYTES)
    plaintext = split_secret(os.urandom(32), 3, 2)[1].to_bytes()
    sealed = seal_share(key, plaintext, context=CONTEXT, sender="edge1", receiver="edge2")

    assert open_share(key, sealed, context=CONTEXT, sender="edge1", receiver="edge2") == plaintext
    assert plaintext not in sealed
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    wrong = [
        (key, bytes(tampered), CONTEXT, "edge1", "edge2"),
        (key, sealed, RoundContext(CONTEXT.job, 4), "edge1", "edge2"),  # replayed into another round
        (key, sealed, CONTEXT, "edge2", "edge1"),  # reflected
        (key, sealed, CONTEXT, "edge1", "edge3"),  # relayed to another receiver
        (os.urandom(SEED_BYTES), sealed, CONTEXT, "edge1", "edge2"),
    ]
    for wrong_key, data, context, sender, receiver in wrong:
        with pytest.raises(SecAggError, match="does not authenticate"):
            open_share(wrong_key, data, context=context, sender=sender, receiver=receiver)


# -- one whole round of SecAgg arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(("parties", "threshold"), [(3, 2), (5, 3)])
def test_a_round_survives_a_dropout_after_masking(parties: int, threshold: int) -> None:
    """Bonawitz rounds 0-4 in-process: the sum of the survivors' encoded updates comes out exactly, from the
    shares of any t survivors; the dropped edge's masked update never arrived."""
    names = [f"edge{i}" for i in range(1, parties + 1)]
    fixed = FixedPoint(clip=1.0, max_parties=parties)
    rng = np.random.default_rng(parties)
    updates = {name: rng.uniform(-1, 1, 300) for name in names}
    samples = {name: float(rng.integers(10, 100)) for name in names}

    # 0 AdvertiseKeys: two key pairs each (c: share encryption, s: masks); the public halves are relayed.
    c_keys = {name: X25519PrivateKey.generate() for name in names}
    s_keys = {name: X25519PrivateKey.generate() for name in names}
    c_public = {name: public(key) for name, key in c_keys.items()}
    s_public = {name: public(key) for name, key in s_keys.items()}
    x_of = {name: index + 1 for index, name in enumerate(names)}  # each party's Shamir x-coordinate

    # 1 ShareKeys: shares of b_u and s_u^SK, sealed for each peer (the aggregator only relays ciphertexts);
    # each party keeps its own point of its own secrets.
    self_seeds = {name: os.urandom(SEED_BYTES) for name in names}
    relayed: dict[tuple[str, str], bytes] = {}
    kept: dict[str, bytes] = {}
    for u in names:
        b_shares = split_secret(self_seeds[u], parties, threshold)
        s_shares = split_secret(s_keys[u].private_bytes_raw(), parties, threshold)
        for v in names:
            plaintext = b_shares[x_of[v] - 1].to_bytes() + s_shares[x_of[v] - 1].to_bytes()
            if v == u:
                kept[u] = plaintext
            else:
                key = CONTEXT.derive_key(c_keys[u], c_public[v], purpose="share", own=u, peer=v)
                relayed[(u, v)] = seal_share(key, plaintext, context=CONTEXT, sender=u, receiver=v)

    # 2 MaskedInputCollection: everyone masks; a middle edge (pair signs both ways) drops before its upload arrives.
    masked = {
        u: mask_input(
            fixed.encode_weighted(updates[u], samples[u], max_weight=100.0),
            own=u,
            self_seed=self_seeds[u],
            pair_seeds={
                v: CONTEXT.derive_key(s_keys[u], s_public[v], purpose="mask", own=u, peer=v) for v in names if v != u
            },
        )
        for u in names
    }
    dropped = names[parties // 2]
    survivors = [name for name in names if name != dropped]
    masked_sum = sum_masked(masked[u] for u in survivors)

    # 4 Unmasking: any t survivors open what they hold: b-shares of survivors, s-shares of the dropped edge.
    helpers = random.Random(parties).sample(survivors, threshold)
    b_shares_of: dict[str, list[Share]] = {u: [] for u in survivors}
    s_shares_of: list[Share] = []
    for v in helpers:
        for u in names:
            if u == v:
                opened = kept[v]
            else:
                key = CONTEXT.derive_key(c_keys[v], c_public[u], purpose="share", own=v, peer=u)
                opened = open_share(key, relayed[(u, v)], context=CONTEXT, sender=u, receiver=v)
            b_share, s_share = (
                Share.from_bytes(opened[: len(opened) // 2]),
                Share.from_bytes(opened[len(opened) // 2 :]),
            )
            if u == dropped:
                s_shares_of.append(s_share)  # never the dropped edge's b-share: with both, its input would unmask
            else:
                b_shares_of[u].append(b_share)

    # The aggregator: rebuild each survivor's self seed and the dropped edge's mask key, then unmask.
    rebuilt_seeds = [reconstruct_secret(b_shares_of[u]) for u in survivors]
    dropped_key = X25519PrivateKey.from_private_bytes(reconstruct_secret(s_shares_of))
    dropped_pairs = {
        u: CONTEXT.derive_key(dropped_key, s_public[u], purpose="mask", own=dropped, peer=u) for u in survivors
    }
    unmasked = unmask_sum(masked_sum, self_seeds=rebuilt_seeds, dropped={dropped: dropped_pairs})

    expected = sum_masked(fixed.encode_weighted(updates[u], samples[u], max_weight=100.0) for u in survivors)
    assert np.array_equal(unmasked, expected)
    mean = fixed.decode_weighted_mean(unmasked)
    plain = np.average([updates[u] for u in survivors], axis=0, weights=[samples[u] for u in survivors])
    np.testing.assert_allclose(mean, plain, atol=parties * fixed.step * 10)
    # Without the dropped edge's pair masks the sum stays masked.
    leftover = unmask_sum(masked_sum, self_seeds=rebuilt_seeds)
    assert np.mean(leftover == expected) < 0.01


@settings(max_examples=25, deadline=None)
@given(parties=st.integers(2, 8), data=st.data())
def test_any_dropout_set_unmasks_exactly(parties: int, data: st.DataObject) -> None:
    """Whichever edges drop after key sharing (all but one at most), re-adding their pair masks towards the
    ones whose masked vectors arrived leaves exactly the arrived edges' encoded sum."""
    names = [f"edge{i}" for i in range(parties)]
    arrived = sorted(data.draw(st.sets(st.sampled_from(names), min_size=1), label="arrived"))
    fixed = FixedPoint(clip=1.0, max_parties=parties)
    rng = np.random.default_rng(parties)
    encoded = {name: fixed.encode(rng.uniform(-1, 1, 33)) for name in names}
    self_seeds, pair_seeds = pairwise_setup(names)

    masked_sum = sum_masked(
        mask_input(encoded[u], own=u, self_seed=self_seeds[u], pair_seeds=pair_seeds[u]) for u in arrived
    )
    dropped = {d: {u: pair_seeds[d][u] for u in arrived} for d in names if d not in arrived}
    unmasked = unmask_sum(masked_sum, self_seeds=[self_seeds[u] for u in arrived], dropped=dropped)

    assert np.array_equal(unmasked, sum_masked(encoded[u] for u in arrived))
