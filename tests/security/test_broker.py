"""The provisioned broker, attacked: real Mosquitto with the config `flctl broker init` writes.

Read ACLs are enforced at delivery (a SUBACK grants, nothing arrives), write ACLs with PUBACK 0x87 (our
PublishError); so every refusal below is checked both ways: the error, and nothing delivered.
"""

from __future__ import annotations

import queue
import time

import pytest

from broker import BlobSender, Inbound, PublishError
from schemas import Kind, Topics, TransferOrigin
from tests.helpers.mqtt import take, take_all, wait_until
from tests.security.conftest import SecureBroker, provision_for_test

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

T = Topics()
NOT_AUTHORIZED = 0x87
QUIET = 1.5  # seconds a refused or filtered message gets to show up anyway
CLIENTS = T.client_tree("x").removesuffix("x/#")


def quiet(inbox: queue.Queue[Inbound], seconds: float = QUIET) -> list[str]:
    """Topics that arrived within `seconds` (expected: none), other than the sessions' own sync topics
    (fl/clients/<id>/sync: barriers, and the claim a node session leaves there at every connect)."""
    time.sleep(seconds)
    return [m.topic for m in take_all(inbox) if not m.topic.startswith(CLIENTS)]


def test_anonymous_connection_is_refused(secure: SecureBroker) -> None:
    """No username: refused on the TLS listener and on the plain loopback one."""
    for plain in (False, True):
        settings = secure.settings("edge1", plain=plain, username=None, password=None, client_id="anon")
        session, _ = secure.session(settings, connect=False)
        wait_until(lambda s=session: s.connect_error is not None, 10.0, "refused")  # type: ignore[misc]
        assert not session.connected
        assert session.connect_error is not None and session.connect_error.reason_code == NOT_AUTHORIZED


def test_wrong_password_is_refused(secure: SecureBroker) -> None:
    session, _ = secure.session(secure.settings("edge1", password="not-the-password"), connect=False)
    wait_until(lambda: session.connect_error is not None, 10.0, "refused")
    assert not session.connected
    assert session.connect_error is not None and session.connect_error.reason_code == NOT_AUTHORIZED


def test_edge_cannot_publish_another_edges_update(secure: SecureBroker) -> None:
    """edge1 writing into edge2's update topic: PUBACK not authorized, and the aggregator gets nothing."""
    _, cloud_inbox = secure.session(secure.settings("cloud0"), subscribe=(T.all_updates(),))
    edge1, _ = secure.session(secure.settings("edge1"))
    cloud, _ = secure.sessions[0], None
    cloud.barrier(10.0)

    forged = edge1.publish(T.update_manifest("job", 1, "edge2", "abcd1234"), b"{}")
    with pytest.raises(PublishError) as err:
        forged.wait(10.0)
    assert err.value.reason_code == NOT_AUTHORIZED
    # its own topic works, so the refusal above is the ACL, not a broken session
    edge1.publish(T.update_manifest("job", 1, "edge1", "abcd1234"), b"{}").wait(10.0)
    got = take(cloud_inbox, 1)
    assert [m.topic for m in got] == [T.update_manifest("job", 1, "edge1", "abcd1234")]
    assert quiet(cloud_inbox) == []


def test_edge_subscribed_to_other_updates_receives_nothing(secure: SecureBroker) -> None:
    """edge1 subscribes to every update (and to edge2's explicitly) while edge2 uploads a whole chunked
    model: edge1 receives nothing, the aggregator receives all of it."""
    _, spy_inbox = secure.session(
        secure.settings("edge1"),
        subscribe=(T.all_updates(), "fl/federatedlearningjobs/job/rounds/+/updates/edge2/#", "fl/#"),
    )
    _, cloud_inbox = secure.session(secure.settings("cloud0"), subscribe=(T.all_updates(),))
    secure.sessions[0].barrier(10.0)
    secure.sessions[1].barrier(10.0)
    edge2, _ = secure.session(secure.settings("edge2"))

    blob = bytes(range(256)) * 1200  # ~300 KB, 5 chunks of 64 KiB
    BlobSender(edge2, chunk_size=64 * 1024).send(
        T.update_manifest("job", 1, "edge2", "feedf00d"),
        lambda i: T.update_chunk("job", 1, "edge2", "feedf00d", i),
        blob,
        TransferOrigin("update", "job", "u1", 1, "edge2", 10),
    )
    assert len(take(cloud_inbox, 6)) == 6  # 5 chunks + manifest
    assert quiet(spy_inbox) == []


@pytest.mark.parametrize(
    "topic",
    [
        T.global_manifest("job", 1),
        T.global_chunk("job", 1, 0),
        T.spec(Kind.JOB, "job"),
        T.spec(Kind.DATASET, "ds"),
        T.plan("job"),
        T.status(Kind.JOB, "job"),
        T.worker_status("job", "edge2"),
        T.node_status("edge2"),
        T.node_status("cloud0"),
        T.ack("job", 1, "edge2"),
        T.sync("edge2"),
    ],
)
def test_edge_cannot_write_what_is_not_its_own(secure: SecureBroker, topic: str) -> None:
    """Global models, specs, plans, job status, another node's status or acks: refused, nothing delivered."""
    _, cloud_inbox = secure.session(secure.settings("cloud0"), subscribe=("fl/#",))
    secure.sessions[0].barrier(10.0)
    take_all(cloud_inbox)
    edge1, _ = secure.session(secure.settings("edge1"))

    with pytest.raises(PublishError) as err:
        edge1.publish(topic, b'{"forged": true}', retain=True).wait(10.0)

    assert err.value.reason_code == NOT_AUTHORIZED
    assert quiet(cloud_inbox, 1.0) == []


def test_edge_can_write_its_own_topics(secure: SecureBroker) -> None:
    """The ACL is not simply closed: each of the edge's own topics is accepted and reaches the aggregator."""
    _, cloud_inbox = secure.session(secure.settings("cloud0"), subscribe=("fl/#",))
    secure.sessions[0].barrier(10.0)
    take_all(cloud_inbox)
    edge1, _ = secure.session(secure.settings("edge1"))
    own = [T.worker_status("job", "edge1"), T.node_status("edge1"), T.update_chunk("job", 2, "edge1", "ab12cd34", 0)]
    for topic in own:
        edge1.publish(topic, b"x").wait(10.0)
    secure.sessions[0].barrier(10.0)
    assert sorted(m.topic for m in take_all(cloud_inbox) if not m.topic.startswith(CLIENTS)) == sorted(own)


def test_admin_writes_specs_but_not_plans_or_models(secure: SecureBroker) -> None:
    admin, _ = secure.session(secure.settings("admin"))
    admin.publish(T.spec(Kind.JOB, "job"), b"kind: FederatedLearningJob", retain=True).wait(10.0)
    admin.publish(T.spec(Kind.JOB, "job"), b"", retain=True).wait(10.0)
    for topic in (T.plan("job"), T.global_manifest("job", 1), T.update_manifest("job", 1, "edge1", "ab12cd34")):
        with pytest.raises(PublishError):
            admin.publish(topic, b"x").wait(10.0)


def test_client_id_takeover_leaves_the_real_node_connected(secure: SecureBroker) -> None:
    """edge1's credentials with client id edge2: the broker registers the intruder as edge1; the real edge2
    stays connected and keeps publishing."""
    edge2, _ = secure.session(secure.settings("edge2"))
    log_before = len(secure.local.log_text())

    intruder, _ = secure.session(secure.settings("edge1", client_id="edge2"))

    assert intruder.connected
    time.sleep(QUIET)
    assert edge2.connected
    edge2.publish(T.node_status("edge2"), b"still here").wait(10.0)
    log = secure.local.log_text()[log_before:]
    assert "already connected" not in log
    assert " as edge1 " in log  # the id the broker used is the username


# paho 2.2 drops the socket of a failed TLS handshake without closing it (the garbage collector closes
# it, with a ResourceWarning): not ours, and no descriptor stays open.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_tls_needs_the_generated_ca(secure: SecureBroker) -> None:
    """TLS with the deployment's CA connects; without TLS, or trusting another CA, no connection is made."""
    ok, _ = secure.session(secure.settings("edge1"))
    assert ok.connected

    plain_to_tls, _ = secure.session(
        secure.settings("edge2", tls_ca=None), connect=False
    )  # MQTT in clear text to the TLS port
    other = provision_for_test(secure.prov.out.parent / "other-deployment")
    wrong_ca, _ = secure.session(secure.settings("cloud0", tls_ca=str(other.out / "broker" / "ca.crt")), connect=False)
    assert not plain_to_tls.wait_connected(3.0)
    assert not wrong_ca.wait_connected(0.5)
    assert plain_to_tls.connect_error is None and wrong_ca.connect_error is None  # never got to MQTT


@pytest.mark.parametrize("secure", [{"client_certs": True}], indirect=True)
def test_mutual_tls_requires_the_node_certificate(secure: SecureBroker) -> None:
    """With --client-certs: the node's certificate connects (its CN is the username), none is refused,
    and a node with its certificate still cannot write another's update."""
    edge1, _ = secure.session(secure.settings("edge1"))
    no_cert, _ = secure.session(secure.settings("edge2", tls_cert=None, tls_key=None), connect=False)
    assert not no_cert.wait_connected(3.0)
    with pytest.raises(PublishError):
        edge1.publish(T.update_manifest("job", 1, "edge2", "ab12cd34"), b"{}").wait(10.0)
    edge1.publish(T.update_manifest("job", 1, "edge1", "ab12cd34"), b"{}").wait(10.0)
