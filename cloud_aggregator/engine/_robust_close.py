"""Closing a round with a robust rule: read the round's accepted updates back from the spool.

The spool (`Port.store_update`) already holds every accepted update of the open round, durably, for
recovery; a robust rule (`cloud_aggregator.RobustStrategy`) needs all of them at once, so the close
reads them from there instead of keeping m models in memory while the round is open. Each counted
update is read with `Port.read_spooled_update` (the service memory-maps the file) and decoded into
read-only views on those bytes, never copied (an encoded update is decoded onto the model it was trained
from: that one update is a float array of its own): the rule then stacks one tensor of every update at a time,
so what the close itself allocates is m x the largest tensor (float64).

The close is a pure function of the spool and the previous global model: an aggregator killed mid-close
restarts from the previous checkpoint, refolds the same spool and closes the round to the same model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError, StrategyError
from cloud_aggregator._robust import RobustResult, RobustStrategy, RobustUpdate
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._stages import Training
from cloud_aggregator.engine._staleness import rebase
from schemas import WireError, decode_tensors, read_header

BaseOf = Callable[[Training, int], list[npt.NDArray[Any]] | None]


def robust_close(ctx: JobContext, strategy: RobustStrategy, closing: Training, base_of: BaseOf) -> RobustResult:
    """The round's model by `strategy` over the spooled updates counted in `closing` (raise StrategyError).

    `base_of(closing, r)` is the model an update of round r was trained from when it is not the round's
    own (asynchronous rounds): such an update is rebased onto the round's model first (`_staleness`), a
    copy of that one update. Robust rules rank updates rather than weigh them: staleness does not
    discount them here."""
    updates = []
    for node, num_samples in closing.counted.items():
        transfer = closing.transfers.get(node, "")
        try:
            blob = ctx.port.read_spooled_update(ctx.facts.name, closing.round, node, transfer)
            base = base_of(closing, closing.origins.get(node, closing.round))
            arrays = _views(blob, closing.model.arrays if base is None else base)
        except (AggregatorError, WireError) as exc:
            raise StrategyError(f"the spooled update of {node} cannot be read: {exc}") from exc
        if base is not None:
            arrays = rebase(arrays, base, closing.model.arrays)
        updates.append(RobustUpdate(node, num_samples, arrays))
    return strategy.aggregate(updates, closing.model.arrays)


def _views(blob: memoryview, base: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """The blob's tensors as read-only views on it (`schemas.decode_weights` would copy the payload); an
    encoded tensor is decoded (onto `base`, the model its update was trained from, when it is a delta).

    The checksum is checked again: the file was checked when it arrived, but it has sat on disk since."""
    header, offset = read_header(blob)
    if hashlib.sha256(blob[offset:]).hexdigest() != header.sha256:
        raise WireError("weights", "tensor bytes do not match the header's sha256")
    return decode_tensors(header, blob[offset:], base=base)
