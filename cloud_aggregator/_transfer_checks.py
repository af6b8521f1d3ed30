"""The checks a weights transfer must pass before the round engine uses it (pure functions).

`check_origin` needs only the manifest and the topic (so a bad transfer is dropped before its chunks
are assembled); `decode_checked` decodes the blob and checks that its header agrees with the manifest
and that every value is finite; `describe_layout_difference` says how two tensor layouts differ. Each
failed check raises `UpdateRejectedError` with a one-line reason for the Warning event and the ack.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import UpdateRejectedError
from cloud_aggregator._strategy import Layout
from schemas import TransferManifest, WireError, decode_weights

__all__ = ["check_origin", "decode_checked", "describe_layout_difference"]


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
    manifest: TransferManifest, blob: bytes, *, node: str, job: str
) -> tuple[Layout, list[npt.NDArray[Any]], list[str]]:
    """The blob's layout, arrays and tensor names, once its header agrees with the manifest and its values are finite."""
    try:
        header, arrays = decode_weights(blob)
    except WireError as exc:
        raise UpdateRejectedError(f"unreadable weights: {exc}") from exc
    for what, got, want in (
        ("kind", header.kind, manifest.kind),
        ("job", header.job, job),
        ("round", header.round, manifest.round),
        ("sender", header.sender, node),
        ("num_samples", header.num_samples, manifest.num_samples),
    ):
        if got != want:
            raise UpdateRejectedError(f"weights header says {what}={got!r}, expected {want!r}")
    for i, (spec, array) in enumerate(zip(header.tensors, arrays, strict=True)):
        if array.dtype.kind in "fc" and not bool(np.isfinite(array).all()):
            raise UpdateRejectedError(f"tensor {i} ({spec.name}) has non-finite values (NaN or inf)")
    return header.layout(), arrays, [t.name for t in header.tensors]


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
