"""The load generator (benchmarks/loadgen.py) against the real broker and the real `fl-cloud-aggregator`:
five simulated edges (one fleet process) run a two-round job of a tiny model to Succeeded, every edge in
every round, nothing dropped by the broker, and the figures it reports are derived as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._simedge import training_seconds
from benchmarks.loadgen import LoadConfig, report, run
from schemas import Phase

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("client", ["lean", "session"])
def test_five_simulated_edges_run_a_job_to_succeeded(tmp_path: Path, client: str) -> None:
    """Both kinds of simulated edge clients: one network thread for the process (the default), or a
    `broker.Session` each."""
    cfg = LoadConfig(
        edges=5,
        model="tiny",
        rounds=2,
        train_ms=(0.0, 20.0),
        procs=1,
        workdir=tmp_path / "lg",
        timeout=150,
        edge_client=client,
    )

    result = run(cfg)

    text = report(result)
    assert result.status is not None and result.status.phase is Phase.SUCCEEDED, text
    assert [(r.round, r.participants) for r in result.rounds] == [(1, 5), (2, 5)], text
    assert result.sys_after_job and set(result.dropped) == {"0"}, text
    assert result.completed_edges == 5 and not result.edge_errors, text
    assert result.ok
    # Issue 12: only the plan's init source (the first edge, all online) uploads an init; it is the round-0 model.
    assert (result.init_source, result.inits_uploaded) == ("edge1", 1), text
    assert "round-0 model from edge1, 1 of 5 edges uploaded an init" in text
    assert f"edge clients {client}" in text
    for r in result.rounds:
        # The slowest training is the generator's own draw for that round; the overhead is the rest.
        slowest = max(training_seconds(0, i, r.round, 0.0, 0.02) for i in range(5))
        assert r.slowest_training == slowest
        assert r.overhead == pytest.approx(r.duration - slowest)
        # Every edge took the previous global model and had its update acknowledged by the broker.
        assert r.global_spread is not None and r.last_uploaded is not None and r.close_lag is not None


def test_training_time_is_a_reproducible_draw_in_range() -> None:
    draws = [training_seconds(7, i, r, 0.0, 0.2) for i in range(50) for r in (1, 2, 3)]
    assert draws == [training_seconds(7, i, r, 0.0, 0.2) for i in range(50) for r in (1, 2, 3)]
    assert all(0.0 <= d <= 0.2 for d in draws)
    assert len(set(draws)) == len(draws)
