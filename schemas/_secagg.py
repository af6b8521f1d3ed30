"""Secure aggregation's wire messages, its job settings and the masked update's blob.

The protocol (docs/security.md, "Secure aggregation"; Bonawitz et al. 2017) runs per round under
``rounds/<r>/secagg/`` (`Topics.secagg_state`, `Topics.secagg_step`), every message JSON and retained so a
process that reconnects or restarts reads where the round is:

- `SecAggState` (the aggregator): the round's phase and what each phase fixed: the roster U1 with every
  member's public keys and Shamir x-coordinate, then U2 (who shared keys), then U3 (whose masked update is
  in the sum); also the ring encoding every edge must use.
- `KeyAdvert` (each edge): its two fresh public keys for the round and its sample count.
- `ShareBundle` (each edge in U1): for every other member, a sealed (AES-GCM) pair of Shamir shares.
- the masked update: an ordinary update transfer whose blob holds one uint32 tensor (`MASKED_TENSOR`),
  the edge's weighted, fixed-point encoded delta plus masks (`masked_blob`, `read_masked`).
- `UnmaskAnswer` (each edge in U3): its shares of the self-mask seed of every member of U3 and of the mask
  key of every member of U2 \\ U3, never both for one member.

Bytes travel as base64 (standard alphabet) strings.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from schemas._errors import WireError
from schemas._tensors import WeightsHeader, decode_weights, encode_weights
from schemas._wire import _Wire

__all__ = [
    "MASKED_TENSOR",
    "KeyAdvert",
    "SecAggMember",
    "SecAggPhase",
    "SecAggSettings",
    "SecAggState",
    "ShareBundle",
    "UnmaskAnswer",
    "b64decode",
    "b64encode",
    "masked_blob",
    "read_masked",
]

SecAggPhase = Literal["keys", "shares", "masked", "unmask", "closed", "aborted"]

#: The one tensor of a masked update's blob: `encode_weighted` words of the delta, masked.
MASKED_TENSOR = "secagg/masked"

_PUBLIC_KEY_CHARS = 44  # base64 of a 32-byte X25519 public key
DEFAULT_SECAGG_CLIP = 8.0


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    """Bytes of a base64 field; WireError naming `what` when it is not base64."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise WireError("secagg", f"{what} is not base64: {exc}") from exc


def _public_key(value: str) -> str:
    try:
        size = len(b64decode(value, "a public key"))
    except WireError:
        size = -1
    if len(value) != _PUBLIC_KEY_CHARS or size != 32:
        raise ValueError("a public key is 32 bytes in base64 (44 characters)")
    return value


class _Message(_Wire):
    """What every secure aggregation message names: the job run and round it belongs to."""

    job: str
    uid: str
    round: int = Field(ge=1)


class SecAggMember(_Wire):
    """One member of the round's roster U1: its Shamir x-coordinate and its two public keys."""

    node: str
    x: int = Field(ge=1, le=65535)
    c_public: str  # X25519: encrypts the shares sent to it
    s_public: str  # X25519: its pairwise mask seeds
    num_samples: int = Field(ge=1)

    @field_validator("c_public", "s_public")
    @classmethod
    def _key(cls, value: str) -> str:
        return _public_key(value)


class SecAggState(_Message):
    """The aggregator's word on a round: its phase and what the earlier phases fixed.

    ``keys``: edges advertise keys. ``shares``: `u1` is fixed; members publish their bundles. ``masked``:
    `u2` is fixed; members of U2 upload their masked update. ``unmask``: `u3` is fixed; members of U3
    answer. ``closed``: the round's sum is unmasked. ``aborted``: too few parties (`reason`)."""

    phase: SecAggPhase
    threshold: int = Field(ge=1)
    clip: float = Field(gt=0, allow_inf_nan=False)
    # Each edge encodes its delta times n_k / max_weight (max_weight: the largest sample count in U1) and the
    # ratio as one more value; `weighted: false` (differential privacy's uniform mean): ratio 1 everywhere.
    max_weight: int = Field(default=1, ge=1)
    weighted: bool = True
    u1: list[SecAggMember] = Field(default_factory=list)
    u2: list[str] = Field(default_factory=list)
    u3: list[str] = Field(default_factory=list)
    reason: str | None = None

    def member(self, node: str) -> SecAggMember | None:
        return next((m for m in self.u1 if m.node == node), None)


class KeyAdvert(_Message):
    """An edge's two public keys for the round, and its sample count (the weight it will encode)."""

    node: str
    c_public: str
    s_public: str
    num_samples: int = Field(ge=1)

    @field_validator("c_public", "s_public")
    @classmethod
    def _key(cls, value: str) -> str:
        return _public_key(value)


class ShareBundle(_Message):
    """An edge's sealed shares: receiver node -> base64 of `runtime.seal_share` over (b-share ‖ s-share)."""

    node: str
    sealed: dict[str, str]


class UnmaskAnswer(_Message):
    """An edge's answer for one U3: plaintext shares (base64 of `runtime.Share.to_bytes`) of each member of
    U3's self-mask seed (`b_shares`) and of each member of U2 \\ U3's mask key (`s_shares`)."""

    node: str
    u3: list[str]
    b_shares: dict[str, str] = Field(default_factory=dict)
    s_shares: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class SecAggSettings:
    """A job's secure aggregation (aggregationWorker parameters ``secure_aggregation: "true"``,
    ``secagg_threshold``, ``secagg_clip``)."""

    threshold: int  # t: shares that rebuild a secret; rounds need t parties at every phase
    clip: float  # every value of an edge's delta is clipped to [-clip, clip] before it is encoded

    @classmethod
    def of(cls, parameters: Mapping[str, str], participants: int) -> SecAggSettings | None:
        """The settings, None when the job does not ask for secure aggregation; ValueError names the
        parameter and what was expected (the spec's validation checked the bounds and choices already)."""
        lowered = {k.lower(): str(v).strip() for k, v in parameters.items() if k in (k.lower(), k.upper())}
        if lowered.get("secure_aggregation", "false").lower() != "true":
            return None
        if participants < 2:
            raise ValueError(
                "secure_aggregation needs at least 2 training workers: the sum of one update is that update"
            )
        raw = lowered.get("secagg_threshold", "0") or "0"
        threshold = int(float(raw)) or participants // 2 + 1
        if not 2 <= threshold <= participants:
            raise ValueError(
                f"secagg_threshold={raw}: expected 2..{participants} (the training workers), or 0 for "
                f"the default {participants // 2 + 1}"
            )
        clip = float(lowered.get("secagg_clip", DEFAULT_SECAGG_CLIP) or DEFAULT_SECAGG_CLIP)
        if not clip > 0:
            raise ValueError(f"secagg_clip={clip}: expected a number > 0")
        return cls(threshold=threshold, clip=clip)


def masked_blob(masked: npt.NDArray[np.uint32], *, job: str, round_: int, sender: str, num_samples: int) -> bytes:
    """The update blob of a masked vector (its header as any update's; one uint32 tensor)."""
    return encode_weights(
        [masked], kind="update", job=job, round_=round_, sender=sender, num_samples=num_samples, names=[MASKED_TENSOR]
    )


def read_masked(blob: bytes | bytearray | memoryview) -> tuple[WeightsHeader, npt.NDArray[np.uint32]] | None:
    """The header and masked vector of a masked update's blob; None when the blob is not one (WireError:
    not a weights blob at all)."""
    header, arrays = decode_weights(blob)
    if len(header.tensors) != 1 or header.tensors[0].name != MASKED_TENSOR:
        return None
    vector = arrays[0]
    if vector.dtype != np.uint32 or vector.ndim != 1:
        raise WireError("weights", f"the masked tensor must be a flat uint32 vector, got {vector.dtype} {vector.shape}")
    return header, np.asarray(vector, dtype=np.uint32)
