"""`flctl wait` and the end of `flctl get fl NAME -w`, against a real Mosquitto: the exit code says how a
job ended (0 the condition holds, 1 it can no longer hold / the job Failed, 4 timed out).

Statuses are published retained by a raw client, as the controller would; a waiter runs in a thread
and either order of "waiter subscribes" and "status arrives" gives the same result, so no test sleeps.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas import JobStatus, Kind, Phase, Topics
from tests.helpers.flctl import FlctlRunner, Run, publish_retained
from tests.helpers.mqtt import BrokerHandle

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
TOPICS = Topics()
JOIN = 30.0
PIPES: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
FAILED_MESSAGE = "worker edge1 failed: 1.txt line 3: image x.jpg not found"


@pytest.fixture
def flctl(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> FlctlRunner:
    runner = FlctlRunner(broker, capsys)
    assert runner("create", "-f", str(SEED)).code == 0
    return runner


def status(phase: Phase, name: str = JOB, message: str = "") -> bytes:
    return JobStatus(name=name, phase=phase, current_round=1, exit_round=3, message=message).to_json()


def in_thread(run: Callable[[], Run]) -> tuple[threading.Thread, list[Run]]:
    result: list[Run] = []
    thread = threading.Thread(target=lambda: result.append(run()))
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: list[Run]) -> Run:
    thread.join(JOIN)
    assert not thread.is_alive(), "flctl did not return"
    return result[0]


# -- get -w ------------------------------------------------------------------------------------------


def test_watch_exits_1_when_the_job_ends_failed(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """`get fl NAME -w` ends at Failed with exit 1 and the job's message on stderr (was: exit 0)."""
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.RUNNING))
    thread, result = in_thread(lambda: flctl("get", "fl", JOB, "-w", "--watch-timeout", "20"))
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.FAILED, message=FAILED_MESSAGE))

    run = finish(thread, result)

    assert run.code == 1
    assert f'error: federatedlearningjobs "{JOB}" failed: {FAILED_MESSAGE}' in run.err.splitlines()
    assert "Failed" in run.out.splitlines()[-1]


def test_watch_of_an_already_failed_job_exits_1(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.FAILED, message=FAILED_MESSAGE))

    run = flctl("get", "fl", JOB, "-w")

    assert run.code == 1 and FAILED_MESSAGE in run.err


def test_watch_timeout_exits_4(flctl: FlctlRunner) -> None:
    run = flctl("get", "fl", JOB, "-w", "--watch-timeout", "0.5")

    assert run.code == 4
    assert "timed out after 0.5s waiting for" in run.err


# -- wait --------------------------------------------------------------------------------------------


def test_wait_returns_0_once_the_job_succeeded(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.RUNNING))
    thread, result = in_thread(lambda: flctl("wait", "fl", JOB, "--for=condition=Succeeded", "--timeout=20s"))
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.SUCCEEDED))

    run = finish(thread, result)

    assert (run.code, run.out, run.err) == (0, f"federatedlearningjob.sedna.io/{JOB} condition met\n", "")


def test_wait_for_succeeded_exits_1_as_soon_as_the_job_failed(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """No waiting out the 30 minutes: Failed is final, so the condition can no longer hold."""
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.RUNNING))
    started = time.monotonic()
    thread, result = in_thread(lambda: flctl("wait", "fl", JOB, "--for", "condition=Succeeded", "--timeout", "30m"))
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.FAILED, message=FAILED_MESSAGE))

    run = finish(thread, result)

    assert run.code == 1
    assert run.err == (
        f"error: federatedlearningjobs/{JOB} is Failed, so condition=Succeeded can no longer hold: {FAILED_MESSAGE}\n"
    )
    assert time.monotonic() - started < JOIN


def test_wait_for_failed_holds_for_a_failed_job(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.FAILED, message=FAILED_MESSAGE))

    run = flctl("wait", "fl", JOB, "--for=condition=failed")

    assert (run.code, run.out) == (0, f"federatedlearningjob.sedna.io/{JOB} condition met\n")


def test_wait_timeout_uses_kubectl_wording_and_exits_4(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.RUNNING))
    started = time.monotonic()

    run = flctl("wait", "fl", JOB, "--for=condition=Succeeded", "--timeout=500ms")

    assert (run.code, run.out) == (4, "")
    assert run.err == f"error: timed out waiting for the condition on federatedlearningjobs/{JOB}\n"
    assert time.monotonic() - started < 5.0


def test_wait_for_delete(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """Holds once the spec is gone (at once for a name that does not exist); a deleted job fails a condition
    wait. The waiters are real flctl processes: concurrent runs in one process would share a client id."""
    common = [sys.executable, "-m", "flctl", "--host", broker.host, "--port", str(broker.port), "wait", "fl", JOB]
    for_delete = subprocess.Popen([*common, "--for=delete", "--timeout=20s"], **PIPES)
    for_success = subprocess.Popen([*common, "--for=condition=Succeeded", "--timeout=20s"], **PIPES)

    assert flctl("delete", "fl", JOB).code == 0

    out, _ = for_delete.communicate(timeout=JOIN)
    assert (for_delete.returncode, out) == (0, f"federatedlearningjob.sedna.io/{JOB} condition met\n")
    _, err = for_success.communicate(timeout=JOIN)
    assert for_success.returncode == 1
    # Which one depends on whether the process had read the job before the delete: both say why.
    assert err in (
        f"error: federatedlearningjobs/{JOB} was deleted while waiting for condition=Succeeded\n",
        f'Error from server (NotFound): federatedlearningjobs "{JOB}" not found\n',
    )
    assert flctl("wait", "fl", "never-was", "--for=delete").code == 0


def test_wait_all_and_several_names(flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path) -> None:
    """--all takes every job that exists; several names are each reported; exit 1 if one cannot hold."""
    other = tmp_path / "other.yaml"
    other.write_text(SEED.read_text().split("---\n")[-1].replace(f"name: {JOB}", "name: other"))
    assert flctl("create", "-f", str(other)).code == 0
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(Phase.SUCCEEDED))
    publish_retained(broker, TOPICS.status(Kind.JOB, "other"), status(Phase.SUCCEEDED, "other"))

    run = flctl("wait", "fl", "--all", "--for=condition=Complete", "--timeout=0")
    assert (run.code, run.out.splitlines()) == (
        0,
        ["federatedlearningjob.sedna.io/other condition met", f"federatedlearningjob.sedna.io/{JOB} condition met"],
    )

    publish_retained(broker, TOPICS.status(Kind.JOB, "other"), status(Phase.FAILED, "other", "boom"))
    run = flctl("wait", "fl", JOB, "other", "nope", "--for=condition=Succeeded", "--timeout=5s")
    assert run.code == 1
    assert run.out == f"federatedlearningjob.sedna.io/{JOB} condition met\n"
    assert run.err.splitlines() == [
        "error: federatedlearningjobs/other is Failed, so condition=Succeeded can no longer hold: boom",
        'Error from server (NotFound): federatedlearningjobs "nope" not found',
    ]


def test_wait_all_without_jobs_exits_1(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    run = FlctlRunner(broker, capsys)("wait", "fl", "--all", "--for=delete")

    assert (run.code, run.err) == (1, "error: no matching resources found\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["wait", "fl", JOB, "--for=condition=Ready"], "expected delete or condition=NAME"),
        (["wait", "fl", JOB, "--for=delete", "--timeout=5d"], "expected a duration like 30s"),
        (["wait", "fl", JOB], "the following arguments are required: --for"),
        (["wait", "fl", "--for=delete"], "give job names or --all"),
        (["wait", "ds", "x", "--for=delete"], "federatedlearningjobs (fl) only"),
    ],
)
def test_wait_usage_errors_exit_2(
    broker: BrokerHandle, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    run = FlctlRunner(broker, capsys)(*argv)

    assert run.code == 2 and message in run.err, run.err
