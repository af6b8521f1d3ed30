"""Roles on the provisioned broker: the read-only viewer and the monitor really are read-only, the
monitor reads `$SYS` with the documented mosquitto_sub command, and the password file we hash
in-process is what Mosquitto accepts (real Mosquitto, config from `flctl broker init`).

A refused publish is proven twice without sleeping: the broker's PUBACK says "not authorized" (0x87),
and an aggregator subscribed to everything then runs a barrier (its own sync message comes back after
whatever the broker routed before it) and has received nothing.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Inbound, PublishError, Session, load_node_config
from schemas import Kind, Topics
from tests.helpers.mqtt import take_all
from tests.security.conftest import SecureBroker

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

T = Topics()
NOT_AUTHORIZED = 0x87
REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
ROLES = {"viewers": ["viewer"], "monitors": ["monitor"]}


def flctl(secure: SecureBroker, identity: str, *args: str) -> subprocess.CompletedProcess[str]:
    """flctl as a user runs it, with `identity`'s provisioned config, over TLS."""
    return subprocess.run(
        [sys.executable, "-m", "flctl", "--config", str(secure.prov.configs[identity]), "--host", "127.0.0.1",
         "--port", str(secure.prov.tls_port), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip


def watcher(secure: SecureBroker) -> tuple[Session, queue.Queue[Inbound]]:
    """The aggregator, subscribed to everything under fl/, with every retained message already taken."""
    cloud, inbox = secure.session(secure.settings("cloud0"), subscribe=(T.everything(),))
    cloud.barrier(10.0)
    take_all(inbox)
    return cloud, inbox


def delivered(inbox: queue.Queue[Inbound]) -> list[str]:
    """Topics in `inbox` now, other than flctl's sync messages (fl/clients/<id>/sync: its read barrier)."""
    return [m.topic for m in take_all(inbox) if not m.topic.startswith("fl/clients/")]


def refused(session: Session, topic: str, payload: bytes = b"x") -> None:
    with pytest.raises(PublishError) as err:
        session.publish(topic, payload, retain=True).wait(10.0)
    assert err.value.reason_code == NOT_AUTHORIZED, topic


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
def test_viewer_reads_jobs_but_cannot_create_or_delete_them(secure: SecureBroker, tmp_path: Path) -> None:
    """The viewer's flctl get works; its create and delete are refused by the broker and change nothing."""
    assert load_node_config(secure.prov.configs["viewer"]).role == "viewer"
    created = flctl(secure, "admin", "create", "-f", str(SEED))
    assert created.returncode == 0, created.stderr
    cloud, inbox = watcher(secure)

    got = flctl(secure, "viewer", "get", "fl")
    assert got.returncode == 0, got.stderr
    assert JOB in got.stdout
    described = flctl(secure, "viewer", "describe", "fl", JOB)
    assert described.returncode == 0, described.stderr

    deleted = flctl(secure, "viewer", "delete", "fl", JOB)
    assert deleted.returncode != 0 and "not authorized" in deleted.stderr.lower(), deleted.stderr
    other = tmp_path / "other.yaml"
    other.write_text(SEED.read_text().replace(f"name: {JOB}", "name: other-job"))
    assert "other-job" in other.read_text()
    created = flctl(secure, "viewer", "create", "-f", str(other))
    assert created.returncode != 0 and "not authorized" in created.stderr.lower(), created.stderr
    cloud.barrier(10.0)
    assert delivered(inbox) == []  # the refused delete and create reached no one
    again = flctl(secure, "viewer", "get", "fl", JOB, "-o", "name")
    assert again.returncode == 0 and JOB in again.stdout, again.stderr


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
@pytest.mark.parametrize("identity", ["viewer", "monitor"])
def test_read_only_identities_write_nothing(secure: SecureBroker, identity: str) -> None:
    """Specs, statuses, plans and even the topics Mosquitto's `pattern` lines give every user by name
    (its own node status, worker status, updates): all refused, nothing delivered."""
    cloud, inbox = watcher(secure)
    ro, _ = secure.session(secure.settings(identity))
    for topic in (
        T.spec(Kind.JOB, JOB),
        T.spec(Kind.DATASET, "ds"),
        T.status(Kind.JOB, JOB),
        T.plan(JOB),
        T.node_status(identity),
        T.worker_status(JOB, identity),
        T.update_manifest(JOB, 1, identity, "ab12cd34"),
        T.global_manifest(JOB, 1),
    ):
        refused(ro, topic)
    ro.barrier(10.0)  # its own sync topic still works: the refusals above are the ACL
    cloud.barrier(10.0)
    assert delivered(inbox) == []


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
def test_monitor_reads_sys_with_the_documented_command(secure: SecureBroker) -> None:
    """`XDG_CONFIG_HOME=DIR/monitor/monitor mosquitto_sub -t '$SYS/...'` (docs/operations.md): logs in as
    the monitor over the loopback listener, reads $SYS, and takes no service's identity."""
    folder = secure.prov.configs["monitor"].parent
    cloud, _ = secure.session(secure.settings("cloud0"))
    env = {**os.environ, "XDG_CONFIG_HOME": str(folder)}
    done = subprocess.run(
        ["mosquitto_sub", "-v", "-C", "1", "-W", "20", "-t", "$SYS/broker/version"],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("$SYS/broker/version mosquitto version 2.")
    assert cloud.connected  # the aggregator was not taken over
    assert "as monitor" in secure.local.log_text()


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
def test_viewer_and_admin_cannot_read_sys(secure: SecureBroker) -> None:
    """$SYS is the monitor's (and the aggregators'): the admin and viewer subscriptions get nothing, while
    the monitor's session gets the broker's version at once."""
    _, monitor_inbox = secure.session(secure.settings("monitor"), subscribe=("$SYS/broker/version",))
    secure.sessions[-1].barrier(10.0)
    assert [m.topic for m in take_all(monitor_inbox)] == ["$SYS/broker/version"]
    for identity in ("admin", "viewer"):
        session, inbox = secure.session(secure.settings(identity), subscribe=("$SYS/broker/version",))
        session.barrier(10.0)
        assert take_all(inbox) == [], identity


@pytest.mark.parametrize("secure", [ROLES], indirect=True)
def test_round_records_are_written_by_the_aggregator_and_read_by_admins_and_viewers(secure: SecureBroker) -> None:
    """fl/federatedlearningjobs/<job>/rounds/<r>/record: the aggregator publishes it retained; the admin and
    the viewer read it; an edge, the admin and the viewer cannot write it, and an edge does not read it."""
    topic = T.round_record(JOB, 3)
    cloud, inbox = watcher(secure)
    cloud.publish(topic, b'{"round":3}', retain=True).wait(10.0)
    for reader in ("admin", "viewer"):
        session, inbox = secure.session(secure.settings(reader), subscribe=(T.job_round_records(JOB),))
        session.barrier(10.0)
        assert [(m.topic, m.payload) for m in take_all(inbox) if m.topic == topic] == [(topic, b'{"round":3}')], reader
    edge, edge_inbox = secure.session(secure.settings("edge1"), subscribe=(T.all_round_records(),))
    edge.barrier(10.0)
    assert delivered(edge_inbox) == []
    cloud.barrier(10.0)
    take_all(inbox)
    for writer in ("edge1", "admin", "viewer"):
        session = edge if writer == "edge1" else next(s for s in secure.sessions if s.settings.client_id == writer)
        refused(session, topic, b'{"forged":true}')
    cloud.barrier(10.0)
    assert delivered(inbox) == []
