"""Intake of the edges' update and init transfers: manifests and chunks in, complete blobs out.

One `broker.Assembler` per job reassembles transfers; a complete one goes to `deliver` (the round
engine). On the way the intake answers what it can without the weights:

- a manifest of a transfer already stored gets ``UpdateAck(accepted=true, reason="already stored")``,
  one refused for good gets the same refusal again;
- a manifest that arrives again for an incomplete transfer, or an incomplete transfer without progress
  for `resume_after` seconds (a timer run by `tick`, backing off to `MAX_RESUME_INTERVAL`), gets
  ``UpdateAck(accepted=false, missing=[...])``;
- a manifest of this run that arrives while a resumed job waits for its script is kept in `Starting`
  and taken once the round state is restored.

Memory is bounded by `memory_budget` (`JobSettings.transfer_memory`, 64 MiB: the seed model's 1.7 MB
uploads always stay in memory) of in-flight chunks held in the assembler: the chunks that do not fit go to
disk (`_spill.Overflow` on `Port.open_spill`) and come back when their transfer completes. So ten
concurrent uploads of a large model hold at most the budget in memory, plus the one blob being decoded
and folded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from broker import Assembler, TransferError
from cloud_aggregator._errors import AggregatorError, UpdateRejectedError
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._spill import Overflow
from cloud_aggregator.engine._stages import Done, Starting, Training, TransferId
from cloud_aggregator.engine._status import rejected_message
from cloud_aggregator.engine._transfers import check_manifest
from schemas import TransferManifest, weights_payload_offset

__all__ = ["MAX_RESUME_INTERVAL", "Deliver", "Intake"]

MAX_RESUME_INTERVAL = 60.0

# (node, round, manifest, blob) of a complete transfer
# (node, round, manifest, blob, the SHA-256 of its tensor bytes if the assembler hashed them on the way in)
Deliver = Callable[[str, int, TransferManifest, bytes | memoryview, str | None], None]


@dataclass
class _Incoming:
    """An update transfer whose manifest is known and whose chunks are not all in yet."""

    node: str
    round: int
    manifest: TransferManifest
    due: float  # when to ask for the missing chunks if nothing arrives before
    interval: float


def _transfer_key(round_: int, node: str, transfer: str) -> str:
    return f"{round_}/{node}/{transfer}"


class Intake:
    """Receives one job's transfers and answers for them; hands each complete one to `deliver`."""

    def __init__(self, ctx: JobContext, deliver: Deliver, *, memory_budget: int) -> None:
        self._ctx = ctx
        self._deliver = deliver
        # Every chunk is checked against the manifest's hashes here, and the whole blob against the manifest's
        # SHA-256 (an inconsistent manifest is refused). A weights blob also carries its tensor bytes' SHA-256
        # in its header (the encoder's, end to end): the assembler hashes those bytes too as the chunks arrive
        # (`payload_at`), so `decode_checked` only compares digests and decoding hashes nothing.
        # Those running hashes are fed on the assembler's hashing thread, beside the logic thread.
        self._assembler: Assembler[str] = Assembler(
            log=ctx.log, payload_at=weights_payload_offset, background_hashing=True
        )
        self._overflow = Overflow(self._assembler, memory_budget, lambda: ctx.port.open_spill(ctx.facts.name), ctx.log)
        self._incoming: dict[str, _Incoming] = {}
        self._retries: dict[str, int] = {}
        # every update stored and counted, and every init acknowledged as accepted
        self._stored: set[TransferId] = set()
        self._delivered: set[tuple[int, str]] = set()  # (round, node) of every stored update or init
        self._refused: dict[TransferId, str] = {}  # rejected for good: the same answer again
        self._first_seen: dict[TransferId, float] = {}  # when a transfer's first manifest or chunk came

    # -- what the round engine tells the intake --------------------------------------------------

    def wants(self, round_: int) -> bool:
        """Whether chunks of a transfer for `round_` are worth keeping (a cheap filter before assembly)."""
        state = self._ctx.state
        if isinstance(state, Done) or (isinstance(state, Starting) and not self._ctx.facts.resume):
            return False
        if round_ == 0 or isinstance(state, Starting):
            return True
        if not isinstance(state, Training):
            return False
        asynchrony = self._ctx.facts.asynchrony
        lag = asynchrony.max_staleness if asynchrony is not None else 0
        return state.round - lag <= round_ <= state.round

    def mark_stored(self, round_: int, node: str, transfer: str) -> None:
        self._stored.add((round_, node, transfer))
        self._delivered.add((round_, node))

    def delivered(self, node: str, round_: int) -> bool:
        """Whether an update of `node` for `round_` is stored already (under any transfer id)."""
        return (round_, node) in self._delivered

    def receive_seconds(self, round_: int, node: str, transfer: str) -> float | None:
        """How long the transfer took to arrive whole, from its first manifest or chunk (None: not seen here,
        e.g. refolded from the spool)."""
        first = self._first_seen.pop((round_, node, transfer), None)
        return None if first is None else max(0.0, self._ctx.clock - first)

    def restore_stored(self, stored: Iterable[TransferId]) -> None:
        """What a checkpoint says was folded: answered as stored from now on."""
        self._stored = set(stored)
        self._delivered = {(r, n) for r, n, _ in self._stored}

    def reject(self, node: str, manifest: TransferManifest, exc: UpdateRejectedError) -> None:
        """Refuse a transfer for good: the ack, and a Warning event unless it is not news for the job."""
        ctx = self._ctx
        ctx.answer(node, manifest, False, exc.reason)
        if manifest.uid == ctx.facts.uid and manifest.sender == node:
            self._refused[(manifest.round, node, manifest.transfer)] = exc.reason
        if manifest.uid != ctx.facts.uid or ctx.finished:
            # Leftovers of an earlier run, or traffic after the end: not news for the job's users.
            ctx.log.info("transfer rejected", worker=node, transfer_round=manifest.round, reason=exc.reason)
            return
        ctx.log.warning("transfer rejected", worker=node, transfer_round=manifest.round, reason=exc.reason)
        ctx.event(
            "Warning",
            "UpdateRejected",
            rejected_message(manifest.kind, node, manifest.round, exc.reason),
            node=node,
            round_=manifest.round,
        )

    def refuse(self, node: str, manifest: TransferManifest, reason: str) -> None:
        """The medium could not take this transfer (e.g. larger than the receiver's limit): reject it."""
        self.reject(node, manifest, UpdateRejectedError(reason))
        self._ctx.publish()

    def duplicate(self, node: str, manifest: TransferManifest) -> None:
        """An update already counted (or carried to the next round): acknowledged, not used again."""
        self._ctx.answer(node, manifest, True, f"already counted in round {self._ctx.state.round}")
        self._ctx.log.info("duplicate update ignored", worker=node, transfer=manifest.transfer)

    def discard(self, round_: int | None = None) -> None:
        """Drop incomplete transfers (of rounds up to `round_`, or all)."""
        for key, incoming in list(self._incoming.items()):
            if round_ is None or incoming.round <= round_:
                self._forget(key)
        for ident in [i for i in self._first_seen if round_ is None or i[0] <= round_]:
            del self._first_seen[ident]
        self._overflow.discard_rounds(round_)
        if round_ is None:
            self._assembler.discard_where(lambda _key: True)

    # -- messages --------------------------------------------------------------------------------

    def on_manifest(self, node: str, round_: int, manifest: TransferManifest, now_s: float) -> None:
        """An update or init manifest: answered at once when already stored or refused, else assembled.

        A manifest that arrives again while its transfer is incomplete is a resume request: the ack
        names the missing chunks. A first manifest of an incomplete transfer arms the resume timer.
        """
        ctx = self._ctx
        ctx.advance(now_s)
        key = self._key(round_, node, manifest.transfer)
        if self._answer_known(node, round_, manifest):
            return
        state = ctx.state
        if isinstance(state, Starting) and ctx.facts.resume and manifest.uid == ctx.facts.uid:
            # A resumed run before its script is back: answered once the round state is restored.
            state.early_manifests[(round_, node, manifest.transfer)] = manifest
            return
        try:
            check_manifest(ctx.facts, state, node, round_, manifest)
        except UpdateRejectedError as exc:
            self._forget(key)
            self.reject(node, manifest, exc)
            ctx.publish()
            return
        if manifest.kind in ("update", "partial") and isinstance(state, Training) and state.holds(node, round_):
            self.duplicate(node, manifest)
            return
        self._first_seen.setdefault((round_, node, manifest.transfer), now_s)
        self._take_manifest(node, round_, manifest, now_s)

    def on_malformed(self, node: str, round_: int, transfer: str, reason: str) -> None:
        """A manifest on this job's update topic that is not a valid manifest: refused, and said so."""
        ctx = self._ctx
        if ctx.finished:
            ctx.log.info("malformed manifest after the end ignored", worker=node, reason=reason)
            return
        ctx.ack(node, uid=ctx.facts.uid, round_=round_, transfer=transfer, accepted=False, reason=reason)
        ctx.event(
            "Warning",
            "UpdateRejected",
            rejected_message("update", node, round_, f"malformed manifest: {reason}"),
            node=node,
            round_=round_,
        )
        ctx.publish()

    def on_chunk(
        self, node: str, round_: int, transfer: str, index: int, data: bytes, *, now_s: float, digest: str | None = None
    ) -> None:
        """One chunk of a transfer; the transfer is delivered when its last chunk arrives (`digest`: the chunk's
        SHA-256 if the caller hashed it already)."""
        self._ctx.advance(now_s)
        if node not in self._ctx.facts.senders or not self.wants(round_):
            return
        key = self._key(round_, node, transfer)
        if (round_, node, transfer) in self._stored:
            return
        self._first_seen.setdefault((round_, node, transfer), now_s)
        try:
            done = self._overflow.add_chunk(key, round_, index, data, digest=digest)
        except TransferError as exc:  # every chunk matched, the whole blob did not: a bad manifest
            self._forget(key)
            self._ctx.log.warning("transfer failed its final check", worker=node, transfer=transfer, error=str(exc))
            return
        except AggregatorError as exc:  # the disk: the chunk is asked for again
            self._ctx.log.warning("chunk could not be spilled to disk", worker=node, transfer=transfer, error=str(exc))
            return
        incoming = self._incoming.get(key)
        if done is not None:
            self._incoming.pop(key, None)
            self._deliver(node, round_, *done)
        elif incoming is not None:
            incoming.due = now_s + self._ctx.facts.settings.resume_after
            incoming.interval = self._ctx.facts.settings.resume_after

    def tick(self, now_s: float) -> None:
        """Ask for the missing chunks of every transfer whose resume timer is due."""
        for key, incoming in list(self._incoming.items()):
            if now_s >= incoming.due:
                self._request_missing(key, now_s)

    # -- internals -------------------------------------------------------------------------------

    def _answer_known(self, node: str, round_: int, manifest: TransferManifest) -> bool:
        """Answer a manifest of a transfer already stored (accepted) or refused (the same reason)."""
        if manifest.uid != self._ctx.facts.uid or manifest.sender != node or manifest.round != round_:
            return False
        ident = (round_, node, manifest.transfer)
        if ident in self._stored:
            self._ctx.answer(node, manifest, True, "already stored")
            self._ctx.log.info("manifest of a stored transfer: acknowledged again", worker=node, transfer_round=round_)
            return True
        refused = self._refused.get(ident)
        if refused is not None:
            self._ctx.answer(node, manifest, False, refused)
            return True
        return False

    def _take_spilled(self, node: str, round_: int, key: str, manifest: TransferManifest, now_s: float) -> bool:
        """A manifest of a transfer (partly) on disk, or announced too large for the memory budget: taken here
        (True), or the assembler's (False)."""
        overflow = self._overflow
        if not overflow.takes_manifest(key, manifest):
            return False
        if len(manifest.chunk_sha256) != manifest.chunks or manifest.total_bytes > self._assembler.max_bytes:
            self._forget(key)
            self.refuse(node, manifest, f"transfer {manifest.transfer}: inconsistent or larger than the limit")
            return True
        if key in self._incoming and overflow.manifest(key) is not None:
            self._request_missing(key, now_s)  # a resume request
            return True
        try:
            done = overflow.add_manifest(key, round_, manifest)
        except (TransferError, AggregatorError) as exc:
            self._forget(key)
            self._ctx.log.warning("transfer failed on disk or its final check", worker=node, error=str(exc))
            return True
        if done is not None:
            self._incoming.pop(key, None)
            self._deliver(node, round_, *done)
            return True
        resume_after = self._ctx.facts.settings.resume_after
        self._incoming.setdefault(key, _Incoming(node, round_, manifest, now_s + resume_after, resume_after))
        return True

    def _take_manifest(self, node: str, round_: int, manifest: TransferManifest, now_s: float) -> None:
        resume_after = self._ctx.facts.settings.resume_after
        ident = (round_, node, manifest.transfer)
        key = self._key(*ident)
        if self._take_spilled(node, round_, key, manifest, now_s):
            return
        if key in self._incoming and self._assembler.missing(key) is not None:
            self._request_missing(key, now_s)
            return
        try:
            done = self._assembler.add_manifest(key, manifest)
        except TransferError as exc:
            self._forget(key)
            self.refuse(node, manifest, str(exc))
            return
        if done is not None:
            self._incoming.pop(key, None)
            self._deliver(node, round_, done.manifest, done.view, done.payload_sha256)  # no copy of the blob
            return
        if self._assembler.missing(key) is None:
            # Completed before but neither stored nor refused (it could not be stored): take it again,
            # under a fresh assembler key (the assembler takes the old key's chunks for duplicates).
            base = _transfer_key(*ident)
            self._retries[base] = self._retries.get(base, 0) + 1
            key = self._key(*ident)
            self._ctx.log.info("manifest of a transfer completed before; asking for it again", worker=node)
            self._assembler.add_manifest(key, manifest)
            self._incoming[key] = _Incoming(node, round_, manifest, now_s, resume_after)
            self._request_missing(key, now_s)
            return
        if key not in self._incoming:
            self._incoming[key] = _Incoming(node, round_, manifest, now_s + resume_after, resume_after)

    def _request_missing(self, key: str, now_s: float) -> None:
        """Ask the sender for the chunks of `key` that are not in (an UpdateAck with `missing`)."""
        incoming = self._incoming.get(key)
        if incoming is None:
            return
        manifest = incoming.manifest
        missing = self._overflow.missing(key)
        if missing is None:  # evicted to bound memory: everything again
            with contextlib.suppress(TransferError):
                self._assembler.add_manifest(key, manifest)
            missing = list(range(manifest.chunks))
        if not missing:
            return
        self._ctx.answer(
            incoming.node,
            manifest,
            False,
            f"incomplete: {len(missing)} of {manifest.chunks} chunks missing",
            missing=missing,
        )
        self._ctx.log.info(
            "asked for missing chunks", worker=incoming.node, transfer=manifest.transfer, missing=len(missing)
        )
        incoming.due = now_s + incoming.interval
        incoming.interval = min(incoming.interval * 2, MAX_RESUME_INTERVAL)

    def _key(self, round_: int, node: str, transfer: str) -> str:
        base = _transfer_key(round_, node, transfer)
        retry = self._retries.get(base)
        return base if retry is None else f"{base}#{retry}"

    def _forget(self, key: str) -> None:
        self._incoming.pop(key, None)
        self._overflow.discard(key)
