"""Issue 12: the plan asks one training worker for the initial weights: the first (spec order) whose node is
known online when the plan is made, else the first; any valid init is still accepted (a fallback)."""

from __future__ import annotations

import json

import pytest

from cloud_aggregator.engine import Controller, JobSettings
from cloud_aggregator.testing import MemoryPort
from schemas import DEFAULT_INIT_WAIT, JobPlan, Kind, NodeState, NodeStatus, WorkerFrame
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_controller import FIXED, announce, documents, job_payload, publish
from tests.unit.test_job_rounds import JOB, UID, new_job, weights

SETTINGS = JobSettings(chunk_size=4096)


def will(controller: Controller, node: str, now_s: float = 0.0) -> None:
    """`node`'s last will (its retained status says offline)."""
    status = NodeStatus.model_validate({"node": node, "role": "edge", "state": NodeState.OFFLINE})
    controller.on_node_status(node, status.to_json(), now_s)


def planned(
    *, online: tuple[str, ...], offline: tuple[str, ...] = (), params: dict[str, str] | None = None
) -> MemoryPort:
    """A controller that saw these presences, the example job created and its script's config in: the plan."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: UID)
    for node in online:
        announce(controller, node)
    for node in offline:
        will(controller, node)
    controller.ready(0.0)
    pairs = [{"key": "exit_round", "value": "3"}, *({"key": k, "value": v} for k, v in (params or {}).items())]
    for kind, name, payload in documents(FIXED):
        body = job_payload({"spec.aggregationWorker.workerSpec.parameters": pairs}) if kind is Kind.JOB else payload
        publish(controller, kind, name, body, 1.0)
    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 1.1)
    return port


@pytest.mark.parametrize(
    ("online", "offline", "source"),
    [
        (("edge1", "edge2"), (), "edge1"),  # both online: the first in spec order
        (("edge2",), ("edge1",), "edge2"),  # the first is gone (its last will): the first online one
        ((), ("edge1", "edge2"), "edge1"),  # none online: the first
    ],
)
def test_the_plan_names_the_first_online_training_worker_else_the_first(
    online: tuple[str, ...], offline: tuple[str, ...], source: str
) -> None:
    plan = planned(online=online, offline=offline).plans[JOB]
    assert plan is not None
    assert plan.participants == ["edge1", "edge2"]
    assert (plan.init_source, plan.init_wait) == (source, DEFAULT_INIT_WAIT)


def test_a_presence_while_the_script_starts_counts() -> None:
    """edge1's will arrives after the job started but before the script's config: edge2 is asked."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: UID)
    announce(controller, "edge1")
    announce(controller, "edge2")
    controller.ready(0.0)
    for kind, name, payload in documents(FIXED):
        publish(controller, kind, name, payload, 1.0)
    will(controller, "edge1", 1.05)
    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 1.1)
    plan = port.plans[JOB]
    assert plan is not None and plan.init_source == "edge2"


def test_init_wait_sets_the_wait_and_zero_names_no_source() -> None:
    plan = planned(online=("edge1", "edge2"), params={"init_wait": "2.5"}).plans[JOB]
    assert plan is not None and (plan.init_source, plan.init_wait) == ("edge1", 2.5)
    plan = planned(online=("edge1", "edge2"), params={"init_wait": "0"}).plans[JOB]
    assert plan is not None and plan.init_source is None  # every edge uploads its init, as before


def test_a_plan_without_an_init_source_has_only_the_fields_older_edges_know() -> None:
    """init_wait 0: neither initSource nor initWait on the wire (an edge from before them, which refuses
    unknown fields, reads the plan), and it reads back as the same plan: no edge waits for an init."""
    plan = planned(online=("edge1", "edge2"), params={"init_wait": "0"}).plans[JOB]
    assert plan is not None
    wire = json.loads(plan.to_json())
    assert "initSource" not in wire and "initWait" not in wire
    back = JobPlan.model_validate_json(plan.to_json())
    assert back.init_source is None and not any(back.waits_for_init(n) for n in back.participants)
    assert back.model_dump(exclude={"init_wait"}) == plan.model_dump(exclude={"init_wait"})

    with_source = planned(online=("edge1", "edge2"), params={"init_wait": "2.5"}).plans[JOB]
    assert with_source is not None
    assert json.loads(with_source.to_json())["initWait"] == 2.5
    assert JobPlan.model_validate_json(with_source.to_json()) == with_source


def test_a_bad_init_wait_is_refused_naming_the_parameter() -> None:
    port = planned(online=("edge1", "edge2"), params={"init_wait": "soon"})
    status = port.job_status(JOB)
    assert JOB not in port.plans
    assert "init_wait" in status.message and "expected a number of seconds in [0, 3600]" in status.message


def test_an_init_from_another_worker_is_still_the_round_0_model() -> None:
    """The designated edge1 never sends: edge2's fallback init becomes the round-0 model and round 1 opens."""
    port = MemoryPort()
    job = new_job(port)
    job.start(0.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=3, participants_count=2), 0.1)
    plan = port.plans[JOB]
    assert plan is not None and plan.init_source == "edge1"
    status = port.job_status(JOB)
    assert status.waiting_for == ["edge1"]  # the init source's init, not everyone's
    assert status.message == "round 0: waiting for the initial model from edge1 (the plan's init source)"
    send(job, "edge2", *transfer("edge2", 0, weights(0.0), kind="init"), 25.0)
    assert job.round == 1
    [event] = [e for e in port.job_status(JOB).events if e.reason == "InitialModel"]
    assert "the round-0 model comes from edge2" in event.message
