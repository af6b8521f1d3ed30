"""This edge's part of secure aggregation (docs/dev/secagg.md): one job run's rounds, no broker, no threads.

`SecAggParty` is driven by the aggregator's retained round states, the other edges' share bundles, the
script's update of a round (held here instead of uploaded) and the job's global models. Every event
re-examines the round it concerns (`_advance`), so a state, a bundle or an update arriving in any order,
again after a reconnect, or after a restart, leads to the same step:

    keys     (a round this node will train)   draw RoundSecrets, write the round file, publish KeyAdvert
    shares   (in U1)                          split and seal; secrets + bundle in the file; publish it
    masked   (in U2, its update held)         delta from the global it trained from, masked; `masked`
                                              in the file, then the job uploads it through the outbox
    unmask   (in U3, every U2 bundle held)    the shares U3 asks for; its U3 in the file; publish
    closed / aborted, or a newer global       the round's files (and older ones) deleted

Outside the roster at any phase, or without its round file past ``keys``, it sits the round out: a held
update is dropped with a status message and the job goes on with the next global model. Nothing derived
from a secret is published before the file recording it is written; a file that says ``masked`` is never
masked again (never two masked inputs for one round), and one U3 is answered per round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from structlog.typing import FilteringBoundLogger

from edge_trainer.engine._secagg_files import SecAggFiles, SecAggRoundFile
from runtime import FixedPoint, RoundContext, RoundSecrets, SecAggError, mask_update, share_bundle, unmask_answer
from schemas import (
    SecAggMember,
    SecAggState,
    ShareBundle,
    UnmaskAnswer,
    WireError,
    b64decode,
    b64encode,
    decode_weights,
    masked_blob,
)

__all__ = ["PartyLinks", "SecAggParty", "flat_delta", "is_secure_aggregation"]


def is_secure_aggregation(parameters: dict[str, str]) -> bool:
    """The planned worker parameters name a secure aggregation job (``secure_aggregation: "true"``, any case)."""
    value = next((v for k, v in parameters.items() if k.lower() == "secure_aggregation"), "false")
    return str(value).strip().lower() == "true"


def flat_delta(blob: bytes, base: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """The update `blob` minus the global model `base` it was trained from, every tensor flattened and
    concatenated in layout order, as float64; ValueError saying how the two differ."""
    try:
        _, arrays = decode_weights(blob)
    except WireError as exc:
        raise ValueError(f"the update is not a weights blob: {exc}") from exc
    if len(arrays) != len(base):
        raise ValueError(f"the update has {len(arrays)} tensors, the global model it was trained from {len(base)}")
    parts = []
    for i, (a, b) in enumerate(zip(arrays, base, strict=True)):
        if a.shape != b.shape:
            raise ValueError(f"tensor {i} of the update has shape {a.shape}, the global model's {b.shape}")
        parts.append((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).ravel())
    delta = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
    if not np.isfinite(delta).all():
        raise ValueError("the update holds non-finite values (NaN or inf)")
    return delta


@dataclass(frozen=True)
class PartyLinks:
    """What the protocol needs of its job (`EdgeJob` gives its own methods)."""

    publish: Callable[[str, int, bytes], None]  # (step, round, payload): keys/shares/unmask, retained
    upload: Callable[[int, bytes], None]  # the masked update blob of a round: through the outbox
    say: Callable[[int, str], None]  # a status message about the held update of a round
    num_samples: Callable[[], int | None]  # None until the script said hello
    newest_global: Callable[[], int]


@dataclass
class _Held:
    blob: bytes
    base: list[npt.NDArray[Any]]


class SecAggParty:
    """One job run's secure aggregation on this node. All methods run on the service's logic thread."""

    def __init__(
        self, *, job: str, uid: str, node: str, files: SecAggFiles, links: PartyLinks, log: FilteringBoundLogger
    ) -> None:
        self.job, self.uid, self.node = job, uid, node
        self.files = files
        self._links = links
        self._log = log.bind(secagg=True)
        self._states: dict[int, SecAggState] = {}  # the newest state of each open round
        self._sealed: dict[int, dict[str, bytes]] = {}  # round -> sender -> the pair it sealed for this node
        self._held: dict[int, _Held] = {}  # round -> the script's update, until it is masked
        self._out: dict[int, str] = {}  # rounds this node sits out -> why
        self._sent: set[tuple[int, str]] = set()  # (round, step) this process published
        self._said: dict[int, str] = {}  # the last status message about a round's held update
        self._refused: set[int] = set()  # rounds whose U3 differs from the one answered (said once)

    def context(self, round_: int) -> RoundContext:
        return RoundContext(f"{self.job}/{self.uid}", round_)

    # -- events ------------------------------------------------------------------------------------

    def on_state(self, state: SecAggState) -> None:
        """The aggregator's retained state of a round."""
        if state.job != self.job or state.uid != self.uid:
            self._log.info("secure aggregation state of another job run ignored", uid=state.uid, round=state.round)
            return
        if state.round <= self._links.newest_global():
            return  # a round whose global model this node holds: over
        if self._states.get(state.round) == state:
            # The same state again: the aggregator republished it after a reconnect, because its broker may
            # have lost its retained messages; this round's current message goes out again (the same bytes).
            self._sent = {(r, step) for r, step in self._sent if r != state.round}
        self._states[state.round] = state
        self._advance(state.round)
        self._note_held(state.round)

    def on_bundle(self, bundle: ShareBundle) -> None:
        """Another edge's retained share bundle (this node keeps the entry sealed for it)."""
        if bundle.job != self.job or bundle.uid != self.uid:
            self._log.info("share bundle of another job run ignored", uid=bundle.uid, sender=bundle.node)
            return
        if bundle.node == self.node or bundle.round <= self._links.newest_global():
            return
        entry = bundle.sealed.get(self.node)
        if entry is None:
            self._log.debug("share bundle with no entry for this node", sender=bundle.node, round=bundle.round)
            return
        try:
            self._sealed.setdefault(bundle.round, {})[bundle.node] = b64decode(entry, f"{bundle.node}'s sealed share")
        except WireError as exc:
            self._log.warning("share bundle ignored", sender=bundle.node, round=bundle.round, error=str(exc))
            return
        self._advance(bundle.round)

    def hold(self, round_: int, blob: bytes, base: list[npt.NDArray[Any]]) -> None:
        """The script's update of `round_` (trained from `base`): kept until it can be masked."""
        if round_ in self._out:
            self._links.say(round_, self._left_message(round_))
            return
        self._held[round_] = _Held(blob, base)
        self._advance(round_)
        self._note_held(round_)

    def on_global(self, round_: int) -> None:
        """A global model of `round_` arrived: that round and the older ones are over."""
        for book in (self._states, self._sealed, self._held, self._out, self._said):
            for r in [r for r in book if r <= round_]:
                del book[r]
        self._refused = {r for r in self._refused if r > round_}
        self._clear_upto(round_)

    def resume(self) -> None:
        """The job can take part now (the script said hello): go through the known rounds again."""
        for r in sorted(self._states):
            self._advance(r)

    def close(self) -> None:
        """The job ended (or is gone): every round file of the job is deleted."""
        self._states.clear()
        self._held.clear()
        self._sealed.clear()
        self.files.clear(self.job)

    # -- the round's step --------------------------------------------------------------------------

    def _advance(self, r: int) -> None:
        state = self._states.get(r)
        if state is None or r <= self._links.newest_global():
            return
        if state.phase in ("closed", "aborted"):
            self._finish(r, state)
            return
        if r in self._out:
            return
        record = self.files.load(self.job, self.uid, r)
        if state.phase == "keys":
            self._keys(r, record)
            return
        member = state.member(self.node)
        if member is None:
            self._leave(r, "this node is not in its roster U1 (its keys were not in when U1 was fixed)")
        elif record is None:
            self._leave(r, "this node has no round file for it (lost in a restart): it cannot take part past keys")
        elif member.c_public != b64encode(record.secrets.c_public) or member.s_public != b64encode(
            record.secrets.s_public
        ):
            self._log.error("the roster's public keys for this node are not its own", round=r)
            self._leave(r, "the roster U1 lists public keys for this node that are not its own")
        elif state.phase == "shares":
            self._shares(r, state, record)
        elif self.node not in state.u2 or record.bundle is None:
            self._leave(r, "this node is not in U2 (its share bundle was not in when U2 was fixed)")
        elif state.phase == "masked":
            self._masked(r, state, record, member)
        elif self.node not in state.u3:
            self._leave(r, "this node is not in U3 (its masked update was not counted)")
        else:
            self._drop_retrained(r, record)
            self._unmask(r, state, record)

    def _keys(self, r: int, record: SecAggRoundFile | None) -> None:
        samples = self._links.num_samples()
        if samples is None:
            return  # the script has not said hello: `resume` comes back here
        if samples < 1:
            self._leave(r, "its script reported no training samples (a key advert needs at least 1)")
            return
        if record is None:
            record = SecAggRoundFile(uid=self.uid, round=r, secrets=RoundSecrets.fresh())
            if not self._save(record):
                return
        secrets = record.secrets
        advert = secrets.key_advert(job=self.job, uid=self.uid, round_=r, node=self.node, num_samples=samples)
        self._publish(r, "keys", advert.to_json())

    def _shares(self, r: int, state: SecAggState, record: SecAggRoundFile) -> None:
        if record.bundle is None:
            roster = {m.node: (m.x, b64decode(m.c_public, f"{m.node}'s c public key")) for m in state.u1}
            try:
                sealed, secrets = share_bundle(
                    record.secrets, self.context(r), own=self.node, roster=roster, threshold=state.threshold
                )
            except (SecAggError, ValueError) as exc:  # a roster the threshold does not fit
                self._log.error("cannot share keys", round=r, error=str(exc))
                self._leave(r, f"its keys cannot be shared: {exc}")
                return
            record = dataclasses.replace(record, secrets=secrets, bundle={k: b64encode(v) for k, v in sealed.items()})
            if not self._save(record):
                return
        assert record.bundle is not None
        bundle = ShareBundle(job=self.job, uid=self.uid, round=r, node=self.node, sealed=record.bundle)
        self._publish(r, "shares", bundle.to_json())

    def _masked(self, r: int, state: SecAggState, record: SecAggRoundFile, member: SecAggMember) -> None:
        if record.masked:
            self._drop_retrained(r, record)
            return  # in the outbox (resent from there), confirmed, or lost: never masked twice
        held = self._held.get(r)
        if held is None:
            return  # still training (or trained again after a restart): `hold` comes back here
        try:
            delta = flat_delta(held.blob, held.base)
        except ValueError as exc:
            self._leave(r, f"its update cannot be masked: {exc}")
            return
        weighted = state.weighted
        try:
            # The advertised count is the one U1 (and max_weight) was fixed with, so the ratio stays <= 1.
            masked = mask_update(
                record.secrets,
                self.context(r),
                own=self.node,
                delta=delta,
                weight=member.num_samples if weighted else 1,
                max_weight=state.max_weight if weighted else 1,
                fixed=FixedPoint(state.clip, max_parties=len(state.u1)),
                peers={
                    m.node: b64decode(m.s_public, f"{m.node}'s s public key") for m in state.u1 if m.node in state.u2
                },
            )
        except SecAggError as exc:  # e.g. a state whose max_weight is below this node's advertised count
            self._log.error("cannot mask the update", round=r, error=str(exc))
            self._leave(r, f"its update cannot be masked: {exc}")
            return
        blob = masked_blob(masked, job=self.job, round_=r, sender=self.node, num_samples=member.num_samples)
        if not self._save(dataclasses.replace(record, masked=True)):
            return
        del self._held[r]
        self._said.pop(r, None)
        self._log.info("masked update of the round to the outbox", round=r, values=int(delta.size))
        self._links.upload(r, blob)

    def _unmask(self, r: int, state: SecAggState, record: SecAggRoundFile) -> None:
        if record.u3 is not None and sorted(record.u3) != sorted(state.u3):
            if r not in self._refused:
                self._refused.add(r)
                self._log.error(
                    "unmask refused: this node answered another U3 for this round",
                    round=r,
                    answered=record.u3,
                    asked=state.u3,
                )
            return
        others = [v for v in state.u2 if v != self.node]
        sealed = self._sealed.get(r, {})
        missing = [v for v in others if v not in sealed]
        if missing:
            self._log.debug("unmask waits for share bundles", round=r, missing=missing)
            return
        c_publics = {m.node: b64decode(m.c_public, f"{m.node}'s c public key") for m in state.u1}
        try:
            b_shares, s_shares = unmask_answer(
                record.secrets,
                self.context(r),
                own=self.node,
                c_publics=c_publics,
                sealed_for_me={v: sealed[v] for v in others},
                u2=state.u2,
                u3=state.u3,
            )
        except SecAggError as exc:
            self._log.error("cannot answer unmask", round=r, error=str(exc))
            return
        if record.u3 is None and not self._save(dataclasses.replace(record, u3=list(state.u3))):
            return
        answer = UnmaskAnswer(
            job=self.job,
            uid=self.uid,
            round=r,
            node=self.node,
            u3=list(state.u3),
            b_shares={k: b64encode(v) for k, v in b_shares.items()},
            s_shares={k: b64encode(v) for k, v in s_shares.items()},
        )
        self._publish(r, "unmask", answer.to_json())

    def _finish(self, r: int, state: SecAggState) -> None:
        if self._held.pop(r, None) is not None:
            if state.phase == "aborted":
                why = f"round {r}'s secure aggregation was aborted ({state.reason or 'no reason given'})"
            else:
                why = f"round {r}'s secure aggregation closed without this node's update"
            self._say(r, f"{why}; waiting for the next global model")
        self._clear_upto(r)

    # -- helpers -----------------------------------------------------------------------------------

    def _leave(self, r: int, reason: str) -> None:
        """Sit round `r` out: its held update (now or when it comes) is dropped with a status message."""
        if r not in self._out:
            self._log.warning("left out of the round's secure aggregation", round=r, reason=reason)
        self._out[r] = reason
        if self._held.pop(r, None) is not None:
            self._say(r, self._left_message(r))

    def _left_message(self, r: int) -> str:
        return f"left out of round {r}'s secure aggregation: {self._out[r]}; waiting for the next global model"

    def _drop_retrained(self, r: int, record: SecAggRoundFile) -> None:
        """An update trained again after a restart whose file says the round's masked update was made:
        never a second masked input for one round."""
        if record.masked and self._held.pop(r, None) is not None:
            self._say(
                r,
                f"update of round {r} not sent: this node's masked update of round {r} was made before a "
                "restart (one masked input per round); waiting for the round to close",
            )

    def _note_held(self, r: int) -> None:
        """While round `r`'s update waits here, the worker status names the phase it waits in."""
        if r in self._held:
            state = self._states.get(r)
            phase = f"phase {state.phase}" if state is not None else "waiting for its keys phase"
            self._say(r, f"update of round {r} held for secure aggregation ({phase})")

    def _say(self, r: int, message: str) -> None:
        if self._said.get(r) != message:
            self._said[r] = message
            self._links.say(r, message)

    def _save(self, record: SecAggRoundFile) -> bool:
        try:
            self.files.save(self.job, record)
        except OSError as exc:
            # Nothing derived from an unrecorded secret may go out: this step is tried again on the next event.
            self._log.error(
                "secure aggregation round file not written; nothing published", round=record.round, error=str(exc)
            )
            return False
        return True

    def _publish(self, r: int, step: str, payload: bytes) -> None:
        # Once per process and state: retained and QoS 1, so the broker keeps it; a restart, or the same state
        # republished by the aggregator (`on_state`), publishes it once again.
        if (r, step) not in self._sent:
            self._sent.add((r, step))
            self._links.publish(step, r, payload)

    def _clear_upto(self, r: int) -> None:
        gone = self.files.clear_upto(self.job, r)
        if gone:
            self._log.debug("secure aggregation round files deleted", rounds=gone)
