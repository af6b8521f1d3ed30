"""Evaluation figures (`schemas.Evaluation`): what follows from a confusion matrix, how the edges' reports
add up, what a round summary keeps, and what an edge's report may not be."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas import Evaluation, RoundRecord, WorkerRound


def test_evaluation_figures_follow_from_the_confusion_matrix() -> None:
    """accuracy = hits / samples; balanced accuracy = mean recall over the classes present; loss kept."""
    # Arrange: class 0: 8 of 10 right; class 1: 1 of 2 right; class 2 absent.
    confusion = [[8, 2, 0], [1, 1, 0], [0, 0, 0]]

    # Act
    evaluation = Evaluation.of(4, confusion, loss=0.25)

    # Assert
    assert (evaluation.round, evaluation.num_samples, evaluation.loss) == (4, 12, 0.25)
    assert evaluation.accuracy == pytest.approx(9 / 12, abs=1e-6)
    assert evaluation.balanced_accuracy == pytest.approx((0.8 + 0.5) / 2, abs=1e-6)
    assert Evaluation.of(1, [[0, 0], [0, 0]], loss=float("nan")).model_dump(exclude_none=True) == {
        "round": 1,
        "num_samples": 0,
        "accuracy": 0.0,
        "balanced_accuracy": 0.0,
        "confusion": [[0, 0], [0, 0]],
    }


def test_combined_evaluation_sums_the_edges_counts_and_weights_the_loss() -> None:
    """The federated figures are those of the union of the edges' held-out samples: counts add up, the loss
    is weighted by samples, accuracy is not a mean of the edges' accuracies."""
    # Arrange
    edge1 = Evaluation.of(2, [[9, 1], [0, 0]], loss=0.1)  # 10 samples, 90 %
    edge2 = Evaluation.of(2, [[0, 0], [3, 27]], loss=0.5)  # 30 samples, 90 %, the other class
    edge3 = Evaluation.of(2, [[1]], loss=0.2)  # a model that saw only class 0 in its held-out share

    # Act
    combined = Evaluation.combine([("edge2", edge2), ("edge1", edge1), ("edge3", edge3)])

    # Assert
    assert combined is not None
    assert combined.confusion == [[10, 1], [3, 27]] and combined.num_samples == 41
    assert combined.accuracy == pytest.approx(37 / 41, abs=1e-6)
    assert combined.balanced_accuracy == pytest.approx((10 / 11 + 27 / 30) / 2, abs=1e-6)
    assert combined.loss == pytest.approx((0.1 * 10 + 0.5 * 30 + 0.2 * 1) / 41, abs=1e-6)
    assert combined.workers == ["edge1", "edge2", "edge3"]
    assert Evaluation.combine([]) is None
    no_loss = Evaluation.of(2, [[1, 0], [0, 1]], loss=None)
    assert Evaluation.combine([("a", edge1), ("b", no_loss)]).loss is None  # type: ignore[union-attr]


def test_round_summary_drops_per_worker_figures() -> None:
    """What the job status keeps of a round: everything but the per-worker entries and the evaluators' names."""
    evaluation = Evaluation.of(1, [[3, 1], [1, 3]], loss=0.3, workers=["edge1", "edge2"])
    record = RoundRecord(
        round=1,
        participants=["edge1", "edge2"],
        total_samples=20,
        train={"loss": 0.4},
        eval=evaluation,
        workers=[WorkerRound(node="edge1", num_samples=10), WorkerRound(node="edge2", num_samples=10)],
    )

    summary = record.summary()

    assert summary.workers is None and summary.eval is not None and summary.eval.workers is None
    assert summary.eval.accuracy == evaluation.accuracy and summary.train == {"loss": 0.4}
    assert "workers" not in json.loads(summary.to_json())
    assert RoundRecord.model_validate_json(record.to_json()) == record


@pytest.mark.parametrize(
    "confusion",
    [[[1, 2], [3]], [[1, -1], [0, 1]], [[0] * 65 for _ in range(65)]],
    ids=["ragged", "negative", "too-many-classes"],
)
def test_an_evaluation_that_is_not_a_square_count_matrix_is_refused(confusion: list[list[int]]) -> None:
    """An edge's evaluation is input: ragged, negative or oversized confusion matrices are refused."""
    with pytest.raises(ValidationError, match="confusion"):
        Evaluation(round=1, num_samples=3, accuracy=0.5, balanced_accuracy=0.5, confusion=confusion)
