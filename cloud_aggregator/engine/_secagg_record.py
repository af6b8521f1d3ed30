"""One secure aggregation round's protocol record (docs/dev/secagg.md): what the aggregator knows of it.

The record is the round's phase and what each phase fixed (U1 with every member's keys, U2, U3) plus what
arrived for the phase in progress: the key adverts, who shared (and their bundles, kept for the round), the
unmask answers. It is saved
(`Port.save_secagg`, write-atomic beside the round's spool) before the state that follows from it is
published, and every message the edges send is kept in it as it arrives: a restarted aggregator reloads it
and needs nothing from the broker it had already received (retained messages arriving again are no-ops).

The masked sum is not saved: it is the spooled masked updates added again (`Training.counted` says whose).
The clocks (`phase_started`, `late`) are not saved either: a restart gives the phase a fresh deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from schemas import KeyAdvert, SecAggMember, SecAggPhase, SecAggSettings, SecAggState, ShareBundle, UnmaskAnswer

__all__ = ["SecAggRound"]


class _Saved(BaseModel):
    """The record's file: the state as published, then what arrived for the phase in progress."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    version: int = 1
    state: SecAggState
    adverts: list[KeyAdvert] = Field(default_factory=list)
    shared: dict[str, list[str]] = Field(default_factory=dict)  # sender -> the receivers its bundle names
    answers: list[UnmaskAnswer] = Field(default_factory=list)
    bundles: list[ShareBundle] = Field(default_factory=list)


@dataclass
class SecAggRound:
    """The record of round `round` of run `uid` of `job` (mutable: the phases fill it in)."""

    job: str
    uid: str
    round: int
    settings: SecAggSettings
    weighted: bool  # False under differential privacy: every edge weighs 1
    phase: SecAggPhase = "keys"
    max_weight: int = 1
    u1: list[SecAggMember] = field(default_factory=list)
    u2: list[str] = field(default_factory=list)
    u3: list[str] = field(default_factory=list)
    reason: str | None = None
    adverts: dict[str, KeyAdvert] = field(default_factory=dict)  # keys phase: node -> its advert
    shared: dict[str, list[str]] = field(default_factory=dict)  # shares phase: sender -> receivers
    answers: dict[str, UnmaskAnswer] = field(default_factory=dict)  # unmask phase, in arrival order
    # The bundles of U2 (kept until the round closes): the edges read each other's from the broker, so a
    # broker that lost its retained messages gets them again from here (`SecureAggregation.republish`).
    bundles: dict[str, ShareBundle] = field(default_factory=dict)
    # Not saved: the sum mod 2**32 of the counted masked updates (None until the first), and the clock.
    masked_sum: npt.NDArray[np.uint32] | None = None
    phase_started: float = 0.0
    late: bool = False  # the phase's deadline passed (it then moves on with a quorum)

    @property
    def threshold(self) -> int:
        return self.settings.threshold

    @property
    def u1_names(self) -> list[str]:
        return [m.node for m in self.u1]

    def member(self, node: str) -> SecAggMember | None:
        return next((m for m in self.u1 if m.node == node), None)

    def add_masked(self, vector: npt.NDArray[np.uint32]) -> None:
        """Add one masked vector into the sum, mod 2**32 (numpy's uint32 addition wraps)."""
        if self.masked_sum is None:
            self.masked_sum = np.array(vector, dtype=np.uint32)
        else:
            self.masked_sum = np.add(self.masked_sum, vector, dtype=np.uint32)

    def state(self) -> SecAggState:
        """What the edges read on ``rounds/<r>/secagg/state``."""
        return SecAggState(
            job=self.job,
            uid=self.uid,
            round=self.round,
            phase=self.phase,
            threshold=self.settings.threshold,
            clip=self.settings.clip,
            max_weight=self.max_weight,
            weighted=self.weighted,
            u1=list(self.u1),
            u2=list(self.u2),
            u3=list(self.u3),
            reason=self.reason,
        )

    def to_bytes(self) -> bytes:
        saved = _Saved(
            state=self.state(),
            adverts=list(self.adverts.values()),
            shared=dict(self.shared),
            answers=list(self.answers.values()),
            bundles=list(self.bundles.values()),
        )
        return saved.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggRound:
        """The record saved by `to_bytes`; ValueError when the bytes are not one."""
        try:
            saved = _Saved.model_validate_json(data)
        except ValidationError as exc:
            raise ValueError(f"not a secure aggregation record: {str(exc).splitlines()[0]}") from exc
        state = saved.state
        return cls(
            job=state.job,
            uid=state.uid,
            round=state.round,
            settings=SecAggSettings(threshold=state.threshold, clip=state.clip),
            weighted=state.weighted,
            phase=state.phase,
            max_weight=state.max_weight,
            u1=list(state.u1),
            u2=list(state.u2),
            u3=list(state.u3),
            reason=state.reason,
            adverts={a.node: a for a in saved.adverts},
            shared=dict(saved.shared),
            answers={a.node: a for a in saved.answers},
            bundles={b.node: b for b in saved.bundles},
        )
