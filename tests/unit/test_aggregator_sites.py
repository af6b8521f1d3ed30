"""Sites in a job's status, without a broker: the controller learns each edge's site from its presence and each
site's bridge state from its notification ("1"/"0"), and the job shows an unreachable site and its edges
(status `sites`, the SitesReachable condition, the round's message, events) while its rounds keep their rules."""

from __future__ import annotations

import pytest

from cloud_aggregator.engine import Controller, Job
from cloud_aggregator.testing import MemoryPort
from schemas import ConditionType, JobStatus, Kind, NodeState, NodeStatus, Topics, WorkerFrame, WorkerState
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_controller import FIXED, documents, job_payload, publish
from tests.unit.test_job_rounds import JOB, SETTINGS, UID, report, weights

SITES = {"edge1": "site-a", "edge2": "site-b"}


def presence(controller: Controller, node: str, site: str | None, state: NodeState = NodeState.ONLINE) -> None:
    status = NodeStatus(node=node, role="edge", state=state, site=site)
    controller.on_node_status(node, status.to_json(), 0.0)


def started(
    port: MemoryPort, sites: dict[str, str | None], params: dict[str, str] | None = None
) -> tuple[Controller, Job]:
    """A controller that saw edge1 and edge2 at `sites`, running the fixed example job (exit_round 3) in round 1."""
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: UID)
    for node in ("edge1", "edge2"):
        presence(controller, node, sites.get(node))
    controller.ready(0.0)
    extra = [{"key": "exit_round", "value": "3"}, *({"key": k, "value": v} for k, v in (params or {}).items())]
    for kind, name, payload in documents(FIXED):
        body = job_payload({"spec.aggregationWorker.workerSpec.parameters": extra}) if kind is Kind.JOB else payload
        publish(controller, kind, name, body, 1.0)
    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 1.1)
    job = controller.job(JOB)
    assert job is not None
    send(job, "edge1", *transfer("edge1", 0, weights(0.0), kind="init"), 1.5)
    assert job.round == 1
    return controller, job


def reasons(port: MemoryPort) -> list[str]:
    return [e.reason for e in port.job_events(JOB) if e.reason.startswith("Site")]


def test_a_site_down_shows_its_edges_unreachable_and_back_again() -> None:
    port = MemoryPort()
    controller, job = started(port, SITES)
    report(job, "edge1", WorkerState.TRAINING, uid=UID, round=1)
    status = port.job_status(JOB)
    assert [(s.name, s.reachable, s.nodes) for s in status.sites or []] == [
        ("site-a", True, ["edge1"]),
        ("site-b", True, ["edge2"]),
    ]
    assert all(c.type is not ConditionType.SITES_REACHABLE for c in status.conditions)  # never down: no row

    controller.on_site_bridge("site-a", b"0", 2.0)

    status = port.job_status(JOB)
    site_a = next(s for s in status.sites or [] if s.name == "site-a")
    assert not site_a.reachable and site_a.since is not None and site_a.nodes == ["edge1"]
    row = next(c for c in status.conditions if c.type is ConditionType.SITES_REACHABLE)
    assert (row.status, row.reason) == ("False", "SiteUnreachable")
    assert row.message == f"site site-a unreachable since {site_a.since:%H:%M:%S} UTC (edge1)"
    assert "; site site-a unreachable since " in status.message
    worker = status.worker("edge1")
    assert worker is not None and worker.state is WorkerState.TRAINING  # its last state, kept
    [event] = [e for e in port.job_events(JOB) if e.reason == "SiteUnreachable"]
    assert event.type == "Warning" and event.message.startswith("site site-a unreachable since ")
    assert event.message.endswith(
        ": edge1; their entries keep the last state they sent, their messages wait on the site broker"
    )

    controller.on_site_bridge("site-a", b"0", 3.0)  # the same again (a retained copy): nothing new
    assert reasons(port) == ["SiteUnreachable"]

    # The link returns: the bridge says "1", then delivers what the site queued (edge1's update).
    controller.on_site_bridge("site-a", b"1", 10.0)
    send(job, "edge1", *transfer("edge1", 1, weights(1.0)), 10.5)
    send(job, "edge2", *transfer("edge2", 1, weights(3.0)), 10.6)

    status = port.job_status(JOB)
    assert all(s.reachable for s in status.sites or [])
    row = next(c for c in status.conditions if c.type is ConditionType.SITES_REACHABLE)
    assert (row.status, row.reason) == ("True", "SitesReachable")
    assert reasons(port) == ["SiteUnreachable", "SiteReachable"]
    back = next(e for e in port.job_events(JOB) if e.reason == "SiteReachable")
    assert back.type == "Normal" and back.message.startswith("site site-a reachable again after ")
    assert job.round == 2 and status.rounds[-1].participants == ["edge1", "edge2"]


def test_an_unreachable_site_does_not_close_a_round_early() -> None:
    """A deadline, a quorum of 1 and offline_grace 0: a last will would close the round at once, an unreachable
    site does not (its edges' updates may be on their way); the deadline still applies."""
    port = MemoryPort()
    controller, job = started(port, SITES, {"round_deadline": "30", "min_participants": "1", "offline_grace": "0"})
    send(job, "edge2", *transfer("edge2", 1, weights(3.0)), 2.0)
    controller.on_site_bridge("site-a", b"0", 3.0)
    controller.tick(20.0)
    assert job.round == 1 and port.job_status(JOB).waiting_for == ["edge1"]

    controller.tick(32.0)

    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == ["edge1"]


def test_a_job_started_while_its_site_is_down_says_so_at_once() -> None:
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: UID)
    for node, site in SITES.items():
        presence(controller, node, site)
    controller.on_site_bridge("site-b", b"0", 0.0, retained=True)  # as the broker kept it: since unknown
    controller.ready(0.0)
    for kind, name, payload in documents(FIXED):
        publish(controller, kind, name, payload, 1.0)
    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 1.1)

    status = port.job_status(JOB)
    site_b = next(s for s in status.sites or [] if s.name == "site-b")
    assert not site_b.reachable and site_b.since is None
    row = next(c for c in status.conditions if c.type is ConditionType.SITES_REACHABLE)
    assert row.status == "False" and row.message == "site site-b unreachable (edge2)"
    assert reasons(port) == ["SiteUnreachable"]


def test_without_sites_the_status_is_what_it_was() -> None:
    port = MemoryPort()
    controller, _ = started(port, {})
    controller.on_site_bridge("site-a", b"0", 2.0)  # a site none of the job's edges is behind
    status = port.job_status(JOB)
    assert status.sites is None and b'"sites"' not in status.to_json()
    assert all(c.type is not ConditionType.SITES_REACHABLE for c in status.conditions)
    assert reasons(port) == []


def test_an_edge_that_moves_to_another_site_is_shown_there() -> None:
    port = MemoryPort()
    controller, _ = started(port, SITES)
    presence(controller, "edge2", "site-a")
    assert [(s.name, s.nodes) for s in port.job_status(JOB).sites or []] == [("site-a", ["edge1", "edge2"])]
    presence(controller, "edge2", None, NodeState.OFFLINE)  # a last will without a site changes nothing
    assert [(s.name, s.nodes) for s in port.job_status(JOB).sites or []] == [("site-a", ["edge1", "edge2"])]


@pytest.mark.parametrize("payload", [b"up", b"2", b"\xff"])
def test_a_bad_bridge_notification_is_ignored(payload: bytes) -> None:
    port = MemoryPort()
    controller, _ = started(port, SITES)
    before = port.job_status(JOB).model_copy(deep=True)
    controller.on_site_bridge("site-a", payload, 2.0)
    assert port.job_status(JOB).sites == before.sites and reasons(port) == []


def test_the_site_topic_and_the_presence_field() -> None:
    topics = Topics()
    parsed = topics.parse(topics.site_bridge("site-a"))
    assert parsed.channel.value == "site-bridge" and parsed.name == "site-a"
    plain = NodeStatus(node="edge1", role="edge", state=NodeState.ONLINE)
    assert b"site" not in plain.to_json()  # a node without a site publishes what it always did
    sited = NodeStatus.model_validate_json(plain.model_copy(update={"site": "site-a"}).to_json())
    assert sited.site == "site-a"
    status = JobStatus(name=JOB, sites=[{"name": "site-a", "reachable": False, "nodes": ["edge1"]}])  # type: ignore[list-item]
    assert JobStatus.model_validate_json(status.to_json()).sites == status.sites
