"""Who may use secure aggregation's topics on the provisioned broker (real Mosquitto, ACL from `flctl broker
init`): an edge writes only its own keys, bundle and answer, reads every round state and every bundle but
never another edge's keys or answers (they hold plaintext shares); the aggregator reads and writes all of
it; the admin, a viewer and the monitor see none of it.

Nothing sleeps: each reader runs a barrier after the publishes (its own sync message comes back after
whatever the broker routed to it before), then looks at what it has.
"""

from __future__ import annotations

import pytest

from broker import PublishError
from schemas import Topics
from tests.helpers.mqtt import take_all
from tests.security.conftest import SecureBroker

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

T = Topics()
JOB = "surface-defect-detection"
NOT_AUTHORIZED = 0x87
ROLES = {"viewers": ["viewer"], "monitors": ["monitor"]}


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
def test_each_identity_sees_only_its_part_of_a_secure_aggregation_round(secure: SecureBroker) -> None:
    readers = {
        who: secure.session(secure.settings(who), subscribe=(T.all_secagg(),))
        for who in ("cloud0", "edge2", "admin", "viewer", "monitor")
    }
    cloud, _ = readers["cloud0"]
    edge1, _ = secure.session(secure.settings("edge1"))
    sent = {
        T.secagg_state(JOB, 1): (cloud, b'{"phase": "keys"}'),
        T.secagg_step(JOB, 1, "keys", "edge1"): (edge1, b'{"keys": 1}'),
        T.secagg_step(JOB, 1, "shares", "edge1"): (edge1, b'{"shares": 1}'),
        T.secagg_step(JOB, 1, "unmask", "edge1"): (edge1, b'{"unmask": 1}'),
    }
    for topic, (session, payload) in sent.items():
        session.publish(topic, payload, qos=1, retain=False).wait(10.0)

    expected = {
        "cloud0": set(sent),
        "edge2": {T.secagg_state(JOB, 1), T.secagg_step(JOB, 1, "shares", "edge1")},
        "admin": set(),
        "viewer": set(),
        "monitor": set(),
    }
    for who, (session, inbox) in readers.items():
        session.barrier(10.0)
        assert {m.topic for m in take_all(inbox)} == expected[who], who


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
@pytest.mark.parametrize(
    ("identity", "topic"),
    [
        ("edge1", T.secagg_step(JOB, 1, "keys", "edge2")),  # another edge's keys: a key substitution
        ("edge1", T.secagg_step(JOB, 1, "shares", "edge2")),
        ("edge1", T.secagg_step(JOB, 1, "unmask", "edge2")),
        ("edge1", T.secagg_state(JOB, 1)),  # only the aggregator fixes the rosters
        ("admin", T.secagg_step(JOB, 1, "keys", "admin")),
        ("viewer", T.secagg_step(JOB, 1, "shares", "viewer")),
        ("monitor", T.secagg_step(JOB, 1, "unmask", "monitor")),
    ],
)
def test_no_one_writes_another_partys_secure_aggregation_message(
    secure: SecureBroker, identity: str, topic: str
) -> None:
    cloud, inbox = secure.session(secure.settings("cloud0"), subscribe=(T.all_secagg(),))
    session, _ = secure.session(secure.settings(identity))

    with pytest.raises(PublishError) as err:
        session.publish(topic, b'{"forged": true}', qos=1, retain=False).wait(10.0)

    assert err.value.reason_code == NOT_AUTHORIZED
    cloud.barrier(10.0)
    assert take_all(inbox) == []
