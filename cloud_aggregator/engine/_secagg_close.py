"""The end of a secure aggregation round: the answers checked, the sum unmasked, the round's model folded.

`unmasked_mean` rebuilds the self-mask seeds of U3 and the mask keys of U2 \\ U3 from t answers
(`runtime.unmask_total`) and decodes the weighted mean delta of U3 (`FixedPoint.decode_weighted_mean`).
`round_accumulator` turns it into what every round closes from: the model ``global(r-1) + mean delta``
(each tensor cast to its dtype) folded as ONE update into a fresh accumulator, weighing the round's total
samples, but counting |U3| updates: differential privacy's close pads the n - |U3| missing updates with
the previous model and adds their missing noise by `AggregationState.count` (`Privacy.close`), and under
DP the update weighs |U3| (every edge 1), exactly the accumulator the plain path would have folded.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import StrategyError
from cloud_aggregator._strategy import AggregationState, cast_to
from cloud_aggregator.engine._secagg_record import SecAggRound
from cloud_aggregator.engine._stages import Training
from runtime import FixedPoint, RoundContext, SecAggError, Share, unmask_total
from schemas import UnmaskAnswer, WireError, b64decode

__all__ = ["check_answer_shares", "round_accumulator", "unmasked_mean"]


def check_answer_shares(answer: UnmaskAnswer, record: SecAggRound, x: int) -> str | None:
    """What is wrong with an answer's shares (None: nothing): a b-share for each member of U3, an s-share for
    each member of U2 \\ U3, each a `Share` at the answerer's roster position `x` for the round's threshold."""
    u3 = set(record.u3)
    dropped = set(record.u2) - u3
    if set(answer.b_shares) != u3:
        return f"its b-shares are of {sorted(answer.b_shares)}, expected U3 {sorted(u3)}"
    if set(answer.s_shares) != dropped:
        return f"its s-shares are of {sorted(answer.s_shares)}, expected U2 minus U3 {sorted(dropped)}"
    for kind, shares in (("b", answer.b_shares), ("s", answer.s_shares)):
        for member, text in shares.items():
            try:
                share = Share.from_bytes(b64decode(text, f"its {kind}-share of {member}"))
            except (WireError, SecAggError) as exc:
                return f"its {kind}-share of {member}: {exc}"
            if (share.x, share.threshold) != (x, record.threshold):
                return (
                    f"its {kind}-share of {member} is at x={share.x} for threshold {share.threshold}, expected "
                    f"x={x} (its roster position) and threshold {record.threshold}"
                )
    return None


def unmasked_mean(record: SecAggRound) -> npt.NDArray[np.float64]:
    """The weighted mean delta of U3's updates from the masked sum and the answers (SecAggError, WireError)."""
    if record.masked_sum is None:
        raise SecAggError("no masked update is in the sum")
    context = RoundContext(f"{record.job}/{record.uid}", record.round)
    s_publics = {m.node: b64decode(m.s_public, f"the s public key of {m.node}") for m in record.u1}
    answers = [
        (
            {k: b64decode(v, f"a b-share from {a.node}") for k, v in a.b_shares.items()},
            {k: b64decode(v, f"an s-share from {a.node}") for k, v in a.s_shares.items()},
        )
        for a in record.answers.values()
    ]
    total = unmask_total(
        record.masked_sum,
        context,
        s_publics=s_publics,
        u2=record.u2,
        u3=record.u3,
        answers=answers,
        threshold=record.threshold,
    )
    return FixedPoint(record.settings.clip, len(record.u1)).decode_weighted_mean(total)


def round_accumulator(open_round: Training, record: SecAggRound, mean: npt.NDArray[np.float64]) -> AggregationState:
    """The round's accumulator: global(r-1) + `mean` folded as one update (see the module's docstring)."""
    model, strategy = open_round.model, open_round.run.strategy
    arrays = []
    offset = 0
    for previous, (_, dtype, shape) in zip(model.arrays, model.layout, strict=True):
        size = int(np.prod(shape))
        values = np.asarray(previous, dtype=np.float64).ravel() + mean[offset : offset + size]
        arrays.append(cast_to(values.reshape(shape), dtype))
        offset += size
    if offset != mean.size:
        raise StrategyError(f"the unmasked mean has {mean.size} values, the model {offset}")
    samples = sum(open_round.counted[node] for node in record.u3)
    weight = samples if record.weighted else len(record.u3)
    acc = strategy.fold(strategy.begin(model.layout, model.arrays), arrays, samples, weight / samples)
    return dataclasses.replace(acc, count=len(record.u3))
