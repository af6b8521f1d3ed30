"""The job event stream: one compact JSON object per line-worthy event of a job, on
``<prefix>/federatedlearningjobs/<job>/events`` (QoS 1, never retained).

It is a log you can follow with any MQTT client (``mosquitto_sub -t 'fl/federatedlearningjobs/+/events'
| jq``): every event the job's status gets (`Event`: Normal and Warning), each worker's state changes, and
rounds opening and closing (a closed round carries its `RoundRecord` in ``data``). The status topic stays
the source of truth; the stream says what changed, in order, without diffing status documents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas._status import now

__all__ = ["JobEvent"]


class JobEvent(BaseModel):
    """One line of a job's event stream.

    `type` is Warning only for the job's Warning events. `round` is the round the event belongs to, `node`
    the worker it is about. `data` holds what a program wants without parsing `message`: a closed round's
    record (participants, totalSamples, missing, metrics, durationSeconds, ...), a worker's ``from`` and
    ``to`` states, a round's ``exitRound``.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    time: datetime = Field(default_factory=now)
    job: str
    uid: str | None = None
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str
    round: int | None = None
    node: str | None = None
    data: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """One line, no indentation: what `mosquitto_sub` prints and `jq` reads."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
