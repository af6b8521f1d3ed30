"""`flctl node add/rotate/remove` against a running Mosquitto started from the deployment's generated config:
the new node connects; after a rotation its old password is refused and the new one accepted; a removed
node's live session is disconnected and its reconnects refused; and the other identities never notice (their
sessions stay on their first connection and keep publishing and receiving), nor does any byte of their files
or password lines change."""

from __future__ import annotations

import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from broker import Inbound, MqttSettings, Session, load_node_config
from broker.mosquitto import LocalBroker
from flctl.provision import Provisioned, provision
from schemas import Topics
from tests.helpers.mqtt import TEST_RECONNECT_MAX, TEST_RECONNECT_MIN, free_port, wait_until

pytestmark = [pytest.mark.security, pytest.mark.timeout(180)]
REFUSED = (0x86, 0x87)  # bad user name or password; not authorized
TOPICS = Topics()


class Rig:
    """A provisioned deployment, its broker, and sessions that log in with any identity's config file."""

    def __init__(self, out: Path, **kwargs: Any) -> None:
        self.prov: Provisioned = provision(
            out, ["cloud0", "edge1", "edge2"], port=free_port(), plain_port=free_port(), bind="127.0.0.1", **kwargs
        )
        self.local = LocalBroker(self.prov.broker_config, self.prov.out / "broker").start(timeout=10.0)
        self.sessions: list[Session] = []

    @property
    def out(self) -> Path:
        return self.prov.out

    def settings(self, config: Path, **overrides: Any) -> MqttSettings:
        values = load_node_config(config).mqtt_values()
        values.update(
            host="127.0.0.1",
            port=self.prov.tls_port,
            reconnect_min=TEST_RECONNECT_MIN,
            reconnect_max=TEST_RECONNECT_MAX,
            keepalive=5,
        )
        values.setdefault("client_id", values["username"])
        values.update(overrides)
        return MqttSettings(**values)

    def session(
        self, settings: MqttSettings, *, subscribe: tuple[str, ...] = ()
    ) -> tuple[Session, queue.Queue[Inbound]]:
        inbox: queue.Queue[Inbound] = queue.Queue()
        session = Session(settings, inbox=inbox)
        self.sessions.append(session)
        for flt in subscribe:
            session.subscribe(flt)
        session.start()
        return session, inbox

    def flctl(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        """`flctl node ...` as its own process, as an operator runs it on the broker host."""
        done = subprocess.run(
            [sys.executable, "-m", "flctl", "node", *args, "-d", str(self.out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == expect, f"flctl node {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def close(self) -> None:
        for session in reversed(self.sessions):
            session.stop(timeout=2.0)
        self.local.stop(hard=True)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "deployment")
    try:
        yield r
    finally:
        r.close()


def _files(out: Path, skip: set[str]) -> dict[str, bytes]:
    """Every file's bytes under `out` except the broker's runtime files and those under `skip` prefixes."""
    runtime = ("broker/data/", "broker/mosquitto.log", ".flctl-node.lock")
    found: dict[str, bytes] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith(runtime) and not any(rel.startswith(s) for s in skip):
            found[rel] = path.read_bytes()
    return found


def _passwd_lines(out: Path, without: str) -> list[str]:
    return [line for line in (out / "broker" / "passwd").read_text().splitlines() if not line.startswith(f"{without}:")]


class Bystander:
    """A live session of an identity that must not notice: first connection throughout, round trip works."""

    def __init__(self, rig: Rig, name: str) -> None:
        self.name = name
        self.topic = TOPICS.node_status(name)  # every identity of a node role may write and read its own
        self.session, self.inbox = rig.session(rig.settings(rig.prov.configs[name]), subscribe=(self.topic,))
        assert self.session.wait_connected(10.0), self.session.connect_error

    def check(self, step: str) -> None:
        assert self.session.connected and self.session.connection == 1, f"{self.name} noticed {step}"
        payload = f'{{"step": "{step}"}}'.encode()
        self.session.publish(self.topic, payload, qos=1).wait(10.0)
        while True:
            got = self.inbox.get(timeout=10.0)
            if got.payload == payload:
                break
        assert self.session.connection == 1, f"{self.name} reconnected during {step}"


def _retained_status(rig: Rig, node: str) -> list[bytes]:
    """What the broker keeps retained on `node`'s presence topic, read by the admin (a read barrier
    guarantees every retained message of the subscription has arrived)."""
    topic = TOPICS.node_status(node)
    reader = rig.settings(rig.prov.configs["admin"], clean_start=True, session_expiry=0)  # as flctl reads
    admin, inbox = rig.session(reader, subscribe=(topic,))
    assert admin.wait_connected(10.0), admin.connect_error
    admin.barrier(10.0)
    admin.stop(timeout=2.0)
    found = []
    while not inbox.empty():
        got = inbox.get_nowait()
        if got.topic == topic:
            found.append(bytes(got.payload))
    return found


def _refused(session: Session) -> bool:
    error = session.connect_error
    return error is not None and error.reason_code in REFUSED


def test_add_rotate_remove_against_a_running_broker(rig: Rig) -> None:
    assert (rig.out / "broker" / "data" / "mosquitto.pid").read_text().strip() == str(rig.local.pid)
    others = [Bystander(rig, "edge1"), Bystander(rig, "cloud0")]
    before = _files(rig.out, skip={"broker/passwd", "broker/acl", "nodes/edge3/"})
    passwd_before = _passwd_lines(rig.out, "edge3")
    acl_before = (rig.out / "broker" / "acl").read_bytes()

    # add: the new edge connects with the config flctl wrote; an edge needs no ACL line (the patterns)
    rig.flctl("add", "edge3", "--role", "edge", "--warm-worker")
    config = rig.out / "nodes" / "edge3" / "node.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert load_node_config(config).warm_worker is True
    old_settings = rig.settings(config)
    edge3, _ = rig.session(old_settings)
    assert edge3.wait_connected(10.0), edge3.connect_error
    assert (rig.out / "broker" / "acl").read_bytes() == acl_before
    for bystander in others:
        bystander.check("add")

    # rotate: the live session goes at the reload, the old password is refused, the new one accepted
    rig.flctl("rotate", "edge3")
    wait_until(lambda: not edge3.connected, 10.0, "edge3's session with the old password is disconnected")
    wait_until(lambda: _refused(edge3), 10.0, "edge3's reconnect with the old password is refused")
    edge3.stop(timeout=2.0)
    rotated, _ = rig.session(rig.settings(config))
    assert rotated.wait_connected(10.0), rotated.connect_error
    for bystander in others:
        bystander.check("rotate")

    # remove: the live session goes, its reconnects are refused, its folder, passwd line and the presence
    # it left retained are gone
    rotated.publish(TOPICS.node_status("edge3"), b'{"node": "edge3"}', qos=1, retain=True).wait(10.0)
    assert _retained_status(rig, "edge3") == [b'{"node": "edge3"}']
    out = rig.flctl("remove", "edge3").stdout
    assert "cleared: edge3's retained presence" in out
    wait_until(lambda: not rotated.connected, 10.0, "the removed edge3's session is disconnected")
    wait_until(lambda: _refused(rotated), 10.0, "the removed edge3's reconnect is refused")
    assert not (rig.out / "nodes" / "edge3").exists()
    assert "edge3:" not in (rig.out / "broker" / "passwd").read_text()
    assert _retained_status(rig, "edge3") == []
    for bystander in others:
        bystander.check("remove")

    assert _files(rig.out, skip={"broker/passwd", "broker/acl"}) == before
    assert _passwd_lines(rig.out, "edge3") == passwd_before
    assert (rig.out / "broker" / "acl").read_bytes() == acl_before


@pytest.fixture
def cert_rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "deployment", client_certs=True)
    try:
        yield r
    finally:
        r.close()


def _verify_failures(rig: Rig) -> int:
    return rig.local.log_text().count("certificate verify failed")


def _serial(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def test_with_client_certificates_a_rotated_or_removed_certificate_is_revoked_and_its_session_cut(
    cert_rig: Rig,
) -> None:
    rig = cert_rig
    others = [Bystander(rig, "edge1"), Bystander(rig, "cloud0")]
    before = _files(rig.out, skip={"broker/passwd", "broker/acl", "broker/crl.pem", "nodes/edge3/"})

    rig.flctl("add", "edge3", "--role", "edge")
    config = rig.out / "nodes" / "edge3" / "node.yaml"
    cert = rig.out / "nodes" / "edge3" / "edge3.crt"
    first_serial = _serial(cert)
    edge3, _ = rig.session(rig.settings(config), subscribe=(TOPICS.acks_for("edge3"),))
    assert edge3.wait_connected(10.0), edge3.connect_error
    edge3.barrier(10.0)  # the subscription is in place
    for bystander in others:
        bystander.check("add")

    # rotate: the live session (a certificate login, which a reload does not re-check) is taken over and
    # closed; its reconnects with the revoked certificate fail the TLS handshake; the new one connects
    failures = _verify_failures(rig)
    out = rig.flctl("rotate", "edge3").stdout
    assert "closed edge3's live connection" in out
    wait_until(lambda: not edge3.connected, 10.0, "edge3's session with the old certificate is closed")
    wait_until(lambda: _verify_failures(rig) >= failures + 2, 10.0, "the revoked certificate is refused")
    assert not edge3.connected and edge3.connection == 1
    # the session was kept: what the aggregator sent edge3 meanwhile is delivered on its next connection
    ack_topic = TOPICS.acks_for("edge3").replace("+", "job-x", 1).replace("+", "1", 1)
    others[1].session.publish(ack_topic, b"queued while edge3 was away", qos=1).wait(10.0)
    edge3.stop(timeout=2.0)
    assert _serial(cert) != first_serial
    rotated, inbox = rig.session(rig.settings(config))
    assert rotated.wait_connected(10.0), rotated.connect_error
    assert inbox.get(timeout=10.0).payload == b"queued while edge3 was away"
    for bystander in others:
        bystander.check("rotate")

    second_serial = _serial(cert)
    failures = _verify_failures(rig)
    rig.flctl("remove", "edge3")
    wait_until(lambda: not rotated.connected, 10.0, "the removed edge3's session is closed")
    wait_until(lambda: _verify_failures(rig) >= failures + 2, 10.0, "the removed edge3's certificate is refused")
    assert not rotated.connected and rotated.connection == 1
    crl = x509.load_pem_x509_crl((rig.out / "broker" / "crl.pem").read_bytes())
    assert {entry.serial_number for entry in crl} == {first_serial, second_serial}
    for bystander in others:
        bystander.check("remove")
    assert _files(rig.out, skip={"broker/passwd", "broker/acl", "broker/crl.pem"}) == before


def test_an_added_aggregator_gets_its_acl_block_and_loses_it_at_removal(rig: Rig) -> None:
    edge1 = Bystander(rig, "edge1")
    rig.flctl("add", "cloud1", "--role", "aggregator")
    cloud1, inbox = rig.session(rig.settings(rig.out / "nodes" / "cloud1" / "node.yaml"), subscribe=(edge1.topic,))
    assert cloud1.wait_connected(10.0), cloud1.connect_error
    cloud1.barrier(10.0)
    edge1.check("add cloud1")  # edge1's own round trip, which cloud1 may now read as well (its ACL block)
    assert inbox.get(timeout=10.0).topic == edge1.topic

    rig.flctl("remove", "cloud1")
    wait_until(lambda: not cloud1.connected, 10.0, "the removed cloud1's session is disconnected")
    wait_until(lambda: _refused(cloud1), 10.0, "the removed cloud1's reconnect is refused")
    assert "user cloud1" not in (rig.out / "broker" / "acl").read_text()
    edge1.check("remove cloud1")
