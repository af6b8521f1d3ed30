"""A worker script does not outlive its node service for long, and says why in one line.

A node service starts its script in a session of its own (so a Ctrl-C on the service's terminal reaches
the service, which stops its script cleanly); a service killed with SIGKILL therefore leaves its script
running. The worker APIs (`edge_trainer.FederatedLearning`, `cloud_aggregator.AggregationServer`) notice
in two ways:

- the script waits for a frame and the worker channel ends (EOF) without ``stop`` or ``finish``:
  `ServiceWatch.channel_closed`, on the script's main thread;
- the script is busy (training for minutes, reading no frame): a daemon thread (`ServiceWatch.start`)
  sees the script's parent change (the orphan was re-parented to init or a subreaper) within
  `ServiceWatch.interval` seconds and ends the process with ``os._exit``: the main thread may be inside
  a long native call that no exception would interrupt.

Both end the same way: one line on stderr (the job's worker log), exit code `SERVICE_GONE_EXIT` (69,
``EX_UNAVAILABLE``), no traceback: a dead service is the designed path, not a crash of the script. A
service that is in fact alive and closed the channel anyway (its own fault) sees that exit code and the
line in its log tail, and reports the worker Failed, so a real failure stays visible.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import NoReturn

__all__ = ["SERVICE_GONE_EXIT", "ServiceGone", "ServiceWatch"]

# sysexits.h EX_UNAVAILABLE ("a service is unavailable"); os.EX_UNAVAILABLE exists on POSIX only.
SERVICE_GONE_EXIT = 69
# After EOF, how long to wait for the re-parenting that follows a dead service (the kernel closes a dying
# process's sockets before it re-parents its children): tells "gone" from "closed the channel" in the line.
_REPARENT_WAIT = 1.0
_REPARENT_STEP = 0.02


class ServiceGone(SystemExit):
    """The script's node service is gone: the script exits with `SERVICE_GONE_EXIT`; Python prints no
    traceback for a SystemExit, and the one line was written already."""


class ServiceWatch:
    """Watches the node service (the script's parent at creation) on behalf of a worker API."""

    def __init__(self, service: str, *, interval: float = 0.25, parent_pid: int | None = None) -> None:
        """`service`: its name in the line (``fl-edge-trainer``); `interval`: how often the watchdog looks."""
        if interval <= 0:
            raise ValueError(f"interval {interval} must be > 0")
        self.service = service
        self.interval = interval
        self.parent_pid = os.getppid() if parent_pid is None else parent_pid
        self._stopped = threading.Event()
        self._said_lock = threading.Lock()
        self._said = False  # the one line is written once, by whichever path sees the end first
        self._thread: threading.Thread | None = None

    def start(self) -> ServiceWatch:
        """Start the watchdog thread (a daemon: it never keeps the script alive). Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="fl-service-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """The worker API is done (the service said stop or finish, or the script failed on its own):
        the watchdog ends within `interval`."""
        self._stopped.set()

    def channel_closed(self, detail: str = "") -> NoReturn:
        """EOF on the worker channel without stop or finish: write the one line and raise `ServiceGone`."""
        deadline = time.monotonic() + _REPARENT_WAIT
        while os.getppid() == self.parent_pid and time.monotonic() < deadline:
            time.sleep(_REPARENT_STEP)  # bounded: at most _REPARENT_WAIT, only on this way out
        parent = os.getppid()
        if parent != self.parent_pid:
            self._say(f"is gone (the worker channel closed; this script's parent is now pid {parent})")
        else:
            self._say(f"closed the worker channel without a stop{f' ({detail})' if detail else ''}")
        raise ServiceGone(SERVICE_GONE_EXIT)

    # -- internals ---------------------------------------------------------------------------------

    def _watch(self) -> None:
        # Ends when stopped, or with the process; each round waits `interval` on the stop event.
        while not self._stopped.wait(self.interval):
            parent = os.getppid()
            if parent != self.parent_pid:
                if self._say(f"is gone (this script's parent is now pid {parent})"):
                    # The main thread may be deep in a training step: end the whole process from here.
                    os._exit(SERVICE_GONE_EXIT)
                return  # the main thread said it and is exiting already

    def _say(self, what: str) -> bool:
        """Write the line (once per process run of this watch); False if it was written already."""
        with self._said_lock:
            if self._said:
                return False
            self._said = True
        line = f"{self.service} (pid {self.parent_pid}) {what}: this worker script exits with code {SERVICE_GONE_EXIT}"
        for stream in (sys.stdout, sys.stderr):  # what the script printed comes first, and is not lost
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            os.write(2, f"{line}\n".encode())
        return True
