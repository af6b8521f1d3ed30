"""Who may use the job event streams on the provisioned broker (real Mosquitto, ACL from `flctl broker init`):
the aggregator writes them; the admin, a viewer and the monitor read them; an edge neither reads nor writes
them, and the read-only identities cannot forge a line.

Nothing sleeps: each reader runs a barrier after the publish (its own sync message comes back after
whatever the broker routed to it before), then looks at what it has.
"""

from __future__ import annotations

import queue

import pytest

from broker import Inbound, PublishError
from schemas import JobEvent, Topics
from tests.helpers.mqtt import take_all
from tests.security.conftest import SecureBroker

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

T = Topics()
JOB = "surface-defect-detection"
NOT_AUTHORIZED = 0x87
ROLES = {"viewers": ["viewer"], "monitors": ["monitor"]}


def events_in(inbox: queue.Queue[Inbound]) -> list[JobEvent]:
    return [JobEvent.model_validate_json(m.payload) for m in take_all(inbox) if m.topic == T.events(JOB)]


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
def test_the_aggregator_writes_events_the_admin_viewer_and_monitor_read_them_an_edge_does_not(
    secure: SecureBroker,
) -> None:
    readers = {
        who: secure.session(secure.settings(who), subscribe=(T.all_events(),))
        for who in ("admin", "viewer", "monitor", "edge1")
    }
    cloud, _ = secure.session(secure.settings("cloud0"))
    line = JobEvent(job=JOB, uid="a" * 32, reason="RoundOpened", message="round 1/3 opened", round=1)

    cloud.publish(T.events(JOB), line.to_json(), qos=1, retain=False).wait(10.0)

    for who, (session, inbox) in readers.items():
        session.barrier(10.0)
        got = events_in(inbox)
        assert got == ([] if who == "edge1" else [line]), who


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
@pytest.mark.parametrize("identity", ["edge1", "admin", "viewer", "monitor"])
def test_no_one_but_the_aggregator_can_publish_an_event(secure: SecureBroker, identity: str) -> None:
    cloud, inbox = secure.session(secure.settings("cloud0"), subscribe=(T.all_events(),))
    session, _ = secure.session(secure.settings(identity))
    forged = JobEvent(job=JOB, reason="Completed", message="FederatedLearningJob completed")

    with pytest.raises(PublishError) as err:
        session.publish(T.events(JOB), forged.to_json(), qos=1, retain=False).wait(10.0)

    assert err.value.reason_code == NOT_AUTHORIZED
    cloud.barrier(10.0)
    assert events_in(inbox) == []
