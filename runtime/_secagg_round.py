"""One party's and the aggregator's computations of a secure aggregation round (no network, no files).

The edge's node service and the aggregator both call these; the messages they exchange are the
`schemas` secure aggregation messages, the arithmetic the primitives of `_fixed_point`, `_shamir` and
`_secagg`. An edge:

1. `RoundSecrets.fresh()`: two X25519 key pairs (c: share encryption, s: masks) and the self-mask seed
   b, drawn once per round and stored before anything derived from them is published;
2. `share_bundle`: b and the s private key split t-of-|U1| (x = each member's roster position), each
   receiver's pair of shares sealed under the pair's "share" key; its own pair kept in the secrets;
3. `mask_update`: the weighted fixed-point encoding of its delta plus PRG(b) plus the pair masks towards
   every other member of U2;
4. `unmask_answer`: from the bundles addressed to it, the b-shares of U3's members and the s-shares of
   U2 \\ U3's: never both for one member, so the aggregator never holds both secrets of anyone.

The aggregator's `unmask_total` rebuilds every b of U3 and every s key of U2 \\ U3 from t answers and
returns the sum of U3's encoded updates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from numpy.typing import NDArray

from runtime._errors import SecAggError
from runtime._fixed_point import FixedPoint
from runtime._secagg import SEED_BYTES, RoundContext, mask_input, open_share, seal_share, unmask_sum
from runtime._shamir import SHARE_BYTES, Share, reconstruct_secret, split_secret
from schemas import KeyAdvert, b64encode

__all__ = ["RoundSecrets", "mask_update", "share_bundle", "unmask_answer", "unmask_total"]


@dataclass(frozen=True)
class RoundSecrets:
    """One edge's secrets of one round (raw 32-byte values); `own_shares`: its own pair of shares, once it
    shared keys (b-share ‖ s-share, `SHARE_BYTES` each)."""

    c_private: bytes
    s_private: bytes
    self_seed: bytes
    own_shares: bytes = b""

    @classmethod
    def fresh(cls) -> RoundSecrets:
        return cls(
            c_private=X25519PrivateKey.generate().private_bytes_raw(),
            s_private=X25519PrivateKey.generate().private_bytes_raw(),
            self_seed=os.urandom(SEED_BYTES),
        )

    @property
    def c_public(self) -> bytes:
        return X25519PrivateKey.from_private_bytes(self.c_private).public_key().public_bytes_raw()

    @property
    def s_public(self) -> bytes:
        return X25519PrivateKey.from_private_bytes(self.s_private).public_key().public_bytes_raw()

    def key_advert(self, *, job: str, uid: str, round_: int, node: str, num_samples: int) -> KeyAdvert:
        """The round's `KeyAdvert` of these secrets' public keys (what the edge publishes in phase ``keys``)."""
        return KeyAdvert(
            job=job,
            uid=uid,
            round=round_,
            node=node,
            c_public=b64encode(self.c_public),
            s_public=b64encode(self.s_public),
            num_samples=num_samples,
        )

    def to_json(self) -> dict[str, str]:
        return {
            "cPrivate": self.c_private.hex(),
            "sPrivate": self.s_private.hex(),
            "selfSeed": self.self_seed.hex(),
            "ownShares": self.own_shares.hex(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> RoundSecrets:
        try:
            return cls(
                c_private=bytes.fromhex(data["cPrivate"]),
                s_private=bytes.fromhex(data["sPrivate"]),
                self_seed=bytes.fromhex(data["selfSeed"]),
                own_shares=bytes.fromhex(data.get("ownShares", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SecAggError(f"secure aggregation: unreadable round secrets: {exc}") from exc


def share_bundle(
    secrets: RoundSecrets,
    context: RoundContext,
    *,
    own: str,
    roster: Mapping[str, tuple[int, bytes]],
    threshold: int,
) -> tuple[dict[str, bytes], RoundSecrets]:
    """The sealed share pairs for every other member of `roster` (node -> (x, c public key)), and the
    secrets with the party's own pair kept."""
    if own not in roster:
        raise SecAggError(f"secure aggregation: {own!r} is not in the round's roster")
    size = max(x for x, _ in roster.values())
    b_shares = split_secret(secrets.self_seed, size, threshold)
    s_shares = split_secret(secrets.s_private, size, threshold)
    c_key = X25519PrivateKey.from_private_bytes(secrets.c_private)
    sealed: dict[str, bytes] = {}
    kept = b""
    for node, (x, c_public) in roster.items():
        plaintext = b_shares[x - 1].to_bytes() + s_shares[x - 1].to_bytes()
        if node == own:
            kept = plaintext
            continue
        key = context.derive_key(c_key, c_public, purpose="share", own=own, peer=node)
        sealed[node] = seal_share(key, plaintext, context=context, sender=own, receiver=node)
    return sealed, RoundSecrets(secrets.c_private, secrets.s_private, secrets.self_seed, kept)


def mask_update(
    secrets: RoundSecrets,
    context: RoundContext,
    *,
    own: str,
    delta: NDArray[np.float64],
    weight: float,
    max_weight: float,
    fixed: FixedPoint,
    peers: Mapping[str, bytes],
) -> NDArray[np.uint32]:
    """The masked vector `own` uploads: `delta` weighted and encoded, plus its self mask and the pair masks
    towards every peer of U2 (node -> s public key; `own` itself is skipped)."""
    s_key = X25519PrivateKey.from_private_bytes(secrets.s_private)
    pair_seeds = {
        node: context.derive_key(s_key, public, purpose="mask", own=own, peer=node)
        for node, public in peers.items()
        if node != own
    }
    encoded = fixed.encode_weighted(delta, weight, max_weight)
    return mask_input(encoded, own=own, self_seed=secrets.self_seed, pair_seeds=pair_seeds)


def unmask_answer(
    secrets: RoundSecrets,
    context: RoundContext,
    *,
    own: str,
    c_publics: Mapping[str, bytes],
    sealed_for_me: Mapping[str, bytes],
    u2: Sequence[str],
    u3: Sequence[str],
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(b-shares of U3's members, s-shares of U2 \\ U3's members), each the bytes of a `Share`.

    `sealed_for_me`: sender -> the sealed pair it addressed to `own` (from the senders' bundles);
    `c_publics`: sender -> its c public key (the roster). Raises SecAggError when U3 is not within U2,
    when `own` is not in U3 or a sender's share is missing or does not authenticate."""
    if not set(u3) <= set(u2):
        raise SecAggError(f"secure aggregation: U3 {sorted(set(u3) - set(u2))} did not share keys (not in U2)")
    if own not in u3:
        raise SecAggError(f"secure aggregation: {own!r} is not in U3; it answers nothing")
    c_key = X25519PrivateKey.from_private_bytes(secrets.c_private)
    b_out: dict[str, bytes] = {}
    s_out: dict[str, bytes] = {}
    for sender in u2:
        if sender == own:
            plaintext = secrets.own_shares
        else:
            if sender not in sealed_for_me or sender not in c_publics:
                raise SecAggError(f"secure aggregation: no share from {sender!r} addressed to {own!r}")
            key = context.derive_key(c_key, c_publics[sender], purpose="share", own=own, peer=sender)
            plaintext = open_share(key, sealed_for_me[sender], context=context, sender=sender, receiver=own)
        if len(plaintext) != 2 * SHARE_BYTES:
            raise SecAggError(f"secure aggregation: the share pair from {sender!r} is {len(plaintext)} bytes")
        if sender in u3:
            b_out[sender] = plaintext[:SHARE_BYTES]
        else:
            s_out[sender] = plaintext[SHARE_BYTES:]
    return b_out, s_out


def unmask_total(
    masked_sum: NDArray[np.uint32],
    context: RoundContext,
    *,
    s_publics: Mapping[str, bytes],
    u2: Sequence[str],
    u3: Sequence[str],
    answers: Sequence[tuple[Mapping[str, bytes], Mapping[str, bytes]]],
    threshold: int,
) -> NDArray[np.uint32]:
    """The sum of U3's encoded updates from the sum of their masked ones and at least `threshold` answers
    ((b-shares, s-shares) as `unmask_answer` returns them). `s_publics`: each member of U2's s public key."""
    if len(answers) < threshold:
        raise SecAggError(f"secure aggregation: {len(answers)} unmask answers, the threshold is {threshold}")
    self_seeds = [_rebuild(member, [b for b, _ in answers], threshold) for member in u3]
    dropped: dict[str, dict[str, bytes]] = {}
    for member in (m for m in u2 if m not in u3):
        key = X25519PrivateKey.from_private_bytes(_rebuild(member, [s for _, s in answers], threshold))
        dropped[member] = {
            survivor: context.derive_key(key, s_publics[survivor], purpose="mask", own=member, peer=survivor)
            for survivor in u3
        }
    return unmask_sum(masked_sum, self_seeds=self_seeds, dropped=dropped)


def _rebuild(member: str, answers: Sequence[Mapping[str, bytes]], threshold: int) -> bytes:
    shares = [Share.from_bytes(answer[member]) for answer in answers if member in answer]
    if len(shares) < threshold:
        raise SecAggError(
            f"secure aggregation: {len(shares)} shares of {member!r}'s secret arrived, the threshold is {threshold}"
        )
    return reconstruct_secret(shares[:threshold])
