"""Secure aggregation at the aggregator (docs/dev/secagg.md), engine-level with `MemoryPort`: three edges
played with runtime's party functions (as tests/unit/test_secagg_round.py does) through the job's phases;
the global model equals plain FedAvg of the uploaded updates, with dropouts, deadlines, aborts, refusals,
bad messages, a restart, a server optimiser and distributed differential privacy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_aggregator import get_strategy
from cloud_aggregator.engine import Controller, Job, Stage
from cloud_aggregator.service import StateStore
from cloud_aggregator.testing import MemoryPort, chunks_of, make_transfer
from runtime import FixedPoint, RoundContext, RoundSecrets, mask_update, share_bundle, unmask_answer
from schemas import (
    JobStatus,
    KeyAdvert,
    Kind,
    Phase,
    SecAggState,
    ShareBundle,
    Topics,
    TransferOrigin,
    UnmaskAnswer,
    WorkerFrame,
    b64decode,
    b64encode,
    manifest_for,
    masked_blob,
)
from tests.unit.test_aggregator_async import three_edges
from tests.unit.test_aggregator_intake import send
from tests.unit.test_controller import FIXED, announce, documents, job_payload, publish
from tests.unit.test_job_rounds import JOB, SETTINGS, UID

Arrays = list[npt.NDArray[Any]]
NODES = ["edge1", "edge2", "edge3"]
SAMPLES = {"edge1": 10, "edge2": 30, "edge3": 20}
TOPICS = Topics()
INIT: Arrays = [np.array([[0.5, -0.25, 0.0], [1.0, 0.125, -1.0]], np.float32), np.array([0.0, 2.0], np.float32)]
RNG = np.random.default_rng(11)
UPDATES: dict[str, Arrays] = {n: [a + RNG.normal(0, 0.1, a.shape).astype(np.float32) for a in INIT] for n in NODES}


def fedavg(nodes: list[str], *, weighted: bool = True) -> Arrays:
    weights = [SAMPLES[n] if weighted else 1 for n in nodes]
    return [np.average([UPDATES[n][i] for n in nodes], axis=0, weights=weights) for i in range(len(INIT))]


@dataclass
class Fleet:
    """The edges' side of the protocol, in-process, against one job engine."""

    job: Job
    port: MemoryPort
    now: float = 1.0
    secrets: dict[str, RoundSecrets] = field(default_factory=dict)
    bundles: dict[str, dict[str, str]] = field(default_factory=dict)

    def state(self, round_: int = 1) -> SecAggState:
        state = self.port.secagg_states[(JOB, round_)]
        assert state is not None
        return state

    def say(self, step: str, node: str, payload: bytes, round_: int = 1) -> None:
        topic = TOPICS.secagg_step(JOB, round_, step, node)
        self.job.on_secagg(step, node, round_, topic, payload, now_s=self.now)

    def advertise(self, *nodes: str) -> None:
        for node in nodes:
            self.secrets[node] = secrets = RoundSecrets.fresh()
            advert = secrets.key_advert(job=JOB, uid=UID, round_=1, node=node, num_samples=SAMPLES[node])
            self.say("keys", node, advert.to_json())

    def share(self, *nodes: str) -> None:
        state = self.state()
        assert state.phase == "shares"
        roster = {m.node: (m.x, b64decode(m.c_public, "c")) for m in state.u1}
        for node in nodes:
            sealed, self.secrets[node] = share_bundle(
                self.secrets[node], context(), own=node, roster=roster, threshold=state.threshold
            )
            self.bundles[node] = {k: b64encode(v) for k, v in sealed.items()}
            bundle = ShareBundle(job=JOB, uid=UID, round=1, node=node, sealed=self.bundles[node])
            self.say("shares", node, bundle.to_json())

    def upload(self, *nodes: str, tag: str = "0aa0aa") -> None:
        state = self.state()
        previous = self.port.published_globals[-1].arrays
        for node in nodes:
            delta = np.concatenate(
                [(np.asarray(u, np.float64) - p).ravel() for u, p in zip(UPDATES[node], previous, strict=True)]
            )
            masked = mask_update(
                self.secrets[node],
                context(),
                own=node,
                delta=delta,
                weight=SAMPLES[node] if state.weighted else 1,
                max_weight=state.max_weight,
                fixed=FixedPoint(state.clip, len(state.u1)),
                peers={m.node: b64decode(m.s_public, "s") for m in state.u1 if m.node in state.u2},
            )
            blob = masked_blob(masked, job=JOB, round_=1, sender=node, num_samples=SAMPLES[node])
            origin = TransferOrigin("update", JOB, UID, 1, node, SAMPLES[node])
            manifest = manifest_for(blob, origin, chunk_size=256, transfer=f"{node[-1]}{tag}0")
            send(self.job, node, manifest, chunks_of(manifest, blob), self.now)

    def answer(self, *nodes: str) -> None:
        state = self.state()
        assert state.phase == "unmask"
        for node in nodes:
            b, s = unmask_answer(
                self.secrets[node],
                context(),
                own=node,
                c_publics={m.node: b64decode(m.c_public, "c") for m in state.u1},
                sealed_for_me={v: b64decode(self.bundles[v][node], "sealed") for v in state.u2 if v != node},
                u2=state.u2,
                u3=state.u3,
            )
            wire = UnmaskAnswer(
                job=JOB,
                uid=UID,
                round=1,
                node=node,
                u3=state.u3,
                b_shares={k: b64encode(v) for k, v in b.items()},
                s_shares={k: b64encode(v) for k, v in s.items()},
            )
            self.say("unmask", node, wire.to_json())


def context() -> RoundContext:
    return RoundContext(f"{JOB}/{UID}", 1)


def start(
    port: MemoryPort,
    parameters: dict[str, str] | None = None,
    *,
    training: dict[str, str] | None = None,
    secure: bool = True,
    resume: bool = False,
    exit_round: int = 1,
) -> Job:
    params = {"secure_aggregation": "true"} if secure else {}
    params.update(parameters or {})
    previous = port.statuses.get((Kind.JOB, JOB)) if resume else None
    job = Job(three_edges(params, training, resume=resume), port, previous_status=previous)  # type: ignore[arg-type]
    job.start(0.0)
    name = params.get("aggregation_algorithm", "FedAvg")
    job.on_script_frame(WorkerFrame(type="config", aggregation=name, exit_round=exit_round), 0.1)
    if not resume and not job.finished:
        manifest, blob = make_transfer(INIT, kind="init", job=JOB, uid=UID, round_=0, sender="edge1", num_samples=10)
        send(job, "edge1", manifest, chunks_of(manifest, blob), 0.2)
    return job


def global_of(port: MemoryPort, round_: int = 1) -> Arrays:
    [model] = [g for g in port.published_globals if g.round == round_]
    return model.arrays


def phases(port: MemoryPort, round_: int = 1) -> list[str | None]:
    return [s.phase if s is not None else None for job, r, s in port.secagg_history if (job, r) == (JOB, round_)]


def reasons(port: MemoryPort, reason: str) -> list[str]:
    return [e.message for e in port.job_status(JOB).events if e.reason == reason]


def assert_model(port: MemoryPort, expected: Arrays, atol: float = 1e-6) -> None:
    for got, want in zip(global_of(port), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=atol)


def full_round(fleet: Fleet, *, answering: tuple[str, ...] = tuple(NODES)) -> None:
    fleet.advertise(*NODES)
    fleet.share(*NODES)
    fleet.upload(*NODES)
    fleet.answer(*answering)


# -- (a), (b) the round -----------------------------------------------------------------------------------


def test_three_edges_unmask_to_weighted_fedavg_and_the_states_walk_the_phases() -> None:
    port = MemoryPort()
    job = start(port)
    plan = port.plans[JOB]
    assert plan is not None and all(w.parameters["secure_aggregation"] == "true" for w in plan.workers)
    assert any("secure aggregation (2 of 3)" in m for m in reasons(port, "Started"))
    fleet = Fleet(job, port)

    full_round(fleet)

    assert_model(port, fedavg(NODES))
    assert phases(port) == ["keys", "shares", "masked", "unmask", "closed", None]
    assert job.stage is Stage.FINAL
    cleared = {(step, node) for j, r, step, node in port.secagg_cleared if (j, r) == (JOB, 1)}
    assert cleared == {(step, node) for step in ("keys", "shares", "unmask") for node in NODES}
    record = port.round_records[(JOB, 1)]
    assert record is not None and record.participants == NODES and record.total_samples == 60
    assert port.disk.secagg.get(JOB, {}) == {}  # the record went with the round's spool


def test_the_round_closes_with_t_answers_when_an_edge_drops_after_its_upload() -> None:
    port = MemoryPort()
    job = start(port)

    full_round(Fleet(job, port), answering=("edge1", "edge2"))

    assert_model(port, fedavg(NODES))  # edge3's update is in: its self mask was rebuilt from two answers


# -- (c), (d) deadlines -------------------------------------------------------------------------------------


def test_after_the_deadline_the_round_closes_without_an_edge_that_never_uploaded() -> None:
    port = MemoryPort()
    job = start(port, {"round_deadline": "10", "min_participants": "2"})
    fleet = Fleet(job, port)
    fleet.advertise(*NODES)
    fleet.share(*NODES)
    fleet.upload("edge1", "edge3")
    job.tick(5.0)
    assert fleet.state().phase == "masked"

    job.tick(11.5)  # the masked phase started at 1.0

    state = fleet.state()
    assert state.phase == "unmask" and state.u2 == NODES and state.u3 == ["edge1", "edge3"]
    fleet.answer("edge1", "edge3")
    assert_model(port, fedavg(["edge1", "edge3"]))  # edge2's pair masks were re-added from its s-shares
    assert port.round_records[(JOB, 1)].missing == ["edge2"]  # type: ignore[union-attr]


def test_below_the_threshold_after_the_deadline_the_round_aborts_and_the_job_fails() -> None:
    port = MemoryPort()
    job = start(port, {"round_deadline": "10"})
    fleet = Fleet(job, port)
    fleet.advertise("edge1")

    job.tick(10.5)

    state = fleet.state()
    assert state.phase == "aborted" and state.reason is not None
    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and job.finished
    assert status.message == (
        "round 1: secure aggregation aborted in phase keys: 1 of 3 parties, the threshold is 2; missing edge2, edge3"
    )
    assert reasons(port, "SecAggAborted") == [status.message]
    assert port.plans[JOB] is None


def test_between_threshold_and_quorum_the_phase_waits_for_the_quorum() -> None:
    port = MemoryPort()
    job = start(port, {"round_deadline": "10"})  # quorum: all three
    fleet = Fleet(job, port)
    fleet.advertise("edge1", "edge2")
    job.tick(10.5)
    assert fleet.state().phase == "keys"
    assert reasons(port, "BelowQuorum")[-1].endswith("passed with 2/3, quorum 3; waiting for edge3")
    fleet.advertise("edge3")
    assert fleet.state().phase == "shares"


def test_the_next_round_opens_in_phase_keys_and_leftovers_of_a_closed_round_are_cleared() -> None:
    port = MemoryPort()
    job = start(port, exit_round=2)
    fleet = Fleet(job, port)
    full_round(fleet)
    assert job.round == 2 and fleet.state(2).phase == "keys" and fleet.state(2).u1 == []
    cleared = len(port.secagg_cleared)

    fleet.advertise("edge1")  # round 1's advert, retained by a broker the clearing did not reach
    left = SecAggState(job=JOB, uid=UID, round=1, phase="unmask", threshold=2, clip=8.0)
    job.on_secagg("state", "", 1, TOPICS.secagg_state(JOB, 1), left.to_json(), now_s=2.0)  # so was its state
    job.on_secagg("state", "", 2, TOPICS.secagg_state(JOB, 2), fleet.state(2).to_json(), now_s=2.0)  # own echo
    assert port.secagg_history[-1] == (JOB, 1, None)
    job.republish_secagg()  # after a reconnect: the same state again

    assert port.secagg_cleared[cleared:] == [(JOB, 1, "keys", "edge1")]
    assert reasons(port, "SecAggMessageIgnored") == []
    assert port.secagg_history[-1] == (JOB, 2, fleet.state(2)) and fleet.state(2).phase == "keys"


def test_the_state_store_keeps_the_record_beside_the_spool_and_drops_it_with_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.store_update(JOB, 3, "edge1", "0123abcd", b"blob")
    store.save_secagg(JOB, 3, b'{"state": 1}')
    assert store.load_secagg(JOB, 3) == b'{"state": 1}' and store.load_secagg(JOB, 4) is None
    assert [u.node for u in store.spooled_updates(JOB, 3)] == ["edge1"]  # the record is not an update
    store.drop_spool(JOB, 3)
    assert store.load_secagg(JOB, 3) is None


# -- (e) refusals at config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "training", "said"),
    [
        ({"aggregation_algorithm": "FedMedian"}, None, "the robust rule FedMedian"),
        ({"aggregation_mode": "async"}, None, "aggregation_mode=async"),
        ({"dp_mode": "central", "dp_clip_norm": "1", "dp_noise_multiplier": "1"}, None, "dp_mode=central"),
        ({"clip_norm": "2"}, None, "clip_norm=2 at the aggregator"),
        ({}, {"compression": "float16"}, "compression on trainingWorkers edge1, edge2, edge3"),
        ({"secagg_threshold": "4"}, None, "secagg_threshold=4: expected 2..3"),
    ],
)
def test_a_config_that_cannot_aggregate_securely_fails_the_job(
    parameters: dict[str, str], training: dict[str, str] | None, said: str
) -> None:
    port = MemoryPort()
    job = start(port, parameters, training=training)
    status = port.job_status(JOB)
    assert job.finished and status.phase is Phase.FAILED
    assert said in status.message
    assert [c.reason for c in status.conditions if c.type.value == "Failed"] == ["InvalidSecAggParameters"]


# -- (f) what does not belong -------------------------------------------------------------------------------


def test_messages_that_do_not_belong_are_ignored_and_the_round_is_unaffected() -> None:
    port = MemoryPort()
    job = start(port, {"round_deadline": "10", "min_participants": "2"})
    fleet = Fleet(job, port)
    fleet.say("keys", "edge1", b"{not json")
    fleet.advertise(*NODES)
    advert = KeyAdvert.model_validate_json(_advert_of(fleet, "edge1"))
    fleet.say("keys", "edge2", advert.to_json())  # edge1's advert on edge2's topic
    fleet.say("keys", "edge1", advert.model_copy(update={"uid": "another"}).to_json())
    wrong = ShareBundle(job=JOB, uid=UID, round=1, node="edge1", sealed={"edge2": b64encode(b"x")})
    fleet.say("shares", "edge1", wrong.to_json())  # not addressed to edge3
    fleet.share("edge1", "edge2")
    job.tick(11.5)  # edge3 never shared: U2 = edge1, edge2
    assert fleet.state().u2 == ["edge1", "edge2"]

    fleet.upload("edge3")  # outside U2
    assert not port.acks_for("edge3")[-1].accepted and "not in U2" in port.acks_for("edge3")[-1].reason
    fleet.upload("edge1", "edge2")
    state = fleet.state()
    stranger = UnmaskAnswer(job=JOB, uid=UID, round=1, node="edge1", u3=["edge1"])
    fleet.say("unmask", "edge1", stranger.to_json())  # for another U3
    assert state.phase == "unmask"
    fleet.answer("edge1", "edge2")

    assert_model(port, fedavg(["edge1", "edge2"]))
    ignored = reasons(port, "SecAggMessageIgnored")
    topic = TOPICS.secagg_step(JOB, 1, "keys", "edge1")
    assert ignored[0].startswith(f"keys message from edge1 on {topic} ignored: not a KeyAdvert")
    assert "names node edge1 and round 1, not the topic's" in ignored[1]
    assert f"belongs to run another of job {JOB}" in ignored[2]
    assert "not to U1 minus its sender (['edge2', 'edge3'])" in ignored[3]
    assert "answers for U3 ['edge1'], the round's U3 is ['edge1', 'edge2']" in ignored[4]
    assert len(ignored) == 5


def _advert_of(fleet: Fleet, node: str) -> bytes:
    member = fleet.state().member(node)
    assert member is not None
    return KeyAdvert(
        job=JOB,
        uid=UID,
        round=1,
        node=node,
        c_public=member.c_public,
        s_public=member.s_public,
        num_samples=member.num_samples,
    ).to_json()


def test_a_masked_update_before_its_phase_is_refused_and_messages_again_change_nothing() -> None:
    port = MemoryPort()
    job = start(port)
    fleet = Fleet(job, port)
    fleet.advertise(*NODES)
    fleet.say("keys", "edge1", _advert_of(fleet, "edge1"))  # retained, again
    fleet.upload("edge1", tag="0bb0bb")
    refused = port.acks_for("edge1")[-1]
    assert not refused.accepted and "is in phase shares, not masked" in refused.reason
    fleet.share(*NODES)
    again = ShareBundle(job=JOB, uid=UID, round=1, node="edge1", sealed=fleet.bundles["edge1"])
    fleet.say("shares", "edge1", again.to_json())
    fleet.upload("edge1")
    fleet.upload("edge1")  # the same transfer again: a duplicate, answered as stored
    assert [a.accepted for a in port.acks_for("edge1")][-2:] == [True, True]
    assert job.counted == ["edge1"] and fleet.state().phase == "masked"
    assert reasons(port, "SecAggMessageIgnored") == []


def test_a_plain_update_in_a_secure_job_is_refused() -> None:
    port = MemoryPort()
    job = start(port)
    fleet = Fleet(job, port)
    fleet.advertise(*NODES)
    fleet.share(*NODES)
    manifest, blob = make_transfer(
        UPDATES["edge1"], kind="update", job=JOB, uid=UID, round_=1, sender="edge1", num_samples=10
    )
    send(job, "edge1", manifest, chunks_of(manifest, blob), 2.0)
    ack = port.acks_for("edge1")[-1]
    assert not ack.accepted and "expected a masked update" in ack.reason
    assert job.counted == []


# -- (g) a restart ----------------------------------------------------------------------------------------


def test_a_restart_after_the_masked_uploads_gives_the_same_model() -> None:
    port = MemoryPort()
    job = start(port)
    fleet = Fleet(job, port)
    fleet.advertise(*NODES)
    fleet.share(*NODES)
    fleet.upload(*NODES)
    assert fleet.state().phase == "unmask"
    fleet.answer("edge1")  # saved in the record

    restarted = MemoryPort(disk=port.disk, statuses=dict(port.statuses), secagg_states=dict(port.secagg_states))
    again = Job(three_edges({"secure_aggregation": "true"}, resume=True), restarted, port.job_status(JOB))
    again.start(0.0)
    fleet.job, fleet.port = again, restarted
    fleet.answer("edge1")  # retained, arriving at the restart's subscription: kept until the run is restored
    again.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=1), 0.1)
    assert again.stage is Stage.TRAINING and sorted(again.counted) == NODES  # the spool refolded
    assert restarted.secagg_history[0][2] is not None and restarted.secagg_history[0][2].phase == "unmask"

    fleet.answer("edge3")

    assert_model(restarted, fedavg(NODES))


def test_a_restart_in_phase_keys_keeps_the_adverts_it_had() -> None:
    port = MemoryPort()
    job = start(port)
    fleet = Fleet(job, port)
    fleet.advertise("edge1", "edge2")

    restarted = MemoryPort(disk=port.disk, statuses=dict(port.statuses))
    again = start(restarted, resume=True)
    fleet.job, fleet.port = again, restarted
    assert fleet.state().phase == "keys"  # republished
    fleet.advertise("edge3")  # edge1's and edge2's adverts came from the record, not from the broker

    assert [m.node for m in fleet.state().u1] == NODES and fleet.state().phase == "shares"
    fleet.share(*NODES)
    fleet.upload(*NODES)
    fleet.answer("edge2", "edge3")
    assert_model(restarted, fedavg(NODES))


# -- (h), (i) strategies and differential privacy --------------------------------------------------------------


def test_a_server_optimiser_steps_from_the_unmasked_mean() -> None:
    port = MemoryPort()
    params = {"aggregation_algorithm": "FedAvgM", "server_learning_rate": "0.5", "server_momentum": "0.9"}
    job = start(port, params)
    full_round(Fleet(job, port))

    strategy = get_strategy("FedAvgM", params)
    layout = tuple((f"t{i}", "float32", a.shape) for i, a in enumerate(INIT))
    acc = strategy.begin(layout)
    for node in NODES:
        acc = strategy.fold(acc, UPDATES[node], SAMPLES[node])
    expected, _ = strategy.step(acc, INIT, strategy.begin_server(layout))
    assert_model(port, expected)
    assert not np.allclose(global_of(port)[1], fedavg(NODES)[1], atol=1e-3)  # it is a step, not the mean


DP = {"dp_mode": "distributed", "dp_clip_norm": "1", "dp_noise_multiplier": "0.0001"}


def test_distributed_dp_takes_the_plain_mean_as_the_path_without_secure_aggregation() -> None:
    secure = MemoryPort()
    job = start(secure, DP)
    fleet = Fleet(job, secure)
    fleet.advertise(*NODES)
    assert fleet.state().weighted is False
    fleet.share(*NODES)
    assert fleet.state().max_weight == 1
    fleet.upload(*NODES)
    fleet.answer(*NODES)

    plain = MemoryPort()
    other = start(plain, DP, secure=False)
    for node in NODES:
        manifest, blob = make_transfer(
            UPDATES[node], kind="update", job=JOB, uid=UID, round_=1, sender=node, num_samples=SAMPLES[node]
        )
        send(other, node, manifest, chunks_of(manifest, blob), 1.0)

    # Every edge in: no noise from the aggregator, so both are exactly the unweighted mean.
    assert_model(secure, fedavg(NODES, weighted=False))
    assert_model(plain, fedavg(NODES, weighted=False))
    assert port_privacy(secure) == port_privacy(plain)


def test_distributed_dp_with_a_missing_edge_divides_by_every_worker() -> None:
    port = MemoryPort()
    job = start(port, {**DP, "round_deadline": "10", "min_participants": "2"})
    fleet = Fleet(job, port)
    fleet.advertise(*NODES)
    fleet.share(*NODES)
    fleet.upload("edge1", "edge3")
    job.tick(11.5)
    fleet.answer("edge1", "edge3")

    # DP-FedAvg's fixed denominator n = 3: previous + (delta1 + delta3) / 3, plus edge2's missing noise share
    # (std z*C*sqrt(1/3) on the sum, over 3: about 2e-5 a value).
    expected = [p + (UPDATES["edge1"][i] - p + UPDATES["edge3"][i] - p) / 3 for i, p in enumerate(INIT)]
    assert_model(port, expected, atol=2e-4)


def port_privacy(port: MemoryPort) -> Any:
    status: JobStatus = port.job_status(JOB)
    assert status.privacy is not None
    return (status.privacy.mode, status.privacy.rounds, status.privacy.epsilon)


# -- the controller's routing ----------------------------------------------------------------------------------


def test_the_controller_routes_the_edges_steps_to_the_job_and_ignores_its_own_state() -> None:
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: UID)
    announce(controller, "edge1")
    announce(controller, "edge2")
    controller.ready(0.0)
    params = [{"key": "exit_round", "value": "1"}, {"key": "secure_aggregation", "value": "true"}]
    for kind, name, payload in documents(FIXED):
        body = job_payload({"spec.aggregationWorker.workerSpec.parameters": params}) if kind is Kind.JOB else payload
        publish(controller, kind, name, body, 1.0)
    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=1), 1.1)
    job = controller.job(JOB)
    assert job is not None
    manifest, blob = make_transfer(INIT, kind="init", job=JOB, uid=UID, round_=0, sender="edge1", num_samples=10)
    send(job, "edge1", manifest, chunks_of(manifest, blob), 1.2)
    state = port.secagg_states[(JOB, 1)]
    assert state is not None and state.phase == "keys" and state.threshold == 2

    echo = TOPICS.secagg_state(JOB, 1)
    controller.on_secagg(TOPICS.parse(echo), echo, state.to_json(), 1.3)
    for node in ("edge1", "edge2"):
        advert = RoundSecrets.fresh().key_advert(job=JOB, uid=UID, round_=1, node=node, num_samples=5)
        topic = TOPICS.secagg_step(JOB, 1, "keys", node)
        controller.on_secagg(TOPICS.parse(topic), topic, advert.to_json(), 1.4)

    state = port.secagg_states[(JOB, 1)]
    assert state is not None and state.phase == "shares" and [m.node for m in state.u1] == ["edge1", "edge2"]
    assert state.max_weight == 5 and reasons(port, "SecAggMessageIgnored") == []


def test_a_broker_that_lost_its_retained_messages_gets_the_state_and_every_bundle_again() -> None:
    """The edges read each other's bundles from the broker: after a reconnect (the broker may have lost its
    retained messages) the aggregator publishes the open round's state and each bundle of U2 again, from its
    record, also after its own restart; the round then completes as before."""
    port = MemoryPort()
    job = start(port)
    fleet = Fleet(job, port)
    fleet.advertise(*NODES)
    fleet.share(*NODES)
    sent = {node: ShareBundle(job=JOB, uid=UID, round=1, node=node, sealed=fleet.bundles[node]) for node in NODES}

    job.republish_secagg()
    assert port.secagg_history[-1][2] == fleet.state() and fleet.state().phase == "masked"
    assert {bundle.node: bundle for _, bundle in port.secagg_restored} == sent

    restarted = MemoryPort(disk=port.disk, statuses=dict(port.statuses), secagg_states=dict(port.secagg_states))
    again = Job(three_edges({"secure_aggregation": "true"}, resume=True), restarted, port.job_status(JOB))
    again.start(0.0)
    again.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=1), 0.1)
    again.republish_secagg()
    assert {bundle.node: bundle for _, bundle in restarted.secagg_restored} == sent

    fleet.job, fleet.port = again, restarted
    fleet.upload(*NODES)
    fleet.answer("edge1", "edge2")
    assert_model(restarted, fedavg(NODES))
