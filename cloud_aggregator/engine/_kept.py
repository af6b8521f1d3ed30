"""The controller's durable copy of the retained state it stands behind (`KeptState`).

The broker is a medium, not the source of truth: a broker killed -9 between two autosaves, or started
from an empty or an old data directory, loses (or turns back) retained specs, statuses and plans. So the
`Port` keeps a durable copy of

- every spec this controller accepted (byte for byte as it was published, so a republished spec is
  identical and hashes the same),
- the last status and plan it published for each resource and job (cleared when it clears them),
- tombstones: the digests of the specs that were explicitly deleted (an empty retained spec, which is
  what ``flctl delete`` publishes), so a deleted spec that an old broker snapshot brings back is cleared
  again, while a spec the user published afresh is accepted.

The controller decides with it (`Controller.ready`): a kept spec the broker did not deliver is taken as
lost, not deleted; a kept job status wins over the broker's for the restart rules. The service
republishes every kept entry the broker does not hold as kept (`MqttPort.resync`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from schemas import Kind

__all__ = ["TOMBSTONES_PER_NAME", "KeptState", "spec_digest"]

# A name deleted more often than this forgets its oldest deleted specs (a bound on the tombstone file).
TOMBSTONES_PER_NAME = 16


def spec_digest(payload: bytes) -> str:
    """The digest a tombstone records: of the payload's bytes, not of the parsed spec (a snapshot holds bytes)."""
    return hashlib.sha256(payload).hexdigest()


@dataclass
class KeptState:
    """What the durable copy holds (`Port.kept`): payloads by (kind, name), plans by job."""

    specs: dict[tuple[Kind, str], bytes] = field(default_factory=dict)
    statuses: dict[tuple[Kind, str], bytes] = field(default_factory=dict)
    plans: dict[str, bytes] = field(default_factory=dict)
    deleted: dict[tuple[Kind, str], list[str]] = field(default_factory=dict)  # spec digests, oldest first

    def keep_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        """An accepted spec; a tombstone of the same bytes goes (the resource exists again)."""
        self.specs[(kind, name)] = payload
        digest = spec_digest(payload)
        stones = self.deleted.get((kind, name))
        if stones and digest in stones:
            stones.remove(digest)
            if not stones:
                del self.deleted[(kind, name)]

    def keep_status(self, kind: Kind, name: str, payload: bytes | None) -> bool:
        """The status this node published (None or empty: cleared); True when the kept copy changed.

        Only the status of a resource whose spec is kept here is kept: a status this node publishes for a
        job it does not own (`_foreign`'s report on a job of an aggregation node never seen) must never be
        republished after a broker loss, when the job's real owner may have taken it over since."""
        if payload and (kind, name) not in self.specs:
            payload = None
        if self.statuses.get((kind, name)) == (payload or None):
            return False
        if payload:
            self.statuses[(kind, name)] = payload
        else:
            self.statuses.pop((kind, name), None)
        return True

    def keep_plan(self, job: str, payload: bytes | None) -> bool:
        """The plan this node published (None or empty: cleared), for a job whose spec is kept; True when
        the kept copy changed."""
        if payload and (Kind.JOB, job) not in self.specs:
            payload = None
        if self.plans.get(job) == (payload or None):
            return False
        if payload:
            self.plans[job] = payload
        else:
            self.plans.pop(job, None)
        return True

    def forget_spec(self, kind: Kind, name: str, *, deleted: bool) -> None:
        """The resource is not this node's any more: drop its kept spec, status and plan (never republish
        them: another node may own them now). `deleted` (an explicit delete) leaves a tombstone of the spec."""
        payload = self.specs.pop((kind, name), None)
        self.statuses.pop((kind, name), None)
        if kind is Kind.JOB:
            self.plans.pop(name, None)
        if not deleted or payload is None:
            return
        stones = self.deleted.setdefault((kind, name), [])
        digest = spec_digest(payload)
        if digest in stones:
            stones.remove(digest)
        stones.append(digest)
        del stones[:-TOMBSTONES_PER_NAME]

    def was_deleted(self, kind: Kind, name: str, payload: bytes | None = None) -> bool:
        """Whether `payload` (None: any spec of this name) was explicitly deleted and not accepted since."""
        stones = self.deleted.get((kind, name), [])
        if payload is None:
            return bool(stones) and (kind, name) not in self.specs
        return spec_digest(payload) in stones

    def copy(self) -> KeptState:
        return KeptState(
            specs=dict(self.specs),
            statuses=dict(self.statuses),
            plans=dict(self.plans),
            deleted={k: list(v) for k, v in self.deleted.items()},
        )
