"""Issue 7: worker scripts whose node service is gone exit with one line and SERVICE_GONE_EXIT, no traceback.

Real child processes over a real worker channel, no broker. The "service" is either this test (it stays
alive and closes the channel: the service's own fault, which must stay visible as exit code 69) or a tiny
stand-in process started here and killed -9 (the orphaned script must notice, whether it waits for a frame
or is busy training).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime import SERVICE_GONE_EXIT, spawn_channel_pair
from schemas import WorkerEnv, encode_weights
from tests.helpers.mqtt import wait_until
from tests.helpers.processes import wait_exit

JOB = "tiny"
EXIT_WITHIN = 5.0

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from edge_trainer import FederatedLearning

    class Estimator:
        def __init__(self):
            self.w = np.zeros(3, dtype=np.float32)

        def get_weights(self):
            return [self.w]

        def set_weights(self, weights):
            self.w = np.array(weights[0])

        def train(self, train_data, valid_data=None, **kwargs):
            print("training", flush=True)
            time.sleep(120)  # busy: no frame is read meanwhile
            return {"loss": [0.0]}

    FederatedLearning(estimator=Estimator).train(train_data=[1, 2, 3, 4])
    print("train returned", flush=True)
    """
)

AGGREGATE_SCRIPT = textwrap.dedent(
    """
    from cloud_aggregator import AggregationServer

    AggregationServer(exit_round=1, participants_count=1).start()
    print("start returned", flush=True)
    """
)

# A stand-in node service: starts the script on a worker channel, waits for its first frame, optionally
# sends it a round to train, prints the script's pid, then holds the channel until it is killed.
SERVICE = textwrap.dedent(
    """
    import os, subprocess, sys
    from runtime import spawn_channel_pair
    from schemas import WorkerFrame

    script, log, train_body = sys.argv[1], sys.argv[2], sys.argv[3]
    parent, fd = spawn_channel_pair()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, script], env={**os.environ, "FL_WORKER_FD": str(fd)}, pass_fds=(fd,),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    parent.close_child_fd()
    parent.recv(timeout=60)
    if train_body:
        with open(train_body, "rb") as f:
            parent.send(WorkerFrame(type="train", round=1, has_body=True), f.read())
    print(proc.pid, flush=True)
    sys.stdin.read()
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, WorkerEnv.JOB_NAME: JOB, WorkerEnv.WORKER_NAME: "edge1", "PYTHONUNBUFFERED": "1"}


def _global_blob() -> bytes:
    return encode_weights(
        [np.ones(3, dtype=np.float32)], kind="global", job=JOB, round_=0, sender="cloud0", num_samples=4
    )


def _run_closed_by_a_live_service(tmp_path: Path, source: str) -> tuple[int, str]:
    """Start `source` as a worker script with this test as its service; close the channel after its first
    frame; return its exit code and output."""
    script = tmp_path / "script.py"
    script.write_text(source)
    parent, fd = spawn_channel_pair()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env={**_env(), WorkerEnv.WORKER_FD: str(fd)},
            pass_fds=(fd,),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    parent.close_child_fd()
    try:
        frame, _ = parent.recv(timeout=60)
        assert frame.type in ("hello", "config"), frame
        parent.close()
        code = proc.wait(timeout=30)
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return code, log.read_text()


@pytest.mark.parametrize(
    ("source", "service"), [(TRAIN_SCRIPT, "fl-edge-trainer"), (AGGREGATE_SCRIPT, "fl-cloud-aggregator")]
)
def test_channel_closed_by_a_live_service_is_exit_69_with_one_line(tmp_path: Path, source: str, service: str) -> None:
    """The service is alive but closes the channel without stop/finish (its own fault): the script says so in
    one line and exits 69, which the service reports; no traceback, and the script's code after the API
    call does not run."""
    code, output = _run_closed_by_a_live_service(tmp_path, source)
    assert code == SERVICE_GONE_EXIT, output
    # The script's own notes before the channel closed (e.g. what it evaluates on) may precede it; the
    # end is that one line, with no traceback.
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    assert [line for line in lines if "worker channel" in line] == lines[-1:], output
    assert lines[-1].startswith(f"{service} (pid {os.getpid()}) closed the worker channel without a stop"), output
    assert lines[-1].endswith(f"this worker script exits with code {SERVICE_GONE_EXIT}"), output


@pytest.mark.parametrize("busy", [False, True], ids=["waiting-for-a-frame", "busy-training"])
def test_script_of_a_killed_service_exits_within_seconds_with_one_line(tmp_path: Path, busy: bool) -> None:
    """The stand-in service is killed -9 while its script waits for a frame (EOF) or trains (the watchdog
    notices the new parent): the script exits within seconds, one line, no traceback."""
    script = tmp_path / "script.py"
    script.write_text(TRAIN_SCRIPT)
    log = tmp_path / "worker.log"
    body = tmp_path / "global.blob"
    body.write_bytes(_global_blob())
    pid: int | None = None
    with subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(script), str(log), str(body) if busy else ""],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as service:
        try:
            assert service.stdout is not None
            pid = int(service.stdout.readline())  # bounded by the stand-in's own 60 s receive timeout
            if busy:
                wait_until(lambda: "training" in log.read_text(), 30.0, "the script training")
            service.send_signal(signal.SIGKILL)
            service.wait(10)
            wait_exit(pid, EXIT_WITHIN)
        finally:
            if service.poll() is None:
                service.kill()
                service.wait(10)
            if pid is not None:  # a script that did not exit must not outlive the test either
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    output = log.read_text()
    gone = [line for line in output.splitlines() if "fl-edge-trainer" in line]
    assert len(gone) == 1, output
    assert f"(pid {service.pid}) is gone (" in gone[0], output
    assert "Traceback" not in output and "train returned" not in output, output
