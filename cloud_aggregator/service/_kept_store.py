"""The durable copy of the retained state the controller stands behind, and what the broker holds of it.

Layout (``ROOT/state/_kept/``, one folder per resource, mirroring the topic tree under the prefix; under
``state/`` because deployments keep that folder durable, and ``_kept`` because no job name can have an
underscore, so it never meets a job's ``state/<job>/``)::

    <kind>/<name>/spec       the accepted spec, byte for byte as it was published
    <kind>/<name>/status     the last status this node published (absent once it cleared it)
    <kind>/<name>/plan       jobs only: the last plan this node published
    <kind>/<name>/deleted    tombstones: the sha256 of each explicitly deleted spec, one per line, oldest first

``<kind>`` is the topic's kind level (``datasets``, ``models``, ``federatedlearningjobs``). Every file is
written with `runtime.write_atomic`, so after a crash each is the old or the new copy, never half.

A failing write is logged and does not stop the publish it goes with: the broker still gets the message;
only the copy that would restore it after a broker loss is missing (the log says which).

`BrokerView` remembers what the broker was seen to hold on which connection (retained deliveries of the
catch-up or of a reconnect audit, and this node's own publishes), so `stale` names exactly the kept
entries a broker that lost or turned back its state does not hold: those are republished, nothing else.
"""

from __future__ import annotations

from pathlib import Path

from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine import KeptState
from runtime import TMP_PREFIX, write_atomic
from schemas import Kind, TopicError, Topics, check_name

__all__ = ["BrokerView", "KeptStore"]

_SPEC, _STATUS, _PLAN, _DELETED = "spec", "status", "plan", "deleted"


class KeptStore:
    """The files under ``ROOT/state/_kept`` and their in-memory mirror (`state`)."""

    def __init__(self, root: Path, topics: Topics, log: FilteringBoundLogger) -> None:
        self.base = root / "state" / "_kept"
        self._topics = topics
        self._log = log
        self.state = self._load()

    # -- reading (once, at startup) --------------------------------------------------------------

    def _load(self) -> KeptState:
        state = KeptState()
        if not self.base.is_dir():
            return state
        for kind in Kind:
            folder = self.base / kind.value
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                try:
                    name = check_name(entry.name)
                    self._load_one(state, kind, name, entry)
                except (TopicError, ValueError, OSError) as exc:
                    self._log.warning("kept copy unreadable; skipped", path=str(entry), error=str(exc))
        return state

    @staticmethod
    def _load_one(state: KeptState, kind: Kind, name: str, folder: Path) -> None:
        files = {p.name: p for p in folder.iterdir() if not p.name.startswith(TMP_PREFIX)}
        if _SPEC in files:
            state.specs[(kind, name)] = files[_SPEC].read_bytes()
        if _STATUS in files:
            state.statuses[(kind, name)] = files[_STATUS].read_bytes()
        if _PLAN in files and kind is Kind.JOB:
            state.plans[name] = files[_PLAN].read_bytes()
        if _DELETED in files:
            stones = [line.strip() for line in files[_DELETED].read_text().splitlines() if line.strip()]
            if stones:
                state.deleted[(kind, name)] = stones
        spec = state.specs.get((kind, name))
        if spec is not None and state.was_deleted(kind, name, spec):
            del state.specs[(kind, name)]  # a delete interrupted between its tombstone and the spec file

    # -- writing ---------------------------------------------------------------------------------

    def keep_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        stones = list(self.state.deleted.get((kind, name), []))
        if self.state.specs.get((kind, name)) == payload and not self.state.was_deleted(kind, name, payload):
            return  # every reconnect delivers every spec again: no write for what is already kept
        self.state.keep_spec(kind, name, payload)
        # The tombstone file is the commit point of a delete or re-create (see `_load_one`): written first.
        if self.state.deleted.get((kind, name), []) != stones:
            self._write_tombstones(kind, name)
        self._write(kind, name, _SPEC, payload, sync=True)

    def forget_spec(self, kind: Kind, name: str, *, deleted: bool) -> None:
        self.state.forget_spec(kind, name, deleted=deleted)
        # The tombstone first: after a crash before the spec file goes, `_load_one` finds both and the
        # tombstone wins, so an interrupted delete is a delete.
        self._write_tombstones(kind, name)
        for leaf in (_SPEC, _STATUS, _PLAN):
            self._write(kind, name, leaf, None, sync=True)

    def keep_status(self, kind: Kind, name: str, payload: bytes | None) -> None:
        if not self.state.keep_status(kind, name, payload):
            return  # the same status again (a Dataset's on every delivery of its spec), or not ours to keep
        # Statuses change often: no folder fsync (a power cut may give back the previous status, which
        # the controller's next publish replaces).
        self._write(kind, name, _STATUS, self.state.statuses.get((kind, name)), sync=False)

    def keep_plan(self, job: str, payload: bytes | None) -> None:
        if self.state.keep_plan(job, payload):
            self._write(Kind.JOB, job, _PLAN, self.state.plans.get(job), sync=True)

    def _write_tombstones(self, kind: Kind, name: str) -> None:
        stones = self.state.deleted.get((kind, name), [])
        self._write(kind, name, _DELETED, "".join(f"{s}\n" for s in stones).encode() if stones else None, sync=True)

    def _write(self, kind: Kind, name: str, leaf: str, payload: bytes | None, *, sync: bool) -> None:
        path = self.base / kind.value / name / leaf
        try:
            if payload is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, payload, sync_dir=sync)
        except OSError as exc:
            self._log.error(
                "cannot write the kept copy; a broker that loses it cannot be restored", path=str(path), error=str(exc)
            )

    # -- what should be retained -----------------------------------------------------------------

    def entries(self) -> dict[str, bytes]:
        """Every kept entry by the topic it is retained on."""
        t, state = self._topics, self.state
        out = {t.spec(k, n): p for (k, n), p in state.specs.items()}
        out.update({t.status(k, n): p for (k, n), p in state.statuses.items()})
        out.update({t.plan(j): p for j, p in state.plans.items()})
        return out


class BrokerView:
    """What the broker was seen to hold on which connection: topic -> (connection, payload)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, bytes]] = {}

    def saw(self, topic: str, payload: bytes, connection: int) -> None:
        """A delivery (retained or live) or a publish of this node on connection `connection`."""
        self._held[topic] = (connection, payload)

    def holds(self, topic: str, connection: int) -> bool:
        """Whether a non-empty payload was seen on `topic` on `connection`."""
        held = self._held.get(topic)
        return held is not None and held[0] == connection and bool(held[1])

    def stale(self, wanted: dict[str, bytes], connection: int) -> list[tuple[str, bytes]]:
        """The entries of `wanted` the broker was not seen holding, byte for byte, on `connection`."""
        out = []
        for topic, payload in sorted(wanted.items()):
            if self._held.get(topic) != (connection, payload):
                out.append((topic, payload))
        return out
