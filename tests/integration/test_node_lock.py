"""One service per node root: a second fl-edge-trainer or fl-cloud-aggregator on a root that a running
service holds exits at once, non-zero, naming the holder; the lock goes with its holder, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import NodeRootLockedError, lock_node_root
from tests.helpers.mqtt import BrokerHandle, wait_until

pytestmark = pytest.mark.timeout(120)
SERVICES = {"edge_trainer": ("fl-edge-trainer", "edge1"), "cloud_aggregator": ("fl-cloud-aggregator", "cloud0")}


def test_a_second_lock_on_a_root_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = lock_node_root(tmp_path, service="fl-edge-trainer", node="edge1")
    with pytest.raises(NodeRootLockedError) as err:
        lock_node_root(tmp_path, service="fl-edge-trainer", node="edge1")
    assert f"fl-edge-trainer (node edge1, pid {os.getpid()}" in str(err.value)
    assert "only one service may run per node root" in str(err.value)
    held.release()
    lock_node_root(tmp_path, service="fl-cloud-aggregator", node="cloud0").release()  # free again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL: the kernel drops the flock with the process; the next service starts."""
    code = (
        "import sys; from pathlib import Path; from runtime import lock_node_root; "
        "lock = lock_node_root(Path(sys.argv[1]), service='x', node='n'); print('locked', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
            with pytest.raises(NodeRootLockedError):
                lock_node_root(tmp_path, service="y", node="n")
        finally:
            proc.kill()
            proc.wait(10)
    lock_node_root(tmp_path, service="y", node="n").release()


@pytest.mark.parametrize("module", list(SERVICES))
def test_second_service_on_the_same_root_exits_at_once(module: str, broker: BrokerHandle, tmp_path: Path) -> None:
    script, node = SERVICES[module]
    root = tmp_path / node
    (root / "code").mkdir(parents=True)
    argv = [sys.executable, "-P", "-m", module, "--node", node, "--root", str(root),
            "--host", broker.host, "--port", str(broker.port)]  # fmt: skip
    first_log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(argv, stdout=first_log, stderr=subprocess.STDOUT)
    lock_file = root / "state" / "service.lock"
    try:
        wait_until(lambda: lock_file.exists() and f"pid {first.pid} " in lock_file.read_text(), 30.0, "first locked")

        started = time.monotonic()
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started

        assert second.returncode == 2, second.stderr
        assert (
            f"{script}: the node root {root.resolve()} is already in use by {script} (node {node}, pid {first.pid}"
            in (second.stderr)
        )
        assert took < 20.0  # before paho, the engine or a broker connection
        assert first.poll() is None  # the first one runs on, untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
        first_log.close()
    assert first.returncode == 0
