"""Warm workers: a fresh interpreter with the framework already imported, waiting to run the next script.

`import tensorflow` costs seconds; a warm worker pays it before the job arrives. Each worker is spawned
(never forked: TensorFlow and the service's threads do not survive a fork) running `_warm_main.py`,
imports the `preload` modules, says ready, and blocks on its control socket for ONE launch; it then
runs that script and exits, so nothing leaks from one job to the next and a crash ends only that run.
`WarmPool.take` hands the next launch to the idle worker; its successor is spawned when that run
exits (`ScriptSupervisor` calls `start`), not at once: on a small node its import would slow the run.

A warm start is used only when it is indistinguishable from a cold one: the same interpreter (both are
this service's `sys.executable`) and the same values of every variable read at import time
(`IMPORT_TIME_PREFIXES`). Otherwise `take` says why
and the supervisor starts the script cold.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from runtime._errors import ScriptStartError
from runtime._logging import get_logger
from runtime._script_env import script_environment
from schemas import WorkerEnv

__all__ = ["IMPORT_TIME_PREFIXES", "WarmPool", "WarmWorker"]

# Variables a library may read when it is imported (thread pools, devices, paths): a warm worker that
# imported with other values would not behave as a cold start.
IMPORT_TIME_PREFIXES = ("TF_", "CUDA_", "OMP_", "KMP_", "MKL_", "PYTHON", "LD_")
_MAIN = Path(__file__).with_name("_warm_main.py")


def _import_time(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


class WarmWorker:
    """One spawned interpreter waiting for its launch."""

    def __init__(self, preload: Sequence[str], log_path: Path | None, log: FilteringBoundLogger) -> None:
        self._log = log
        self.env = script_environment({}, fd=-1)
        del self.env[WorkerEnv.WORKER_FD]
        self.ready = threading.Event()
        self.settled = threading.Event()  # ready, or died before it was
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control = ours
        try:
            self.proc = self._spawn(preload, log_path, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        threading.Thread(target=self._await_ready, name="warm-worker-ready", daemon=True).start()

    def _spawn(self, preload: Sequence[str], log_path: Path | None, control_fd: int) -> subprocess.Popen[bytes]:
        # Before its launch the worker writes only preload messages (TensorFlow's start-up lines): to
        # `log_path`, the node's warm-worker log; the script's own output goes to the job's log.
        if log_path is None:
            return self._popen(preload, control_fd, subprocess.DEVNULL)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            return self._popen(preload, control_fd, out.fileno())

    def _popen(self, preload: Sequence[str], control_fd: int, out: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(_MAIN), str(control_fd), *preload],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(control_fd,),
            start_new_session=True,  # as a cold start: the run leads its own process group
        )

    def _await_ready(self) -> None:
        try:
            with contextlib.suppress(OSError):
                if self._control.recv(1) == b"R":
                    self.ready.set()
                    self._log.info("warm worker ready", pid=self.proc.pid)
                    return
            code = self.proc.wait()  # EOF before ready: it died (or was discarded); reap it so `alive` says so
            self._log.warning("warm worker ended before it was ready", pid=self.proc.pid, returncode=code)
        finally:
            self.settled.set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def launch(self, script: Path, cwd: Path, env: Mapping[str, str], channel_fd: int, log_fd: int) -> None:
        """Hand over the run; ScriptStartError when the worker cannot take it (it died meanwhile)."""
        doc = json.dumps({"script": str(script), "cwd": str(cwd), "env": dict(env)}).encode()
        try:
            socket.send_fds(self._control, [doc], [channel_fd, log_fd])
            self._control.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.discard()
            raise ScriptStartError(f"the warm worker (pid {self.proc.pid}) could not take the run: {exc}") from exc
        finally:
            self._control.close()

    def discard(self) -> None:
        """Close the control socket and end the worker (unused at shutdown, or broken)."""
        self._control.close()
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)


class WarmPool:
    """At most one idle warm worker; `take` returns it or says why not; `start` spawns the next."""

    def __init__(
        self, preload: Sequence[str], *, log_path: Path | None = None, log: FilteringBoundLogger | None = None
    ) -> None:
        self._preload = tuple(preload)
        self._log_path = log_path
        self._log = log or get_logger()
        self._lock = threading.Lock()
        self._idle: WarmWorker | None = None
        self._closed = False

    def start(self) -> None:
        """Spawn the idle worker if there is none (service start, after a take)."""
        with self._lock:
            if self._closed or (self._idle is not None and self._idle.alive()):
                return
            try:
                self._idle = WarmWorker(self._preload, self._log_path, self._log)
            except (OSError, ValueError) as exc:
                self._idle = None
                self._log.warning("cannot start a warm worker; scripts start cold", error=str(exc))
                return
            self._log.info("warm worker starting", pid=self._idle.proc.pid, preload=list(self._preload))

    def take(self, env: Mapping[str, str]) -> tuple[WarmWorker | None, str]:
        """The idle worker if it can run a script with environment `env` exactly as a cold start, else
        (None, why). A dead worker is dropped; `start` spawns its successor."""
        with self._lock:
            worker = self._idle
            if worker is None:
                return None, "no warm worker" if self._closed else "the warm worker could not be started"
            if not worker.alive():
                self._idle = None
                reason = f"the warm worker died (exit code {worker.proc.returncode})"
            elif not worker.ready.is_set():
                return None, "the warm worker is not ready yet"
            else:
                differ = sorted(
                    k
                    for k in _import_time(env).keys() | _import_time(worker.env).keys()
                    if env.get(k) != worker.env.get(k)
                )
                if differ:
                    return None, f"variables read at import time differ from the warm worker's: {', '.join(differ)}"
                self._idle = None
                reason = ""
        if reason:
            worker.discard()  # dead: close our end of its control socket
        # No successor here: the supervisor spawns it when this run exits (`ScriptSupervisor`). Spawned at
        # once, its TensorFlow import competed with the run's first epoch for the node's cores and ate the
        # gain (benchmarks/startup.py, docs/performance.md).
        return (worker if not reason else None), reason

    def wait_ready(self, timeout: float) -> bool:
        """True once the idle worker has imported its modules (False after `timeout` seconds, or with none)."""
        with self._lock:
            worker = self._idle
        return worker is not None and worker.settled.wait(timeout) and worker.ready.is_set()

    def close(self) -> None:
        """Service shutdown: end the idle worker; no more are spawned."""
        with self._lock:
            self._closed = True
            worker, self._idle = self._idle, None
        if worker is not None:
            worker.discard()
