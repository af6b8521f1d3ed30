"""Weights transfers as the engine sees them: the checks they must pass, and the manifest of a blob (pure).

`check_manifest` needs only the manifest, the topic and the job's stage (so a bad transfer is dropped
before its chunks are assembled); `decode_checked` decodes the blob (an encoded update's deltas onto the
model it was trained from, asked for only when the blob holds deltas) and checks that its header agrees
with the manifest and that every decoded value is finite; `describe_layout_difference` says how two tensor
layouts differ. Each failed check raises `UpdateRejectedError` with a one-line reason for the Warning
event and the ack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import UpdateRejectedError
from cloud_aggregator._strategy import Layout
from cloud_aggregator.engine._facts import JobFacts
from cloud_aggregator.engine._stages import Done, Final, Init, JobState, Starting, Training
from cloud_aggregator.engine._staleness import stale_problem
from schemas import TransferManifest, WeightsHeader, WireError, decode_tensors, read_header

__all__ = [
    "all_finite",
    "check_manifest",
    "check_origin",
    "checked_header",
    "decode_checked",
    "describe_layout_difference",
]


def check_manifest(
    facts: JobFacts, state: JobState, node: str, round_: int, manifest: TransferManifest
) -> Training | None:
    """Who sent it, for which run and round, and whether the job takes it now: no weights needed.

    Returns the open round's state for an update, None for an init (round 0, in any running stage).
    An update belongs to the open round; in the asynchronous mode also to an earlier one, up to
    ``max_staleness`` rounds back (`_staleness`).
    """
    if manifest.kind == "partial" and (facts.hierarchy is None or node not in facts.senders):
        raise UpdateRejectedError(f"{node} is not a site aggregator of this job (a partial comes from one)")
    if manifest.kind == "update" and facts.hierarchy is not None:
        site = facts.hierarchy.site_of(node)
        via = f" via {facts.hierarchy.aggregators[site]}" if site is not None else ""
        raise UpdateRejectedError(f"this job is hierarchical: {node}'s update goes to its site aggregator{via}")
    check_origin(manifest, node=node, round_=round_, uid=facts.uid, job=facts.name, participants=facts.senders)
    if isinstance(state, Starting | Done):
        raise UpdateRejectedError(f"the job is not running (stage {state.stage.value})")
    if manifest.kind == "init":
        if round_ != 0:
            raise UpdateRejectedError(f"an init transfer belongs to round 0, not round {round_}")
        return None
    if manifest.kind not in ("update", "partial"):
        raise UpdateRejectedError(f"kind {manifest.kind} is not an update")
    if isinstance(state, Init):
        raise UpdateRejectedError(f"round {round_} has not started: no round-0 model yet")
    if isinstance(state, Final):
        raise UpdateRejectedError(f"round {round_} is closed")
    problem = stale_problem(facts.asynchrony, state.round, round_)
    if problem is not None:
        raise UpdateRejectedError(problem)
    return state


def check_origin(
    manifest: TransferManifest, *, node: str, round_: int, uid: str, job: str, participants: Collection[str]
) -> None:
    """The transfer belongs to this run of `job`, comes from the topic's `node`, a participant, for the topic's round."""
    if manifest.uid != uid:
        raise UpdateRejectedError(f"transfer for job uid {manifest.uid}, the running job's uid is {uid}")
    if manifest.job != job:
        raise UpdateRejectedError(f"transfer names job {manifest.job!r}")
    if manifest.sender != node:
        raise UpdateRejectedError(f"sender {manifest.sender!r} does not match the topic's node {node!r}")
    if node not in participants:
        raise UpdateRejectedError(f"{node} is not a training worker of this job")
    if manifest.round != round_:
        raise UpdateRejectedError(f"manifest round {manifest.round} does not match the topic's round {round_}")


def decode_checked(
    manifest: TransferManifest,
    blob: bytes | memoryview,
    *,
    node: str,
    job: str,
    base: Callable[[], Sequence[npt.NDArray[Any]]] | None = None,
    payload_sha256: str | None = None,
) -> tuple[Layout, list[npt.NDArray[Any]], list[str]]:
    """The blob's layout, arrays and tensor names, once its header agrees with the manifest and its values are finite.

    `base`: the model the update was trained from, called only for a blob of encoded deltas (it may raise
    UpdateRejectedError: that version is no longer kept); None: deltas are refused (an init).
    The header's SHA-256 is checked against the payload always (the encoder's hash: a payload that is not
    what the encoder wrote is refused even when its transfer carried it faithfully): `payload_sha256` is
    that digest when the intake's assembler took it as the chunks arrived, else the payload is hashed here
    (a blob read back from the spool). Raw tensors are read-only views on `blob` (no copy)."""
    try:
        header, offset = read_header(blob)
        if header.needs_base and base is None:
            raise WireError("weights", f"an encoded delta cannot be a {manifest.kind}")
        payload = memoryview(blob)[offset:]
        if (payload_sha256 or hashlib.sha256(payload).hexdigest()) != header.sha256:
            raise WireError("weights", "tensor bytes do not match the header's sha256")
        arrays = decode_tensors(header, payload, base=base() if header.needs_base and base is not None else None)
    except WireError as exc:
        raise UpdateRejectedError(f"unreadable weights: {exc}") from exc
    _check_agrees(header, manifest, node, job)
    for i, (spec, array) in enumerate(zip(header.tensors, arrays, strict=True)):
        if array.dtype.kind in "fc" and not all_finite(array):
            raise UpdateRejectedError(f"tensor {i} ({spec.name}) has non-finite values (NaN or inf)")
    return header.layout(), arrays, [t.name for t in header.tensors]


def checked_header(manifest: TransferManifest, blob: bytes | memoryview, *, node: str, job: str) -> WeightsHeader:
    """The blob's header, once it agrees with the manifest (as `decode_checked` checks it, for a blob without
    deltas), without reading its tensors: for a blob whose weights are not used (an init after the round-0
    model was chosen), whose layout is all that matters."""
    try:
        header, _ = read_header(blob)
    except WireError as exc:
        raise UpdateRejectedError(f"unreadable weights: {exc}") from exc
    if header.needs_base:
        raise UpdateRejectedError(f"unreadable weights: weights: an encoded delta cannot be a {manifest.kind}")
    _check_agrees(header, manifest, node, job)
    return header


def _check_agrees(header: WeightsHeader, manifest: TransferManifest, node: str, job: str) -> None:
    for what, got, want in (
        ("kind", header.kind, manifest.kind),
        ("job", header.job, job),
        ("round", header.round, manifest.round),
        ("sender", header.sender, node),
        ("num_samples", header.num_samples, manifest.num_samples),
    ):
        if got != want:
            raise UpdateRejectedError(f"weights header says {what}={got!r}, expected {want!r}")


def all_finite(array: npt.NDArray[Any]) -> bool:
    """Whether every value of a floating array is finite, in one read pass and without a temporary.

    A sum over a NaN or an infinity is never finite, so a finite sum proves every value finite; a
    non-finite sum (finite values can overflow it) is settled by the exact, allocating check."""
    accumulate = np.float32 if array.dtype.kind == "f" and array.dtype.itemsize < 4 else None  # float16 overflows
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing or NaN sum is an answer, not a fault
        if bool(np.isfinite(np.add.reduce(array.reshape(-1), dtype=accumulate))):
            return True
    return bool(np.isfinite(array).all())


def describe_layout_difference(expected: Layout, got: Layout) -> str:
    """One line saying how two tensor layouts differ (empty when they are equal)."""
    if expected == got:
        return ""
    if len(expected) != len(got):
        return f"{len(got)} tensors, the global model has {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want != have:
            return (
                f"tensor {i} is {have[0]} {have[1]}{list(have[2])}, "
                f"the global model's is {want[0]} {want[1]}{list(want[2])}"
            )
    return "layouts differ"
