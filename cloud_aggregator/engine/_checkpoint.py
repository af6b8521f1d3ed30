"""What a job's durable state holds, as values: the checkpoint of a closed round and a spooled update.

The engine builds and reads these; where they are kept is the `Port`'s business (the service keeps them
in files under ``ROOT/state/<job>/``, `cloud_aggregator.service.StateStore`; tests keep them in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas import JobStatus

__all__ = ["Checkpoint", "SpooledUpdate"]


class Checkpoint(BaseModel):
    """What a restarted aggregator needs to resume a job after its last closed round."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    version: int = 1
    job: str
    uid: str
    spec_hash: str
    closed_round: int = Field(ge=0)
    exit_round: int = Field(ge=1)
    participants: list[str]
    strategy: str
    # round (as a string: JSON keys) -> [[node, transfer], ...] folded into that round's global model
    folded: dict[str, list[tuple[str, str]]] = Field(default_factory=dict)
    status: JobStatus
    # sha256 of the strategy's server state after `closed_round` (momentum, moments; None: it keeps
    # none), stored beside the global blob: the restart checks that it reads the state of this round
    server_state: str | None = None
    # Asynchronous rounds: round -> {node: the round its update was trained for}, for the updates folded
    # into a later round than their own (stale ones); the others were trained for the round that folded them.
    origins: dict[str, dict[str, int]] | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()


@dataclass(frozen=True)
class SpooledUpdate:
    """An accepted update as it was stored before it was folded (a restart folds it again)."""

    node: str
    transfer: str
    blob: bytes
