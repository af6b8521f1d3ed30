"""The logic thread's bookkeeping of the outbox entries the aggregator has not confirmed yet.

Whether a publish of an entry is under way (the uploader thread works on it), when the ack timer of
each runs out, and what an `UpdateAck` means for it. Pure (a clock is injected), so it is tested
without a broker:

- ``accepted: true``                  -> the entry is done: record the delivery, delete it;
- ``accepted: false`` + ``missing``   -> resend exactly those chunks (same transfer), then the manifest;
- ``accepted: false``, no ``missing`` -> refused for good: delete it, say why;
- no ack within ``ack_timeout`` after the last publish of the entry -> republish its manifest;
- chunks named missing while a publish of the entry is under way -> once that publish ends, republish the
  manifest at once (the aggregator then names what is still missing), not after ``ack_timeout``: a link
  cut in the middle of an upload must not stall it for the whole ack timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from edge_trainer.engine._outbox import OutboxEntry
from schemas import UpdateAck

__all__ = ["AckOutcome", "Deliveries", "Delivery"]


class AckOutcome(StrEnum):
    IGNORED = "ignored"  # not ours, an earlier run, or an entry already done
    ACCEPTED = "accepted"  # stored by the aggregator: delete the entry
    RESEND = "resend"  # publish the missing chunks, then the manifest
    BUSY = "busy"  # chunks are missing while a publish of the entry is under way: ask again when it ends
    REFUSED = "refused"  # refused for good: delete the entry


@dataclass
class Delivery:
    """One outbox entry the aggregator has not confirmed yet."""

    entry: OutboxEntry
    run_id: str
    publishing: bool = True
    deadline: float | None = None  # when to republish the manifest; None while publishing
    incomplete: bool = False  # the last publish was not acknowledged by the broker in time
    resends: int = 0
    missing: list[int] = field(default_factory=list)
    asked_while_publishing: bool = False  # the aggregator named missing chunks during the last publish


class Deliveries:
    """Unconfirmed outbox entries by (job, transfer); all methods run on the logic thread."""

    def __init__(self, ack_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if ack_timeout <= 0:
            raise ValueError(f"ack_timeout {ack_timeout} must be > 0")
        self.ack_timeout = ack_timeout
        self._clock = clock
        self._items: dict[tuple[str, str], Delivery] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, entry: OutboxEntry, run_id: str) -> Delivery:
        """Track `entry`; a publish of it is about to start (`published` arms its timer)."""
        delivery = Delivery(entry, run_id)
        self._items[(entry.manifest.job, entry.transfer)] = delivery
        return delivery

    def get(self, job: str, transfer: str) -> Delivery | None:
        return self._items.get((job, transfer))

    def of_job(self, job: str) -> list[Delivery]:
        return [d for (j, _), d in self._items.items() if j == job]

    def rounds(self, job: str, uid: str) -> set[int]:
        """Rounds of `job` run `uid` whose update (or init, round 0) is in the outbox."""
        return {d.entry.round for d in self.of_job(job) if d.entry.manifest.uid == uid}

    def remove(self, job: str, transfer: str) -> Delivery | None:
        return self._items.pop((job, transfer), None)

    def drop_job(self, job: str) -> list[Delivery]:
        gone = self.of_job(job)
        for d in gone:
            del self._items[(job, d.entry.transfer)]
        return gone

    def start_publish(self, delivery: Delivery) -> None:
        delivery.publishing = True
        delivery.deadline = None

    def published(self, job: str, transfer: str, *, complete: bool) -> Delivery | None:
        """A publish of the entry ended (`complete`: the broker acknowledged all of it): arm the ack timer."""
        delivery = self.get(job, transfer)
        if delivery is None:
            return None
        delivery.publishing = False
        delivery.incomplete = not complete
        # Asked for chunks meanwhile: due now, so the manifest goes out again and the answer says what is
        # still missing (the publish may have sent some of them since).
        wait = 0.0 if delivery.asked_while_publishing else self.ack_timeout
        delivery.asked_while_publishing = False
        delivery.deadline = self._clock() + wait
        return delivery

    def on_ack(self, ack: UpdateAck) -> tuple[AckOutcome, Delivery | None]:
        """What `ack` means for its entry (the entry is forgotten when it is accepted or refused)."""
        delivery = self.get(ack.job, ack.transfer)
        if delivery is None or delivery.entry.manifest.uid != ack.uid or delivery.entry.round != ack.round:
            return AckOutcome.IGNORED, delivery
        if ack.accepted:
            self.remove(ack.job, ack.transfer)
            return AckOutcome.ACCEPTED, delivery
        if not ack.missing:
            self.remove(ack.job, ack.transfer)
            return AckOutcome.REFUSED, delivery
        missing = sorted({i for i in ack.missing if 0 <= i < delivery.entry.manifest.chunks})
        if delivery.publishing:
            delivery.asked_while_publishing = True
            return AckOutcome.BUSY, delivery
        delivery.missing = missing
        return AckOutcome.RESEND, delivery

    def next_deadline(self) -> float | None:
        deadlines = [d.deadline for d in self._items.values() if d.deadline is not None and not d.publishing]
        return min(deadlines) if deadlines else None

    def due(self) -> list[Delivery]:
        """Entries whose ack did not come within the timeout of their last publish."""
        now = self._clock()
        return [d for d in self._items.values() if not d.publishing and d.deadline is not None and d.deadline <= now]

    def rearm(self, delivery: Delivery) -> None:
        delivery.deadline = self._clock() + self.ack_timeout
