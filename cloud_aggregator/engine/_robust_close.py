"""Closing a round with a robust rule: read the round's accepted updates back from the spool.

The spool (`Port.store_update`) already holds every accepted update of the open round, durably, for
recovery; a robust rule (`cloud_aggregator.RobustStrategy`) needs all of them at once, so the close
reads them from there instead of keeping m models in memory while the round is open. The close is a
pure function of the spool and the previous global model: an aggregator killed mid-close restarts from
the previous checkpoint, refolds the same spool and closes the round to the same model.
"""

from __future__ import annotations

from cloud_aggregator._errors import AggregatorError, StrategyError
from cloud_aggregator._robust import RobustResult, RobustStrategy, RobustUpdate
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._stages import Training
from schemas import WireError, decode_weights


def robust_close(ctx: JobContext, strategy: RobustStrategy, closing: Training) -> RobustResult:
    """The round's model by `strategy` over the spooled updates counted in `closing` (raise StrategyError)."""
    try:
        spooled = ctx.port.spooled_updates(ctx.facts.name, closing.round)
    except AggregatorError as exc:
        raise StrategyError(f"the round's spooled updates cannot be read: {exc}") from exc
    updates: dict[str, RobustUpdate] = {}
    for entry in spooled:
        # Only the transfer counted for each node (a node's update is counted once per round).
        if closing.transfers.get(entry.node) != entry.transfer or entry.node in updates:
            continue
        try:
            _, arrays = decode_weights(entry.blob)
        except WireError as exc:
            raise StrategyError(f"the spooled update of {entry.node} cannot be read: {exc}") from exc
        updates[entry.node] = RobustUpdate(entry.node, closing.counted[entry.node], arrays)
    missing = sorted(set(closing.counted) - set(updates))
    if missing:
        raise StrategyError(f"the spool lacks the counted updates of {', '.join(missing)}")
    return strategy.aggregate(list(updates.values()), closing.model.arrays)
