"""Oversized and unreadable specs published straight to a spec topic (issue 8), against a real Mosquitto
(max_packet_size 4 MiB, as `fl-broker` and `flctl broker init` configure it) and the real aggregator.

Every document that reaches the broker ends in a visible status naming the topic (and, when it is too
large, its size and the limit): a job Failed with reason SpecTooLarge or InvalidSpec, a Dataset or Model
valid=false. A document over the broker's packet limit never reaches anyone: the broker disconnects the
publisher (mosquitto_pub: "Error: The connection was lost.", exit 7), so `flctl create` refuses it first.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Inbound, Session
from flctl.cli import main
from flctl.cluster import LocalCluster
from schemas import MAX_DOCUMENT_BYTES, Kind, Topics
from tests.helpers.mqtt import wait_until

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]

T = Topics()
STATUS_WAIT = 30.0
MODEL_HEAD = b"apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: NAME}\nspec: {url: /model, format: ckpt}\n"
# Nine levels of nine aliases: a few hundred bytes that name 9**7 (4.8 million) list items.
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """The broker and the aggregator only: what happens to a spec is the controller's business."""
    with LocalCluster(tmp_path) as c:
        c.start_broker()
        c.start_node("cloud0", "aggregator")
        yield c


class Statuses:
    """Every status message the broker delivers, read by a session independent of flctl and the aggregator."""

    def __init__(self, inbox: queue.Queue[Inbound]) -> None:
        self.inbox = inbox
        self.seen: dict[str, dict[str, object]] = {}

    def wait(self, kind: Kind, name: str) -> dict[str, object]:
        topic = T.status(kind, name)
        while topic not in self.seen:
            try:
                msg = self.inbox.get(timeout=STATUS_WAIT)
            except queue.Empty:
                raise AssertionError(f"no status on {topic} within {STATUS_WAIT} s; got {sorted(self.seen)}") from None
            if msg.payload:
                self.seen[msg.topic] = json.loads(msg.payload)
        return self.seen[topic]


@pytest.fixture
def statuses(cluster: LocalCluster) -> Iterator[Statuses]:
    with cluster.watch("spec-limits-statuses", T.all_statuses()) as inbox:
        yield Statuses(inbox)


def publish_raw(cluster: LocalCluster, kind: Kind, name: str, payload: bytes) -> None:
    """Publish retained as any MQTT client would, acknowledged by the broker."""
    session = Session(cluster.settings(f"raw-{name}"), inbox=queue.Queue())
    session.start()
    try:
        assert session.wait_connected(10.0)
        session.publish(T.spec(kind, name), payload, qos=1, retain=True).wait(10.0)
    finally:
        session.stop()


def job_reason(status: dict[str, object]) -> str:
    conditions = status["conditions"]
    assert isinstance(conditions, list) and conditions, status
    reason = conditions[-1]["reason"]
    events = status["events"]
    assert isinstance(events, list) and events[-1]["reason"] == reason and events[-1]["type"] == "Warning"
    return str(reason)


def test_a_3mb_spec_fails_the_job_naming_topic_size_and_limit(cluster: LocalCluster, statuses: Statuses) -> None:
    """Under the broker's 4 MiB, over the 1 MiB spec limit: it reaches the controller, which says why."""
    payload = MODEL_HEAD.replace(b"NAME", b"big") + b"# " + b"x" * 3_000_000 + b"\n"
    publish_raw(cluster, Kind.JOB, "big", payload)
    publish_raw(cluster, Kind.MODEL, "big", payload)

    job = statuses.wait(Kind.JOB, "big")
    expected = f"topic {T.spec(Kind.JOB, 'big')}: {len(payload)} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit"
    assert (job["phase"], job["message"]) == ("Failed", expected)
    assert job_reason(job) == "SpecTooLarge"
    model = statuses.wait(Kind.MODEL, "big")
    assert model["valid"] is False
    assert model["message"] == expected.replace("federatedlearningjobs", "models")


def test_binary_garbage_fails_the_job_as_an_invalid_spec(cluster: LocalCluster, statuses: Statuses) -> None:
    garbage = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
    publish_raw(cluster, Kind.JOB, "garbage", garbage)
    publish_raw(cluster, Kind.DATASET, "garbage", garbage)

    job = statuses.wait(Kind.JOB, "garbage")
    assert job["phase"] == "Failed" and job_reason(job) == "InvalidSpec"
    assert str(job["message"]).startswith(f"topic {T.spec(Kind.JOB, 'garbage')}: not UTF-8 text")
    dataset = statuses.wait(Kind.DATASET, "garbage")
    assert dataset["valid"] is False and "not UTF-8 text" in str(dataset["message"])


def test_a_yaml_bomb_fails_the_job_naming_the_node_limit(cluster: LocalCluster, statuses: Statuses) -> None:
    publish_raw(cluster, Kind.JOB, "bomb", BOMB.encode())

    job = statuses.wait(Kind.JOB, "bomb")
    assert job["phase"] == "Failed" and job_reason(job) == "SpecTooLarge"
    assert job["message"] == (
        f"topic {T.spec(Kind.JOB, 'bomb')}: expands to more than {MAX_DOCUMENT_BYTES} YAML nodes (alias bomb?)"
    )
    # and `flctl wait` sees it: the condition Succeeded can no longer hold, Failed does
    base = cluster.flctl_args()
    assert main([*base, "wait", "fl", "bomb", "--for=condition=Failed", "--timeout=10s"]) == 0
    assert main([*base, "wait", "fl", "bomb", "--for=condition=Succeeded", "--timeout=10s"]) == 1


def test_over_the_broker_limit_nothing_arrives_and_flctl_refuses_first(
    cluster: LocalCluster, statuses: Statuses, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10 MB: the broker drops the publisher's connection, so no status can ever say anything. What a raw
    mosquitto_pub user sees is its exit code and "The connection was lost"; flctl refuses before publishing."""
    big = tmp_path / "big10.yaml"
    big.write_bytes(MODEL_HEAD.replace(b"NAME", b"big10") + b"# " + b"x" * 10_000_000 + b"\n")

    code = main([*cluster.flctl_args(), "create", "-f", str(big)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{big.stat().st_size} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit" in err
    assert err.rstrip().endswith("nothing was published")

    mosquitto_pub = shutil.which("mosquitto_pub")
    if mosquitto_pub is None:
        pytest.skip("mosquitto_pub (mosquitto-clients) is not installed")
    topic = T.spec(Kind.MODEL, "big10")
    raw = subprocess.run(
        [mosquitto_pub, "-p", str(cluster.port), "-q", "1", "-r", "-t", topic, "-f", str(big)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (raw.returncode, raw.stderr.strip()) == (7, "Error: The connection was lost.")
    broker = cluster.broker
    assert broker is not None
    wait_until(lambda: "disconnected due to oversize packet" in broker.log_text(), 10.0, "logged by the broker")
    # A marker published after it gets its status: the controller has seen everything before it, and no
    # status was ever published for big10.
    publish_raw(cluster, Kind.MODEL, "marker", b"not: [a, model")
    statuses.wait(Kind.MODEL, "marker")
    assert T.status(Kind.MODEL, "big10") not in statuses.seen
