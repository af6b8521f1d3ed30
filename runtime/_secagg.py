"""Secure aggregation's key agreement, masks and share encryption (Bonawitz et al. 2017; the plan for the
protocol over MQTT is docs/dev/secagg.md, not built yet).

- Key agreement: X25519 between two parties' keys, then HKDF-SHA256 with an `info` that binds the
  protocol version, the purpose ("mask" for pairwise mask seeds, "share" for the key that encrypts
  Shamir shares), the job, the round and the (sorted, so both sides derive the same) pair of node names.
  Distinct purposes give independent keys even from one key pair; binding job and round means a seed is
  never reused across rounds, so a dropped edge's mask key revealed for one round says nothing of the
  next (the protocol still draws fresh key pairs each round, as the paper does).
- Masks: a 32-byte seed expands to the model's length in uint32 words through the AES-256-CTR keystream
  (`cryptography`). A mask must be computationally indistinguishable from uniform, or the masked update
  leaks the update; numpy's PCG64/Philox are statistical generators, not cryptographic ones (and Flower's
  32-bit-folded seeds could be brute-forced), so they are not used. Every seed keys one stream, so the
  all-zero counter block never repeats under one key. Pairwise signs by node-name order: the lower name
  adds PRG(s_uv), the higher subtracts it, so over all parties the pairwise masks cancel exactly mod 2**32.
- Share encryption: AES-256-GCM under the pair's "share" key, a random 96-bit nonce per message (few
  messages per key), and associated data binding job, round, sender and receiver: a share replayed into
  another round, reflected back to its sender or relayed to another receiver fails authentication.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from runtime._errors import SecAggError

__all__ = [
    "SEED_BYTES",
    "RoundContext",
    "expand_mask",
    "mask_input",
    "open_share",
    "seal_share",
    "sum_masked",
    "unmask_sum",
]

PROTOCOL = "fl-secagg/v1"
SEED_BYTES = 32  # AES-256 key for the mask stream; also the self-mask seed's size
_NONCE_BYTES = 12
_MAX_LENGTH = 2**31  # words in one mask: far above any model here, and what numpy indexes comfortably


@dataclass(frozen=True)
class RoundContext:
    """The job and round every derived key and every associated-data block is bound to."""

    job: str
    round: int

    def __post_init__(self) -> None:
        if not self.job:
            raise SecAggError("secure aggregation: the context needs a job name")
        if self.round < 0:
            raise SecAggError(f"secure aggregation: round must be >= 0, got {self.round}")

    def derive_key(
        self,
        private: X25519PrivateKey,
        peer_public: bytes,
        *,
        purpose: Literal["mask", "share"],
        own: str,
        peer: str,
    ) -> bytes:
        """The 32-byte key `own` and `peer` both derive: X25519(private, peer_public) through HKDF-SHA256."""
        if own == peer:
            raise SecAggError(f"secure aggregation: a party ({own!r}) derives no key with itself")
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as error:  # wrong length, or a low-order point giving the all-zero secret
            raise SecAggError(
                f"secure aggregation: {peer!r}'s public key is not a usable X25519 key: {error}"
            ) from error
        low, high = sorted((own, peer))
        return HKDF(algorithm=SHA256(), length=SEED_BYTES, salt=None, info=self._bound(purpose, low, high)).derive(
            shared
        )

    def associated_data(self, sender: str, receiver: str) -> bytes:
        """What a sealed share is bound to (ordered: sender then receiver)."""
        return self._bound("share-message", sender, receiver)

    def _bound(self, purpose: str, first: str, second: str) -> bytes:
        # JSON with sorted keys: unambiguous (no name can shift a field boundary) and the same on every node.
        fields = {
            "protocol": PROTOCOL,
            "purpose": purpose,
            "job": self.job,
            "round": self.round,
            "a": first,
            "b": second,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def expand_mask(seed: bytes, length: int) -> NDArray[np.uint32]:
    """`length` uint32 words of the AES-256-CTR keystream under `seed`: a mask uniform mod 2**32."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"secure aggregation: a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    if not 0 <= length <= _MAX_LENGTH:
        raise SecAggError(f"secure aggregation: mask length must be in 0..{_MAX_LENGTH}, got {length}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)  # a writable native-order copy


def _ring_vector(vector: NDArray[np.uint32], what: str) -> NDArray[np.uint32]:
    if vector.dtype != np.uint32 or vector.ndim != 1:
        raise SecAggError(f"secure aggregation: {what} must be a flat uint32 vector, got {vector.dtype} {vector.shape}")
    return vector


def _pair_masks(own: str, pair_seeds: Mapping[str, bytes], length: int) -> NDArray[np.uint32]:
    """What `own` adds for its pairs: +PRG(s) towards higher names, -PRG(s) towards lower ones."""
    total = np.zeros(length, dtype=np.uint32)
    for peer, seed in pair_seeds.items():
        if peer == own:
            raise SecAggError(f"secure aggregation: {own!r} has no pairwise mask with itself")
        if own < peer:
            total += expand_mask(seed, length)
        else:
            total -= expand_mask(seed, length)
    return total


def mask_input(
    encoded: NDArray[np.uint32], *, own: str, self_seed: bytes, pair_seeds: Mapping[str, bytes]
) -> NDArray[np.uint32]:
    """y = x + PRG(b) + sum over peers of ±PRG(s_pair) (mod 2**32): what party `own` uploads.

    `pair_seeds` maps each peer that completed key sharing to the pair's "mask" key (`derive_key`).
    """
    vector = _ring_vector(encoded, "the encoded update")
    masked = vector + expand_mask(self_seed, vector.size)
    masked += _pair_masks(own, pair_seeds, vector.size)
    return masked


def sum_masked(vectors: Iterable[NDArray[np.uint32]]) -> NDArray[np.uint32]:
    """The sum mod 2**32 of masked vectors of one length (the aggregator may fold them as they arrive)."""
    total: NDArray[np.uint32] | None = None
    for index, vector in enumerate(vectors):
        _ring_vector(vector, f"masked vector {index}")
        if total is None:
            total = vector.copy()
        elif vector.size != total.size:
            raise SecAggError(
                f"secure aggregation: masked vector {index} has {vector.size} values, expected {total.size}"
            )
        else:
            total += vector
    if total is None:
        raise SecAggError("secure aggregation: no masked vectors to sum")
    return total


def unmask_sum(
    masked_sum: NDArray[np.uint32],
    *,
    self_seeds: Iterable[bytes],
    dropped: Mapping[str, Mapping[str, bytes]] | None = None,
) -> NDArray[np.uint32]:
    """The sum of the encoded inputs from the sum of the masked ones.

    `self_seeds`: the reconstructed self-mask seed b_u of every party whose masked vector is in the sum.
    `dropped`: for each party d that shared keys but whose masked vector is not in the sum, the pair seeds
    s_du with each party u that is (rebuilt from d's reconstructed mask private key). Each such u's upload
    still holds its term for d, the exact negative of the one d would have added, so adding d's terms back
    cancels them.
    """
    total = _ring_vector(masked_sum, "the masked sum").copy()
    for seed in self_seeds:
        total -= expand_mask(seed, total.size)
    for party, pair_seeds in (dropped or {}).items():
        total += _pair_masks(party, pair_seeds, total.size)
    return total


def seal_share(key: bytes, plaintext: bytes, *, context: RoundContext, sender: str, receiver: str) -> bytes:
    """AES-256-GCM: nonce (12 bytes) + ciphertext + tag, authenticated with job, round, sender, receiver."""
    if len(key) != SEED_BYTES:
        raise SecAggError(f"secure aggregation: a share key is {SEED_BYTES} bytes, got {len(key)}")
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context.associated_data(sender, receiver))


def open_share(key: bytes, sealed: bytes, *, context: RoundContext, sender: str, receiver: str) -> bytes:
    """The plaintext of `seal_share`, or `SecAggError` if anything (bytes, job, round, parties) differs."""
    if len(key) != SEED_BYTES:
        raise SecAggError(f"secure aggregation: a share key is {SEED_BYTES} bytes, got {len(key)}")
    if len(sealed) < _NONCE_BYTES + 16:
        raise SecAggError(f"secure aggregation: a sealed share from {sender!r} is too short ({len(sealed)} bytes)")
    try:
        return AESGCM(key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.associated_data(sender, receiver)
        )
    except InvalidTag as error:
        raise SecAggError(
            f"secure aggregation: the share from {sender!r} to {receiver!r} for job {context.job!r} round "
            f"{context.round} does not authenticate (tampered, replayed or misaddressed)"
        ) from error
