"""Shamir secret sharing of a short byte secret (a 32-byte mask seed, an X25519 private key).

Secure aggregation (docs/dev/secagg.md) shares each edge's self-mask seed and mask private key t-of-n among
the round's edges, so the aggregator can cancel the masks of an edge that dropped out with the help of any
t survivors, while fewer than t (a curious aggregator holding t-1 colluding edges' shares) learn nothing.

The field is GF(p) with p = 2**521 - 1 (a Mersenne prime): it holds any secret of up to 64 bytes as one
field element, so one polynomial per secret and no chunking. A share is the point (x, f(x)) of a random
polynomial f of degree t-1 with f(0) = the secret; x = 1..n (never 0, which is the secret itself). Any t
points fix f; with t-1 points every value of f(0) is equally likely (for each candidate secret there is
exactly one polynomial through it and the t-1 points), which is what "reveal nothing" means here. The
coefficients come from `secrets` (the OS CSPRNG). Python's ints do the arithmetic exactly; no library in
our dependencies does Shamir (`cryptography` has none), and the whole scheme is these few lines.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from runtime._errors import SecAggError

__all__ = ["SHAMIR_PRIME", "Share", "reconstruct_secret", "split_secret"]

SHAMIR_PRIME = 2**521 - 1
MAX_SECRET_BYTES = 64  # 512 bits < 521: every secret is one field element
MAX_SHARES = 65535  # x fits 2 bytes in the share's byte form
_Y_BYTES = (SHAMIR_PRIME.bit_length() + 7) // 8  # 66
_HEADER = 2 + 2 + 1  # x, threshold, secret size
SHARE_BYTES = _HEADER + _Y_BYTES


@dataclass(frozen=True)
class Share:
    """One point of a secret's polynomial, with what reconstruction needs to check and to give bytes back.

    `threshold` is t (how many shares rebuild the secret); `size` the secret's length in bytes (a leading
    zero byte would otherwise be lost in the integer).
    """

    x: int
    y: int
    threshold: int
    size: int

    def __post_init__(self) -> None:
        if not 1 <= self.x <= MAX_SHARES:
            raise SecAggError(f"Shamir share: x must be in 1..{MAX_SHARES}, got {self.x}")
        if not 0 <= self.y < SHAMIR_PRIME:
            raise SecAggError("Shamir share: y must be a field element (0 <= y < 2**521 - 1)")
        if not 1 <= self.threshold <= MAX_SHARES:
            raise SecAggError(f"Shamir share: threshold must be in 1..{MAX_SHARES}, got {self.threshold}")
        if not 1 <= self.size <= MAX_SECRET_BYTES:
            raise SecAggError(f"Shamir share: secret size must be 1..{MAX_SECRET_BYTES} bytes, got {self.size}")

    def to_bytes(self) -> bytes:
        """Fixed-length big-endian form (`SHARE_BYTES` long): what gets encrypted for the receiving party."""
        return (
            self.x.to_bytes(2, "big")
            + self.threshold.to_bytes(2, "big")
            + self.size.to_bytes(1, "big")
            + self.y.to_bytes(_Y_BYTES, "big")
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise SecAggError(f"Shamir share: expected {SHARE_BYTES} bytes, got {len(data)}")
        return cls(
            x=int.from_bytes(data[0:2], "big"),
            threshold=int.from_bytes(data[2:4], "big"),
            size=data[4],
            y=int.from_bytes(data[_HEADER:], "big"),
        )


def split_secret(secret: bytes, shares: int, threshold: int) -> list[Share]:
    """`shares` points (x = 1..shares) of a fresh random polynomial of degree threshold-1 through the secret."""
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise SecAggError(f"Shamir split: the secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise SecAggError(
            f"Shamir split: need 1 <= threshold <= shares <= {MAX_SHARES}, got threshold {threshold}, shares {shares}"
        )
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(SHAMIR_PRIME) for _ in range(threshold - 1)]
    return [
        Share(x=x, y=_evaluate(coefficients, x), threshold=threshold, size=len(secret)) for x in range(1, shares + 1)
    ]


def reconstruct_secret(shares: Sequence[Share]) -> bytes:
    """The secret from any `threshold` of its shares; more are checked to lie on the same polynomial.

    Refuses fewer than `threshold` distinct shares, shares of different secrets (threshold or size
    disagree), one x given twice with two values, and extra shares off the polynomial (a corrupted or
    forged share): each with a `SecAggError` saying which.
    """
    if not shares:
        raise SecAggError("Shamir reconstruct: no shares")
    first = shares[0]
    points: dict[int, int] = {}
    for share in shares:
        if (share.threshold, share.size) != (first.threshold, first.size):
            raise SecAggError(
                f"Shamir reconstruct: share x={share.x} is of another secret (threshold {share.threshold}, "
                f"size {share.size}; expected {first.threshold}, {first.size})"
            )
        if points.setdefault(share.x, share.y) != share.y:
            raise SecAggError(f"Shamir reconstruct: two different shares with x={share.x}")
    if len(points) < first.threshold:
        raise SecAggError(
            f"Shamir reconstruct: {len(points)} distinct shares, the threshold is {first.threshold}: "
            "fewer shares say nothing about the secret"
        )
    xs = sorted(points)
    basis = [(x, points[x]) for x in xs[: first.threshold]]
    for x in xs[first.threshold :]:
        if _interpolate(basis, x) != points[x]:
            raise SecAggError(f"Shamir reconstruct: share x={x} is not on the polynomial of the others")
    value = _interpolate(basis, 0)
    if value >= 256**first.size:
        raise SecAggError(f"Shamir reconstruct: the shares do not encode a {first.size}-byte secret")
    return value.to_bytes(first.size, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):  # Horner
        result = (result * x + coefficient) % SHAMIR_PRIME
    return result


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """Lagrange: the value at `at` of the one polynomial of degree < len(points) through the points."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (at - xj) % SHAMIR_PRIME
                denominator = denominator * (xi - xj) % SHAMIR_PRIME
        total = (total + yi * numerator * pow(denominator, -1, SHAMIR_PRIME)) % SHAMIR_PRIME
    return total
