"""Issue 8: the broker is killed -9 and comes back without its retained state (an empty data directory: what
a kill before the autosave loses, made deterministic) or with an old one (a copy of its database taken
earlier). The aggregator keeps every accepted spec, status and plan under its root and restores them: `flctl
get` lists every resource with the right phase, and the job finishes with correct results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from flctl import cli as flctl_cli
from schemas import JobStatus, Phase
from tests.faults.conftest import JOB, Rig, RigFactory
from tests.helpers.mqtt import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

RESOURCES = {"datasets": ["edge1-data", "edge2-data"], "models": ["fault-model"]}


def _data_dir(r: Rig) -> Path:
    assert r.cluster.broker is not None
    return Path(r.cluster.broker.cfg.data_dir)


def _snapshot(r: Rig, into: Path) -> Path:
    """A copy of the broker's database as it is now (a graceful stop saves it; the broker comes back at once)."""
    r.cluster.restart_broker()
    databases = list(_data_dir(r).glob("*.db"))
    assert len(databases) == 1, databases
    into.mkdir()
    return Path(shutil.copy2(databases[0], into / databases[0].name))


def _get(r: Rig, capsys: pytest.CaptureFixture[str], type_word: str) -> list[dict[str, Any]]:
    """`flctl get TYPE -o json`, as a user runs it: the listed items."""
    capsys.readouterr()
    code = flctl_cli.main([*r.cluster.flctl_args(), "--timeout", "5", "get", type_word, "-o", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    # The in-process watcher and capture log to stdout too: the document is the one that starts a line.
    start = out.find("{\n")
    if start < 0:
        return []  # nothing of that type on the broker (flctl says so on stderr)
    document, _ = json.JSONDecoder().raw_decode(out[start:])
    items: list[dict[str, Any]] = document["items"]
    return items


def _listed(r: Rig, capsys: pytest.CaptureFixture[str], phase: Phase) -> bool:
    """Every Dataset and Model is listed valid, and the job with `phase`."""
    for type_word, names in RESOURCES.items():
        items = {i["metadata"]["name"]: i for i in _get(r, capsys, type_word)}
        if sorted(items) != names or not all(i.get("status", {}).get("valid") for i in items.values()):
            return False
    jobs = _get(r, capsys, "fl")
    return [j["metadata"]["name"] for j in jobs] == [JOB] and jobs[0].get("status", {}).get("phase") == phase.value


def _assert_listed(r: Rig, capsys: pytest.CaptureFixture[str], phase: Phase) -> None:
    # The republish follows the reconnect by a round trip; each `flctl get` waits on the broker itself.
    wait_until(lambda: _listed(r, capsys, phase), timeout=20, what=f"every resource listed, the job {phase.value}")


def test_broker_loses_everything_right_after_create(rig: RigFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """The aggregator accepted the specs; the broker dies before its autosave and comes back empty: the specs,
    statuses and plan are published again and the job runs to the end."""
    # Round 1 is held until the capture is back: the FedAvg check needs every update on the wire.
    r = rig(2, exit_round=2, keras=False, proxies=False, common_params={"hold_rounds": "1"})
    r.watch.wait(lambda w: w.status is not None, timeout=30, what="the job accepted")

    r.kill_broker()
    for edge in r.edges:
        r.open_gate(edge, 1)

    status = r.wait_job(90)
    r.assert_outcome(status)
    _assert_listed(r, capsys, Phase.SUCCEEDED)
    r.finish()


def test_broker_loses_everything_mid_job(rig: RigFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """Round 1 closed; the broker comes back empty: the job resumes from what the aggregator kept (same uid)."""
    r = rig(2, exit_round=3, keras=False, proxies=False, common_params={"hold_rounds": "2"})
    r.watch.wait_rounds(1, timeout=60)
    uid = r.watch.status.uid if r.watch.status else None

    r.kill_broker()
    _assert_listed(r, capsys, Phase.RUNNING)  # the edges hold round 2: the job cannot have ended
    for edge in r.edges:
        r.open_gate(edge, 2)

    status = r.wait_job(90)
    assert status.uid == uid
    r.assert_outcome(status)
    _assert_listed(r, capsys, Phase.SUCCEEDED)
    r.finish()


def test_broker_back_from_an_old_snapshot_mid_job(
    rig: RigFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The broker's database is copied just after the job was accepted; in round 2 the broker is killed -9 and
    started from that copy (old status, no global model of round 1): the kept status, plan and round-1 model
    are published again and the job finishes with the same uid."""
    r = rig(2, exit_round=3, keras=False, proxies=False, common_params={"hold_rounds": "2"})
    r.watch.wait(lambda w: w.status is not None, timeout=30, what="the job accepted")
    old = _snapshot(r, tmp_path / "snapshot")
    r.watch.wait_rounds(1, timeout=60)
    uid = r.watch.status.uid if r.watch.status else None

    r.kill_broker(restore=old)
    _assert_listed(r, capsys, Phase.RUNNING)
    for edge in r.edges:
        r.open_gate(edge, 2)

    status = r.wait_job(90)
    assert status.uid == uid
    r.assert_outcome(status)
    _assert_listed(r, capsys, Phase.SUCCEEDED)
    r.finish()


def test_broker_back_from_an_old_snapshot_after_the_job(
    rig: RigFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The job Succeeded; the aggregator and then the broker are killed -9, and the broker is started from a
    copy of its database taken in round 1 (the job Running there). The aggregator started against that state
    restores the Succeeded status it kept instead of resuming the job, and clears nothing."""
    r = rig(2, exit_round=2, keras=False, proxies=False)
    r.watch.wait_rounds(1, timeout=60)
    old = _snapshot(r, tmp_path / "snapshot")
    done = r.wait_job(90)
    r.assert_outcome(done)

    assert r.cluster.kill_node("cloud0") == -9
    r.kill_broker(restore=old)
    node = r.cluster.restart_node("cloud0")
    wait_until(lambda: "controller ready" in node.log_tail(400), timeout=30, what="the restarted aggregator ready")

    _assert_listed(r, capsys, Phase.SUCCEEDED)
    log = node.log_tail(400)
    assert "job already finished with this spec; not run again" in log, log
    assert "job resumes" not in log and "clearing what a deleted job left behind" not in log, log
    last = r.watch.status
    assert isinstance(last, JobStatus) and last.uid == done.uid and last.phase is Phase.SUCCEEDED
    r.finish()


def test_deleted_job_stays_deleted_when_an_old_snapshot_brings_it_back(
    rig: RigFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`flctl delete` of the finished job, then the broker is killed -9 and started from a copy of its database
    taken before the delete: the aggregator knows the job was deleted (its tombstone) and clears the spec and
    status that came back instead of running the job again. The Datasets and the Model stay."""
    r = rig(2, exit_round=2, keras=False, proxies=False)
    done = r.wait_job(90)
    r.assert_outcome(done)
    old = _snapshot(r, tmp_path / "snapshot")
    capsys.readouterr()
    assert flctl_cli.main([*r.cluster.flctl_args(), "delete", "fl", JOB]) == 0
    node = r.cluster.nodes["cloud0"]
    # The aggregator must have seen the delete: one the broker loses before anyone saw it never happened.
    wait_until(lambda: '"job deleted"' in node.log_tail(400), timeout=20, what="the delete seen by the aggregator")
    wait_until(lambda: _get(r, capsys, "fl") == [], timeout=20, what="the job deleted")

    r.kill_broker(restore=old)

    wait_until(
        lambda: "a deleted spec came back from the broker's store" in node.log_tail(400),
        timeout=30,
        what="the stale spec noticed",
    )
    wait_until(lambda: _get(r, capsys, "fl") == [], timeout=20, what="the job deleted again")
    for type_word, names in RESOURCES.items():
        assert sorted(i["metadata"]["name"] for i in _get(r, capsys, type_word)) == names
    assert "job starts" not in node.log_tail(400).split("a deleted spec came back")[-1]
    r.finish()
