"""Issue 7: a training script whose node service was killed -9 does not outlive it for long, and says why in
one line of its worker.log instead of a traceback."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import JOB, RigFactory
from tests.helpers.processes import wait_exit
from tests.helpers.status import processes_under

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

EXIT_WITHIN = 5.0  # the watchdog notices within about a second; the rest is a loaded two-core machine


def test_script_of_a_killed_edge_service_exits_within_seconds_with_one_line(rig: RigFactory) -> None:
    """edge1's script is held in its round-2 training (a busy script that reads no frame) when its service is
    killed -9. It exits within a few seconds; its worker.log says so in one line, with no traceback. edge1 is
    then started again on the same root and the job completes."""
    r = rig(2, keras=False, edge_params={"edge1": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge1", "Training", 2, timeout=90)
    scripts = processes_under(r.tmp / "edge1" / "code")
    assert len(scripts) == 1, scripts
    pid = scripts[0][0]

    assert r.cluster.kill_node("edge1") == -9
    killed = time.monotonic()
    wait_exit(pid, timeout=30)
    took = time.monotonic() - killed
    assert took < EXIT_WITHIN, f"the orphaned script ran on for {took:.1f} s"

    log = (r.tmp / "edge1" / "logs" / JOB / "worker.log").read_text()
    run = log.rsplit("\n=== ", 1)[-1]  # the part of the log since the killed service started its script
    said = [line for line in run.splitlines() if "is gone" in line]
    assert len(said) == 1, run
    assert "fl-edge-trainer" in said[0] and "exits with code 69" in said[0], said
    assert "Traceback" not in log, log

    r.open_gate("edge1", 2)  # the restarted script's second train call (round 3) passes this gate
    r.cluster.restart_node("edge1")
    status = r.wait_job(120)
    r.assert_outcome(status)
    r.finish()
