"""Shamir secret sharing (runtime.split_secret / reconstruct_secret), the threshold secure aggregation
shares each edge's self-mask seed and mask key with: any t of n shares rebuild the secret, t-1 are
consistent with every secret, corrupted or mixed shares are refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import SHAMIR_PRIME, SecAggError, Share, reconstruct_secret, split_secret


def lagrange_at(points: list[tuple[int, int]], at: int) -> int:
    """The test's own interpolation (independent of the module's): the value at `at` through `points`."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = term * (at - xj) * pow(xi - xj, -1, SHAMIR_PRIME)
        total += term
    return total % SHAMIR_PRIME


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), n=st.integers(1, 10), data=st.data())
def test_any_threshold_shares_rebuild_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, n), label="threshold")
    shares = split_secret(secret, n, threshold)
    chosen = data.draw(st.permutations(shares), label="order")[:threshold]

    assert [share.x for share in shares] == list(range(1, n + 1))
    assert reconstruct_secret(chosen) == secret
    assert reconstruct_secret(shares) == secret  # all n: the extra ones are checked, and agree


def test_a_secret_with_leading_zero_bytes_keeps_its_length() -> None:
    secret = b"\x00\x00" + os.urandom(30)

    assert reconstruct_secret(split_secret(secret, 5, 3)[2:]) == secret


def test_fewer_than_threshold_shares_are_refused() -> None:
    shares = split_secret(os.urandom(32), 5, 3)

    with pytest.raises(SecAggError, match="2 distinct shares, the threshold is 3"):
        reconstruct_secret(shares[:2])
    with pytest.raises(SecAggError, match="1 distinct shares"):
        reconstruct_secret([shares[0], shares[0]])  # one share given twice counts once


@pytest.mark.parametrize(("n", "threshold"), [(3, 2), (5, 3), (10, 6)])
def test_threshold_minus_one_shares_fit_every_secret(n: int, threshold: int) -> None:
    """Perfect hiding: for any candidate secret there is a t-th share that makes t-1 real shares rebuild it,
    so t-1 shares rule out no secret; and interpolating the t-1 alone does not give the secret."""
    secret = os.urandom(32)
    known = split_secret(secret, n, threshold)[: threshold - 1]
    points = [(share.x, share.y) for share in known]

    for candidate in (bytes(32), b"\xff" * 32, os.urandom(32), secret):
        forged_y = lagrange_at([(0, int.from_bytes(candidate, "big")), *points], n + 1)
        forged = Share(x=n + 1, y=forged_y, threshold=threshold, size=32)
        assert reconstruct_secret([*known, forged]) == candidate

    assert lagrange_at(points, 0) != int.from_bytes(secret, "big")


def test_a_corrupted_extra_share_is_caught() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 5, 3)
    bad = Share(x=5, y=(shares[4].y + 1) % SHAMIR_PRIME, threshold=3, size=32)

    assert reconstruct_secret(shares[:3]) == secret
    with pytest.raises(SecAggError, match="x=5 is not on the polynomial"):
        reconstruct_secret([*shares[:4], bad])
    with pytest.raises(SecAggError, match="two different shares with x=5"):
        reconstruct_secret([*shares, bad])


def test_shares_of_different_secrets_do_not_mix() -> None:
    first = split_secret(os.urandom(32), 5, 3)
    other = split_secret(os.urandom(16), 5, 3)

    with pytest.raises(SecAggError, match="is of another secret"):
        reconstruct_secret([first[0], first[1], other[2]])


def test_share_bytes_round_trip_and_bad_input() -> None:
    share = split_secret(os.urandom(32), 4, 2)[3]
    data = share.to_bytes()

    assert Share.from_bytes(data) == share
    with pytest.raises(SecAggError, match="expected 71 bytes, got 70"):
        Share.from_bytes(data[:-1])
    with pytest.raises(SecAggError, match="x must be in"):
        Share.from_bytes(bytes(2) + data[2:])
    with pytest.raises(SecAggError, match="threshold <= shares"):
        split_secret(b"secret", 2, 3)
    with pytest.raises(SecAggError, match=r"1\.\.64 bytes, got 65"):
        split_secret(bytes(65), 3, 2)
