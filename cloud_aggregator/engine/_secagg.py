"""Secure aggregation's phases at the aggregator (docs/dev/secagg.md): one round's record moved from phase to phase.

When a round of a secure aggregation job opens (`open`) the aggregator publishes state ``keys``; the edges'
key adverts fix U1 (``shares``), their share bundles U2 (``masked``), their masked updates (the update
path: `check_masked`, `counted`) U3 (``unmask``), and t unmask answers give the sum of U3's updates
(`_secagg_close`): the round then closes as every round does, its state says ``closed`` and every retained
message of the round is cleared. Each phase waits for everyone it expects; once its deadline passed
(``round_deadline`` from the phase's start: the phases of one round are sequential, and the masked phase
holds the training) it moves on with max(t, min_participants) and aborts below t: the job fails
(``SecAggAborted``) naming the round, the phase and who was missing.

Every step is saved (`SecAggRound`, `Port.save_secagg`) before the state that follows from it is
published, so a restart (`open` finds the record, `progress` after the spool is refolded) continues where
the round was. An edge's message that does not belong (another run, a node that is not the topic's, not a
training worker, not in the phase, malformed) is ignored with a Warning event naming node and topic; the
same message arriving again (retained, after a restart) changes nothing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from cloud_aggregator._errors import AggregatorError, UpdateRejectedError
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._secagg_close import check_answer_shares, round_accumulator, unmasked_mean
from cloud_aggregator.engine._secagg_record import SecAggRound
from cloud_aggregator.engine._stages import Training
from runtime import SecAggError
from schemas import (
    KeyAdvert,
    Phase,
    SecAggMember,
    SecAggPhase,
    ShareBundle,
    TransferManifest,
    UnmaskAnswer,
    WireError,
    b64decode,
    read_masked,
)

__all__ = ["SECAGG_STEPS", "Closer", "SecureAggregation"]

#: The edges' steps, each one's message.
SECAGG_STEPS: dict[str, type[KeyAdvert] | type[ShareBundle] | type[UnmaskAnswer]] = {
    "keys": KeyAdvert,
    "shares": ShareBundle,
    "unmask": UnmaskAnswer,
}

Message = KeyAdvert | ShareBundle | UnmaskAnswer


class Closer(Protocol):
    """What secure aggregation asks of the round engine."""

    def close(self, open_round: Training) -> None: ...

    def fail(self, reason: str, message: str) -> None: ...


class SecureAggregation:
    """The secure aggregation side of one job's rounds (its record lives on the open round: `Training.secagg`)."""

    def __init__(self, ctx: JobContext, closer: Closer) -> None:
        self._ctx = ctx
        self._closer = closer

    # -- the round -----------------------------------------------------------------------------------

    def open(self, open_round: Training) -> None:
        """The round opened: its saved record (a restart) or a new one in phase keys; its state published."""
        ctx, facts = self._ctx, self._ctx.facts
        settings = open_round.run.secagg
        if settings is None:
            return
        record = self._load(open_round.round)
        restored = record is not None
        if record is None:
            # Differential privacy weighs every update 1 (DP-FedAvg's uniform mean): so do the encodings.
            record = SecAggRound(facts.name, facts.uid, open_round.round, settings, open_round.run.privacy is None)
        record.phase_started = ctx.clock
        open_round.secagg = record
        if record.phase == "aborted":  # the restart of a run whose failure was not published yet
            self._closer.fail("SecAggAborted", record.reason or f"round {record.round}: secure aggregation aborted")
            return
        if restored:
            ctx.log.info("secure aggregation record restored", phase=record.phase, u1=record.u1_names)
        else:
            self._save(record)
        self._publish(record)

    def progress(self, open_round: Training) -> None:
        """Move to the next phase when the one in progress has what it waits for (after each arrival, a
        refold, a deadline)."""
        record = open_round.secagg
        if record is None:
            return
        have, expected = self._tally(open_round, record)
        if record.phase == "unmask":
            if len(have) >= record.threshold:
                self._unmask(open_round, record)
            return
        quorum = max(record.threshold, self._ctx.facts.min_participants)
        if len(have) < len(expected) and not (record.late and len(have) >= quorum):
            return
        if record.phase == "keys":
            self._fix_u1(open_round, record, have)
        elif record.phase == "shares":
            self._enter(record, "masked", u2=have)
        elif record.phase == "masked":
            self._enter(record, "unmask", u3=have)

    def tick(self, open_round: Training, now_s: float) -> None:
        """The phase's deadline (``round_deadline`` from its start): move on with a quorum, abort below t."""
        ctx, deadline = self._ctx, self._ctx.facts.round_deadline
        record = open_round.secagg
        if record is None or deadline is None or record.late or now_s < record.phase_started + deadline:
            return
        record.late = True
        have, expected = self._tally(open_round, record)
        if len(have) < record.threshold:
            self._abort(open_round, record, have, expected)
        else:
            phase = record.phase
            self.progress(open_round)
            if record.phase == phase and not ctx.finished and open_round is ctx.state:
                quorum = max(record.threshold, ctx.facts.min_participants)
                ctx.event(
                    "Warning",
                    "BelowQuorum",
                    f"round {record.round}: secure aggregation phase {phase}: the deadline of {deadline:g} s "
                    f"passed with {len(have)}/{len(expected)}, quorum {quorum}; waiting for "
                    f"{', '.join(n for n in expected if n not in have)}",
                )
        ctx.publish()

    def republish(self) -> None:
        """Publish the open round's state again, and the share bundles it holds (a broker that lost its
        retained messages: the edges need each other's bundles to answer; the same messages again)."""
        ctx, state = self._ctx, self._ctx.state
        if isinstance(state, Training) and state.secagg is not None:
            self._publish(state.secagg)
            for bundle in state.secagg.bundles.values():
                ctx.safely(ctx.port.restore_secagg_bundle, ctx.facts.name, bundle)

    def clear(self, round_: int, *, keep_state: bool = False) -> None:
        """Clear the round's retained messages: every training worker's keys, shares and unmask answer (a
        superset of U1: late advertisers too), and the state unless `keep_state`."""
        ctx, facts = self._ctx, self._ctx.facts
        if not keep_state:
            ctx.safely(ctx.port.publish_secagg_state, facts.name, round_, None)
        for node in facts.participants:
            for step in SECAGG_STEPS:
                ctx.safely(ctx.port.clear_secagg_step, facts.name, round_, step, node)

    # -- the edges' messages ---------------------------------------------------------------------------

    def on_message(self, step: str, node: str, round_: int, topic: str, payload: bytes) -> None:
        """An edge's key advert, share bundle or unmask answer (``rounds/<r>/secagg/<step>/<node>``), or
        (`step` ``state``) this aggregator's own state coming back."""
        ctx = self._ctx
        if not payload:
            return  # a cleared retained message (this aggregator's own clearing)
        state = ctx.state
        record = state.secagg if isinstance(state, Training) else None
        if step == "state":
            if record is not None and round_ < record.round:  # a closed round's, left by a stop before its clearing
                ctx.safely(ctx.port.publish_secagg_state, ctx.facts.name, round_, None)
            return
        if not isinstance(state, Training) or record is None:
            ctx.log.info("secure aggregation message outside a round ignored", topic=topic, worker=node)
            return
        if round_ < record.round:
            # Left from a round that closed (an aggregator that stopped before clearing it): it only takes space.
            ctx.safely(ctx.port.clear_secagg_step, ctx.facts.name, round_, step, node)
            return
        parsed = self._parse(step, payload)
        problem = parsed if isinstance(parsed, str) else self._origin(parsed, node, round_, record)
        if problem is None and not isinstance(parsed, str):
            take = {"keys": self._advert, "shares": self._bundle, "unmask": self._answer}[step]
            problem = take(state, record, parsed)
        if problem:
            ctx.event(
                "Warning",
                "SecAggMessageIgnored",
                f"{step} message from {node} on {topic} ignored: {problem}",
                node=node,
            )
        ctx.publish()

    @staticmethod
    def _parse(step: str, payload: bytes) -> Message | str:
        """The step's message, or what is wrong with the payload."""
        model = SECAGG_STEPS[step]
        try:
            return model.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the payload"
            return f"not a {model.__name__} ({where}: {first['msg']})"

    def _origin(self, message: Message, node: str, round_: int, record: SecAggRound) -> str | None:
        """Whether the message is of this run, from the topic's node, a training worker, for the open round."""
        facts = self._ctx.facts
        if message.uid != facts.uid or message.job != facts.name:
            return f"it belongs to run {message.uid} of job {message.job}, not run {facts.uid}"
        if message.node != node or message.round != round_:
            return f"it names node {message.node} and round {message.round}, not the topic's"
        if node not in facts.participants:
            return f"{node} is not a training worker of this job"
        if round_ != record.round:
            return f"round {round_} is not open (round {record.round} is)"
        return None

    def _advert(self, open_round: Training, record: SecAggRound, advert: Message) -> str | None:
        assert isinstance(advert, KeyAdvert)
        if record.phase != "keys":
            member = record.member(advert.node)
            if member is not None and (member.c_public, member.s_public, member.num_samples) == (
                advert.c_public,
                advert.s_public,
                advert.num_samples,
            ):
                return None  # its advert again (retained)
            return f"U1 is fixed ({', '.join(record.u1_names)}; phase {record.phase})"
        if record.adverts.get(advert.node) == advert:
            return None
        # In phase keys a new advert replaces the old one: nothing was derived from it yet.
        record.adverts[advert.node] = advert
        self._save(record)
        self.progress(open_round)
        return None

    def _bundle(self, open_round: Training, record: SecAggRound, bundle: Message) -> str | None:
        assert isinstance(bundle, ShareBundle)
        node = bundle.node
        if record.phase == "keys":
            return "U1 is not fixed yet (phase keys)"
        if record.member(node) is None:
            return f"{node} is not in U1 ({', '.join(record.u1_names)})"
        expected = sorted(set(record.u1_names) - {node})
        if sorted(bundle.sealed) != expected:
            return f"it is addressed to {sorted(bundle.sealed)}, not to U1 minus its sender ({expected})"
        try:
            for receiver, sealed in bundle.sealed.items():
                b64decode(sealed, f"the sealed shares for {receiver}")
        except WireError as exc:
            return exc.reason
        if record.phase != "shares":
            return None if node in record.u2 else f"U2 is fixed ({', '.join(record.u2)}; phase {record.phase})"
        if node not in record.shared:
            record.shared[node] = expected
            record.bundles[node] = bundle
            self._save(record)
            self.progress(open_round)
        return None

    def _answer(self, open_round: Training, record: SecAggRound, answer: Message) -> str | None:
        assert isinstance(answer, UnmaskAnswer)
        node = answer.node
        if record.phase != "unmask":
            return f"the round is in phase {record.phase}, not unmask"
        if node not in record.u3:
            return f"{node} is not in U3 ({', '.join(record.u3)})"
        if sorted(answer.u3) != sorted(record.u3):
            return f"it answers for U3 {sorted(answer.u3)}, the round's U3 is {sorted(record.u3)}"
        if node in record.answers:
            return None if record.answers[node] == answer else "it differs from its first answer, which stands"
        member = record.member(node)
        assert member is not None  # U3 is within U1
        problem = check_answer_shares(answer, record, member.x)
        if problem:
            return problem
        record.answers[node] = answer
        self._save(record)
        self.progress(open_round)
        return None

    # -- masked updates (the update path's secure aggregation branch) ---------------------------------

    def check_masked(
        self, open_round: Training, node: str, manifest: TransferManifest, blob: bytes | memoryview, *, spooled: bool
    ) -> npt.NDArray[np.uint32]:
        """The masked vector of `node`'s update, once it may go into the round's sum (UpdateRejectedError).

        `spooled`: refolded after a restart: it was counted (or about to be) before the phase moved on."""
        record = open_round.secagg
        assert record is not None
        if spooled and record.phase == "unmask":
            if node not in record.u3:
                raise UpdateRejectedError(f"{node} is not in U3: its stored masked update stays out of the sum")
        elif record.phase != "masked":
            raise UpdateRejectedError(
                f"secure aggregation of round {record.round} is in phase {record.phase}, not masked"
            )
        if node not in record.u2:
            raise UpdateRejectedError(
                f"{node} is not in U2 ({', '.join(record.u2)}): its masked update cannot be unmasked"
            )
        try:
            read = read_masked(blob)
        except WireError as exc:
            raise UpdateRejectedError(f"unreadable masked update: {exc}") from exc
        if read is None:
            raise UpdateRejectedError(
                "expected a masked update (one uint32 tensor secagg/masked): the job aggregates securely"
            )
        header, vector = read
        for what, got, want in (
            ("kind", header.kind, manifest.kind),
            ("job", header.job, self._ctx.facts.name),
            ("round", header.round, manifest.round),
            ("sender", header.sender, node),
            ("num_samples", header.num_samples, manifest.num_samples),
        ):
            if got != want:
                raise UpdateRejectedError(f"weights header says {what}={got!r}, expected {want!r}")
        member = record.member(node)
        if member is not None and manifest.num_samples != member.num_samples:
            raise UpdateRejectedError(
                f"num_samples {manifest.num_samples} is not its key advert's {member.num_samples} (the weight it encoded)"
            )
        params = sum(int(np.prod(shape)) for _, _, shape in open_round.model.layout)
        if vector.size != params + 1:
            raise UpdateRejectedError(
                f"the masked vector has {vector.size} values, expected {params + 1} (the model's {params} and the weight)"
            )
        return vector

    # -- phases ------------------------------------------------------------------------------------------

    def _tally(self, open_round: Training, record: SecAggRound) -> tuple[list[str], list[str]]:
        """(who is in, who the phase waits for), in roster order."""
        arrived: set[str]
        if record.phase == "keys":
            expected, arrived = list(self._ctx.facts.participants), set(record.adverts)
        elif record.phase == "shares":
            expected, arrived = record.u1_names, set(record.shared)
        elif record.phase == "masked":
            expected, arrived = list(record.u2), set(open_round.counted)
        elif record.phase == "unmask":
            expected, arrived = list(record.u3), set(record.answers)
        else:
            expected, arrived = [], set()
        return [n for n in expected if n in arrived], expected

    def _fix_u1(self, open_round: Training, record: SecAggRound, have: list[str]) -> None:
        adverts = [record.adverts[n] for n in sorted(have)]
        record.u1 = [
            SecAggMember(node=a.node, x=i + 1, c_public=a.c_public, s_public=a.s_public, num_samples=a.num_samples)
            for i, a in enumerate(adverts)
        ]
        record.max_weight = max(a.num_samples for a in adverts) if record.weighted else 1
        record.adverts = {}  # U1 carries them now
        self._enter(record, "shares")

    def _enter(
        self, record: SecAggRound, phase: SecAggPhase, *, u2: list[str] | None = None, u3: list[str] | None = None
    ) -> None:
        """The next phase: saved, then published (a restart republishes what it saved)."""
        record.phase = phase
        if u2 is not None:
            record.u2, record.shared = list(u2), {}
        if u3 is not None:
            record.u3 = list(u3)
        record.phase_started, record.late = self._ctx.clock, False
        self._save(record)
        self._publish(record)
        self._ctx.log.info("secure aggregation phase", phase=phase, u1=record.u1_names, u2=record.u2, u3=record.u3)

    def _unmask(self, open_round: Training, record: SecAggRound) -> None:
        """t answers are in: the sum of U3's updates, the round's model folded as one update, the round closed."""
        ctx = self._ctx
        try:
            mean = unmasked_mean(record)
            open_round.acc = round_accumulator(open_round, record, mean)
        except (SecAggError, AggregatorError, WireError) as exc:
            self._closer.fail("SecAggFailed", f"round {record.round}: the sum of U3 cannot be unmasked: {exc}")
            return
        self._closer.close(open_round)
        if ctx.status.phase is Phase.FAILED:
            return  # the close failed the job (its message says why); the state stays as it was
        record.phase = "closed"
        self._publish(record)
        self.clear(record.round)

    def _abort(self, open_round: Training, record: SecAggRound, have: list[str], expected: list[str]) -> None:
        missing = [n for n in expected if n not in have]
        message = (
            f"round {record.round}: secure aggregation aborted in phase {record.phase}: {len(have)} of "
            f"{len(expected)} parties, the threshold is {record.threshold}; missing {', '.join(missing)}"
        )
        record.phase, record.reason = "aborted", message
        self._save(record)
        self._publish(record)
        self.clear(record.round, keep_state=True)  # the aborted state stays: edges that come back read it
        self._closer.fail("SecAggAborted", message)

    # -- the record's effects -------------------------------------------------------------------------------

    def _load(self, round_: int) -> SecAggRound | None:
        ctx, facts = self._ctx, self._ctx.facts
        try:
            data = ctx.port.load_secagg(facts.name, round_)
            record = SecAggRound.from_bytes(data) if data is not None else None
        except (AggregatorError, ValueError) as exc:
            ctx.event("Warning", "SecAggUnreadable", f"round {round_}: the secure aggregation record: {exc}")
            return None
        if record is None or (record.job, record.uid, record.round) != (facts.name, facts.uid, round_):
            return None
        return record

    def _save(self, record: SecAggRound) -> None:
        ctx = self._ctx
        try:
            ctx.port.save_secagg(ctx.facts.name, record.round, record.to_bytes())
        except AggregatorError as exc:
            ctx.event(
                "Warning", "SecAggNotSaved", f"round {record.round}: the secure aggregation record was not saved: {exc}"
            )

    def _publish(self, record: SecAggRound) -> None:
        ctx = self._ctx
        try:
            ctx.port.publish_secagg_state(ctx.facts.name, record.round, record.state())
        except AggregatorError as exc:
            ctx.event(
                "Warning", "SecAggNotPublished", f"round {record.round}: state {record.phase} was not published: {exc}"
            )
