"""Differential privacy on the aggregator: DP-FedAvg's clip, uniform mean over the fixed denominator and
noise, the accountant (against dp-accounting called directly), the budget that ends a job, and restarts
that report the same epsilon (in-memory port, three edges)."""

from __future__ import annotations

import itertools

import dp_accounting
import numpy as np
import pytest

from cloud_aggregator import FedAvg, Privacy, StrategyError, epsilon_spent
from cloud_aggregator.engine import Job, Stage
from cloud_aggregator.testing import MemoryPort
from schemas import Kind, Phase, WorkerFrame, WorkerState, parameter_value_problem
from tests.unit.test_aggregator_async import deliver, events, model, three_edges
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_job_rounds import JOB, UID, report

# z tiny: the noise is far below the tolerance, so the clipped uniform mean can be checked by hand.
QUIET = {"dp_mode": "central", "dp_clip_norm": "1", "dp_noise_multiplier": "1e-9"}


def started(port: MemoryPort, parameters: dict[str, str], *, exit_round: int = 4, resume: bool = False) -> Job:
    previous = port.statuses.get((Kind.JOB, JOB)) if resume else None
    job = Job(three_edges(parameters, resume=resume), port, previous_status=previous)  # type: ignore[arg-type]
    job.start(0.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=exit_round), 0.1)
    if not resume and job.stage is Stage.INIT:
        manifest, chunks = transfer("edge1", 0, [np.zeros(2, np.float32)], kind="init")
        send(job, "edge1", manifest, chunks, 0.2)
    return job


def a_round(job: Job, round_: int, base: list[float]) -> None:
    for node, step in (("edge1", 0.1), ("edge2", -0.1), ("edge3", 0.05)):
        deliver(job, node, round_, [b + step for b in base])


def direct_epsilon(rounds: int, z: float, delta: float, q: float = 1.0) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return float(accountant.get_epsilon(target_delta=delta))


# -- the accountant ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("z", "delta", "q"), [(1.0, 1e-5, 1.0), (0.7, 1e-6, 1.0), (1.3, 1e-5, 0.5)])
def test_the_accountant_is_dp_accounting_and_grows_with_rounds(z: float, delta: float, q: float) -> None:
    rounds = (0, 1, 2, 5, 10, 20)
    spent = [epsilon_spent(t, z, delta, q) for t in rounds]
    assert spent[0] == 0.0
    for t, value in zip(rounds[1:], spent[1:], strict=True):
        assert value == pytest.approx(direct_epsilon(t, z, delta, q), rel=1e-9)
    assert all(b > a for a, b in itertools.pairwise(spent))
    assert epsilon_spent(10, z * 2, delta, q) < spent[4]  # more noise, less epsilon


def test_privacy_comes_from_the_aggregation_worker_with_a_default_delta() -> None:
    privacy = Privacy.of({"DP_MODE": "Central", "dp_clip_norm": "0.5", "DP_NOISE_MULTIPLIER": "1.1"}, 3)
    assert privacy == Privacy("central", 0.5, 1.1, 1e-5, None, 3)
    assert Privacy.of({}, 3) is None and Privacy.of({"dp_mode": "none"}, 3) is None
    with pytest.raises(StrategyError, match="dp_mode=local needs the aggregationWorker parameter dp_clip_norm"):
        Privacy.of({"dp_mode": "local", "dp_noise_multiplier": "1"}, 3)
    with pytest.raises(StrategyError, match=r"dp_noise_multiplier='0': expected a number in \(0, 1000\]"):
        Privacy.of({"dp_mode": "central", "dp_clip_norm": "1", "dp_noise_multiplier": "0"}, 3)
    assert (
        parameter_value_problem("dp_mode", "global")
        == "expected one of none, central, local, distributed, got 'global'"
    )
    assert parameter_value_problem("dp_delta", "1") == "expected a number in (0, 1)"


# -- the noise ------------------------------------------------------------------------------------------


def test_central_noise_on_the_mean_has_std_z_c_over_n() -> None:
    """Three updates of 100 000 coordinates, each delta clipped already; the mean's noise is z*C/3."""
    n, size, z, c = 3, 100_000, 1.5, 0.2
    privacy = Privacy("central", c, z, 1e-5, None, n)
    strategy = FedAvg()
    previous = [np.full(size, 2.0, np.float32)]
    state = strategy.begin((("w", "float32", (size,)),))
    for samples in (5, 50, 500):  # the sample counts must not matter
        state = strategy.fold(state, previous, samples, privacy.fold_scale(samples))
    rng = np.random.default_rng(7)  # a fixed seed only here, to make the statistics repeatable
    [mean] = strategy.finish(privacy.close(state, previous, rng), previous)
    noise = mean.astype(np.float64) - 2.0
    assert abs(float(noise.mean())) < 0.01 * z * c
    assert float(noise.std()) == pytest.approx(z * c / n, rel=0.02)


def test_each_edge_gets_its_share_of_the_noise_and_the_aggregator_the_missing_ones() -> None:
    central = Privacy("central", 2.0, 1.0, 1e-5, None, 4)
    local = Privacy("local", 2.0, 1.0, 1e-5, None, 4)
    distributed = Privacy("distributed", 2.0, 1.0, 1e-5, None, 4)
    assert (central.edge_noise_std(), local.edge_noise_std(), distributed.edge_noise_std()) == (0.0, 2.0, 1.0)
    # four shares of variance 1 sum to variance 4 = (z*C)^2; one missing share is topped up at the close
    assert distributed.sum_noise_std(4) == 0.0 and distributed.sum_noise_std(3) == pytest.approx(1.0)
    assert central.sum_noise_std(3) == 2.0 and local.sum_noise_std(1) == 0.0
    assert central.edge_parameters() == {}
    assert distributed.edge_parameters() == {"dp_mode": "distributed", "dp_clip_norm": "2.0", "dp_noise_std": "1.0"}


# -- the engine -------------------------------------------------------------------------------------------


def test_central_dp_clips_each_delta_and_averages_uniformly_over_every_worker() -> None:
    port = MemoryPort()
    job = started(port, QUIET)
    deliver(job, "edge1", 1, [3.0, 4.0])  # delta of norm 5 (10 samples): clipped to [0.6, 0.8]
    deliver(job, "edge2", 1, [0.0, 0.5])  # norm 0.5 (30 samples): as sent, weighing as much as edge1
    deliver(job, "edge3", 1, [0.0, 0.0])
    assert model(port, 1) == pytest.approx([0.6 / 3, 1.3 / 3], abs=1e-6)
    record = port.round_records[(JOB, 1)]
    assert record is not None and record.workers is not None
    assert record.workers[0].robust == "clipped from norm 5 to 1"
    assert record.epsilon is not None and record.epsilon == pytest.approx(epsilon_spent(1, 1e-9, 1e-5), rel=1e-5)


def test_central_dp_noise_moves_the_model() -> None:
    port = MemoryPort()
    job = started(port, {**QUIET, "dp_noise_multiplier": "1"})
    for node in ("edge1", "edge2", "edge3"):
        deliver(job, node, 1, [0.0, 0.0])  # no update moves the model: only the noise does
    assert model(port, 1) != [0.0, 0.0]


def test_the_job_ends_succeeded_when_one_more_round_would_pass_the_budget() -> None:
    z, delta = 2.0, 1e-5
    budget = (epsilon_spent(2, z, delta) + epsilon_spent(3, z, delta)) / 2  # two rounds fit, three do not
    params = {"dp_mode": "central", "dp_clip_norm": "1", "dp_noise_multiplier": "2", "dp_target_epsilon": f"{budget}"}
    port = MemoryPort()
    job = started(port, params, exit_round=5)
    a_round(job, 1, [0.0, 0.0])
    assert job.stage is Stage.TRAINING and job.round == 2
    a_round(job, 2, model(port, 1))

    assert job.stage is Stage.FINAL
    assert [(g.round, g.final) for g in port.published_globals][-1] == (2, True)
    [spent] = events(port, "PrivacyBudgetSpent")
    assert spent.startswith(f"privacy budget spent: epsilon {epsilon_spent(2, z, delta):.4g} after round 2")
    for node in ("edge1", "edge2", "edge3"):
        report(job, node, WorkerState.COMPLETED, uid=UID)
    status = port.job_status(JOB)
    assert status.phase is Phase.SUCCEEDED and status.exit_round == 5 and status.current_round == 2
    assert status.message.startswith("completed 2 rounds;") and "privacy budget spent" in status.message
    assert status.privacy is not None and status.privacy.budget_spent and status.privacy.rounds == 2
    assert status.privacy.epsilon == pytest.approx(epsilon_spent(2, z, delta), rel=1e-5)
    assert [r.epsilon for r in status.rounds] == [pytest.approx(epsilon_spent(t, z, delta), rel=1e-5) for t in (1, 2)]


def test_a_restarted_aggregator_reports_the_same_epsilon() -> None:
    params = {"dp_mode": "central", "dp_clip_norm": "1", "dp_noise_multiplier": "1.2", "dp_delta": "1e-6"}
    old = MemoryPort()
    job = started(old, params)
    a_round(job, 1, [0.0, 0.0])
    a_round(job, 2, model(old, 1))
    before = old.job_status(JOB).privacy

    port = MemoryPort(disk=old.disk)
    port.statuses = dict(old.statuses)
    job = started(port, params, resume=True)

    assert job.round == 3
    after = port.job_status(JOB).privacy
    assert before is not None and after == before and after.epsilon == pytest.approx(epsilon_spent(2, 1.2, 1e-6))


def test_a_resumed_run_whose_budget_was_spent_is_final() -> None:
    z = 2.0
    budget = (epsilon_spent(1, z, 1e-5) + epsilon_spent(2, z, 1e-5)) / 2
    params = {"dp_mode": "central", "dp_clip_norm": "1", "dp_noise_multiplier": "2", "dp_target_epsilon": f"{budget}"}
    old = MemoryPort()
    a_round(started(old, params), 1, [0.0, 0.0])
    port = MemoryPort(disk=old.disk)
    port.statuses = dict(old.statuses)
    job = started(port, params, resume=True)
    assert job.stage is Stage.FINAL and port.published_globals[-1].final


@pytest.mark.parametrize(
    ("params", "reason", "says"),
    [
        ({**QUIET, "aggregation_algorithm": "FedMedian"}, "InvalidPrivacyParameters", "needs a mean"),
        ({**QUIET, "aggregation_mode": "async"}, "InvalidPrivacyParameters", "synchronous rounds"),
        ({"dp_mode": "central", "dp_noise_multiplier": "1"}, "InvalidPrivacyParameters", "dp_clip_norm"),
        (
            {**QUIET, "dp_noise_multiplier": "0.5", "dp_target_epsilon": "0.1"},
            "InvalidPrivacyParameters",
            "allows no round",
        ),
    ],
)
def test_dp_that_cannot_hold_fails_the_job_up_front(params: dict[str, str], reason: str, says: str) -> None:
    port = MemoryPort()
    job = Job(three_edges(params), port)
    job.start(0.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation=params.get("aggregation_algorithm", "FedAvg")), 0.1)
    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and says in status.message
    assert [c.reason for c in status.conditions][-1] == reason
    assert JOB not in port.plans or port.plans[JOB] is None


def test_the_plan_tells_each_edge_its_noise_only_with_edge_noise() -> None:
    for mode, std in (("local", 1.5), ("distributed", 1.5 / np.sqrt(3))):
        port = MemoryPort()
        started(port, {"dp_mode": mode, "dp_clip_norm": "0.5", "dp_noise_multiplier": "3"})
        plan = port.plans[JOB]
        assert plan is not None
        for worker in plan.workers:
            assert worker.parameters["dp_mode"] == mode and float(worker.parameters["dp_clip_norm"]) == 0.5
            assert float(worker.parameters["dp_noise_std"]) == pytest.approx(std)
    port = MemoryPort()
    started(port, QUIET)
    plan = port.plans[JOB]
    assert plan is not None and all("dp_noise_std" not in w.parameters for w in plan.workers)


def test_edge_noise_modes_do_not_clip_at_the_aggregator() -> None:
    """Local DP: the edges clipped before they noised; the aggregator only averages over every worker."""
    port = MemoryPort()
    job = started(port, {"dp_mode": "local", "dp_clip_norm": "1", "dp_noise_multiplier": "1"})
    deliver(job, "edge1", 1, [3.0, 4.0])
    deliver(job, "edge2", 1, [0.0, 3.0])
    deliver(job, "edge3", 1, [0.0, 0.0])
    assert model(port, 1) == pytest.approx([1.0, 7.0 / 3])
