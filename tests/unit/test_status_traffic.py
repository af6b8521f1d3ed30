"""Status traffic stays linear in the edges (issue 12): the job status goes out a few times per round however
many edges report, each worker's entry in it is brief, every change is still on the event stream once, and the
round records are still complete. Driven through the real `Controller` by a simulated fleet on simulated time
(`tests.helpers.fleet`, the same one `benchmarks/control.py` measures with)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from itertools import groupby

import pytest

from flctl.printers import JobView, SpecView, describe_job, jobs_table
from schemas import Evaluation, JobStatus, Kind, Phase, WorkerState
from tests.helpers.status_fleet import JOB, Fleet

ROUNDS = 5
STEADY = range(2, ROUNDS)  # rounds that are neither the first nor the last


@cache  # the tests only read a run: each configuration runs once
def run(n: int, *, interval: float = 1.0, train_s: float = 3.0) -> Fleet:
    return fresh(n, interval=interval, train_s=train_s)


def fresh(n: int, *, interval: float = 1.0, train_s: float = 3.0) -> Fleet:
    fleet = Fleet(n, ROUNDS, interval=interval, train_s=train_s, seed=1)
    fleet.run()
    assert fleet.job.status.phase is Phase.SUCCEEDED, fleet.job.status.message
    return fleet


def status_publications(fleet: Fleet) -> list[int]:
    """Job status publications in each steady round."""
    return [fleet.port.tallies["job status"].count[r] for r in STEADY]


def published(fleet: Fleet) -> Iterator[JobStatus]:
    for kind, _, status in fleet.port.status_history:
        if kind is Kind.JOB and isinstance(status, JobStatus):
            yield status


def test_status_publications_per_round_do_not_grow_with_the_edges() -> None:
    """4 or 40 edges, each reporting 4 states per round: the status goes out at most 3 times a round (its close,
    then as changes wait 2, 4, 8 intervals); publishing every change would be 4-5 per edge and round."""
    small, large = run(4), run(40)
    every = run(20, interval=0.0)

    # Measured: 2 per round at 4 and at 40 edges (3 s rounds), 104 for every change at 20.
    assert max(status_publications(small)) <= 3 and max(status_publications(large)) <= 3
    assert min(status_publications(every)) >= 4 * 20
    # Longer rounds publish a few more (log2 of their length), still not per edge: 4 at 20 s.
    slow = run(40, train_s=20.0)
    assert max(status_publications(slow)) <= 5


def test_each_worker_entry_in_the_published_status_is_brief() -> None:
    """The published status names each worker's state, round, samples and message, not its figures (on its own
    status topic): its size per edge does not depend on what the edges report. The engine keeps the figures
    (the aggregator's Prometheus metrics read them)."""
    fleet = run(40)

    largest = max(len(s.to_json()) for s in published(fleet))
    whole = len(fleet.job.status.model_dump_json(by_alias=True, exclude_none=True))
    # Measured at 40 edges: 22.2 kB at most (the end's, each entry with the saved model's path and digest;
    # 16 kB mid-job), 35.4 kB with whole entries.
    assert largest < 40 * 350 + 10_000 and largest < 0.7 * whole, (largest, whole)
    for status in published(fleet):
        for worker in status.workers:
            assert (worker.metrics, worker.evaluation, worker.ledger, worker.uid) == ({}, None, None, None)
    engine = fleet.job.status.worker("edge001")
    assert engine is not None and engine.metrics and engine.evaluation is not None and engine.ledger is not None


def test_every_event_and_every_reported_state_is_on_the_stream_once() -> None:
    """With the status held back between publications the stream still says everything, once: each update
    accepted, each round opened, closed and evaluated, and each state every edge reported, in its order."""
    fleet = run(20)
    lines = fleet.port.job_events(JOB)

    said = Counter(line.reason for line in lines)
    assert said["UpdateAccepted"] == 20 * ROUNDS
    assert said["RoundOpened"] == said["RoundClosed"] == said["RoundEvaluated"] == ROUNDS
    assert said["WorkerCompleted"] == 20
    keys = [(line.reason, line.message, line.node, line.round) for line in lines]
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]
    for node, states in fleet.reported.items():
        changes = [state.value for state, _ in groupby(states)]  # a state reported twice is one change
        streamed = [
            (line.data or {}).get("to")
            for line in lines
            if line.reason == "WorkerStateChanged" and line.node == node and (line.data or {}).get("role") == "training"
        ]
        assert streamed == changes, node


def test_round_records_are_complete_and_published_at_most_twice() -> None:
    """Each round's record has every worker's training figures and evaluation (summed once per publication,
    not on every report) and goes out at its close and once complete."""
    fleet = run(20)

    for r in range(1, ROUNDS + 1):
        record = fleet.port.round_records[(JOB, r)]
        assert record is not None and record.workers is not None and len(record.workers) == 20
        assert record.eval is not None and record.eval.workers == fleet.edges
        assert all(w.train and w.eval is not None and w.eval.round == r for w in record.workers)
        assert sum(1 for _, n, _ in fleet.port.round_record_history if n == r) <= 2
    summaries = fleet.port.job_status(JOB).rounds
    assert [s.round for s in summaries] == list(range(1, ROUNDS + 1)) and all(s.eval for s in summaries)


@pytest.mark.parametrize("n", [4, 40])
def test_a_rounds_figures_are_summed_per_publication_not_per_report(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Summing a round's evaluations (every edge's) on each edge's report made a round cost the square of its
    edges: they are summed when the status or the record goes out, a few times a round whatever `n`."""
    calls = Counter[int]()
    combine = Evaluation.combine
    fleet = Fleet(n, ROUNDS, interval=1.0, train_s=3.0, seed=1)

    def counting(cls: type[Evaluation], parts: object) -> Evaluation | None:
        calls[fleet.job.round] += 1
        return combine(parts)  # type: ignore[arg-type]

    monkeypatch.setattr(Evaluation, "combine", classmethod(counting))
    fleet.run()

    # Measured: 2 per round at 4 and at 40 edges; summed on every report it was 5 at 4 and 41 at 40.
    assert min(calls[r] for r in STEADY) >= 1 and max(calls[r] for r in STEADY) <= 6, calls


def test_the_message_names_a_few_nodes_and_counts_the_rest() -> None:
    """A hundred names in every publication would be most of the message: five, then how many more;
    `waitingFor` lists them all."""
    fleet = run(40)

    waiting = [s for s in published(fleet) if len(s.waiting_for) == 40 and s.current_round == 2]
    assert waiting and all("edge005 and 35 more" in s.message for s in waiting), [s.message for s in waiting]
    assert all("edge006" not in s.message for s in waiting)


def test_flctl_shows_the_published_status_as_it_showed_the_whole_one() -> None:
    """`flctl get -o wide` and `describe` read the same from the brief entries as from whole ones."""
    fleet = run(4)
    engine = fleet.job.status
    wire = JobStatus.model_validate_json(engine.to_json())
    spec = SpecView(kind=Kind.JOB, name=JOB, data=None, resource=None, error="not read", created=None, created_by=None)
    now = datetime(2030, 1, 1, tzinfo=UTC)

    def views(status: JobStatus) -> tuple[str, str]:
        view = JobView(name=JOB, spec=spec, status=status)
        return jobs_table([view], now, wide=True), describe_job(view, now)

    assert views(wire) == views(engine)
    assert [w.state for w in wire.workers if w.role == "training"] == [WorkerState.COMPLETED] * 4
