"""Waiting for processes that are not our children (a worker script re-parented when its service died)."""

from __future__ import annotations

import os
import select
from pathlib import Path

from tests.helpers.mqtt import wait_until


def running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:") and line.split()[1] == "Z" for line in status.splitlines())


def wait_exit(pid: int, timeout: float) -> None:
    """Until `pid` has exited; AssertionError after `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd on this kernel: look at /proc instead
        wait_until(lambda: not running(pid), timeout, f"process {pid} exited")
        return
    try:
        # A pidfd turns readable when its process exits (zombie or reaped): an event, not a poll.
        readable, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    assert readable, f"process {pid} still running {timeout:g} s later"
