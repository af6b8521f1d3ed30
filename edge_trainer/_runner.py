"""One job's training script as a child process, and the threads that talk to it over the worker channel.

The node service never blocks on a child: a reader thread turns every frame the script sends into a
`WorkerFrameEvent` and, once the channel closes and the process has exited, a `WorkerExitEvent`; a
writer thread sends the frames the service queues (a 1.7 MB weights body can fill the socket buffer
while the script is busy). Both events go to the service's single event queue through `emit`.

The script runs as ``sys.executable <script>`` in its own session (so a Ctrl-C on the service's
terminal reaches the service, which stops its children cleanly), with stdout and stderr appended to
``ROOT/logs/<job>/worker.log``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from edge_trainer._launch import LaunchSpec
from runtime import ChannelClosed, ChannelError, WorkerChannel, get_logger, spawn_channel_pair
from schemas import SchemaError, WorkerEnv, WorkerFrame, now

__all__ = ["WorkerExitEvent", "WorkerFrameEvent", "WorkerProcess"]

# The node service's own broker settings (and credentials) never reach a job's script.
_PRIVATE_ENV_PREFIXES = ("FL_MQTT_",)
# After SIGTERM, how long a script gets before SIGKILL.
_TERM_GRACE = 5.0
_TAIL_LINES = 20
_TAIL_CHARS = 2000


@dataclass(frozen=True)
class WorkerFrameEvent:
    """A frame the training script of run `run_id` sent."""

    job: str
    run_id: str
    frame: WorkerFrame
    body: bytes | None


@dataclass(frozen=True)
class WorkerExitEvent:
    """The training script of run `run_id` exited (negative `returncode`: killed by that signal)."""

    job: str
    run_id: str
    returncode: int


def _source_checkout() -> str | None:
    """The folder holding this `edge_trainer` when it is not an installed package (a source checkout).

    The script runs in its own folder, from which the checkout is not importable; it must import the
    same `edge_trainer` (and `schemas`, `broker`) as the service that runs it. Appended to PYTHONPATH,
    so the script's own modules and the user's PYTHONPATH still come first.
    """
    folder = Path(__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib")) if p}
    return None if folder in installed else str(folder)


class WorkerProcess:
    """A running training script. Create with `WorkerProcess.start`."""

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        run_id: str,
        proc: subprocess.Popen[bytes],
        channel: WorkerChannel,
        emit: Callable[[Any], None],
        log: FilteringBoundLogger,
    ) -> None:
        self.spec = spec
        self.run_id = run_id
        self._proc = proc
        self._channel = channel
        self._emit = emit
        self._log = log
        self._outbox: queue.SimpleQueue[tuple[WorkerFrame, bytes | None] | None] = queue.SimpleQueue()
        self._exited = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name=f"worker-reader-{spec.job}", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"worker-writer-{spec.job}", daemon=True)

    @classmethod
    def start(
        cls, spec: LaunchSpec, run_id: str, emit: Callable[[Any], None], log: FilteringBoundLogger | None = None
    ) -> WorkerProcess:
        """Start the script with its environment and channel; raise OSError if it cannot be started."""
        log = (log or get_logger()).bind(job=spec.job, run=run_id)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent, child_fd = spawn_channel_pair()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
            env.update(spec.env)
            env[WorkerEnv.WORKER_FD] = str(child_fd)
            env.setdefault("PYTHONUNBUFFERED", "1")  # the log tail in a failure message must be current
            source = _source_checkout()
            if source is not None:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), source) if p)
            with spec.log_path.open("ab") as out:
                out.write(f"\n=== {now().isoformat()} starting {spec.script} (run {run_id}) ===\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    [sys.executable, str(spec.script)],
                    cwd=spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(child_fd,),
                    start_new_session=True,
                )
        except BaseException:
            parent.close()
            raise
        finally:
            parent.close_child_fd()  # the child holds its own copy; ours would hide the child's EOF
        worker = cls(spec, run_id=run_id, proc=proc, channel=parent, emit=emit, log=log)
        worker._reader.start()
        worker._writer.start()
        log.info("training script started", pid=proc.pid, script=str(spec.script), log_file=str(spec.log_path))
        return worker

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._exited.is_set() else None

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None:
        """Queue a frame for the script; never blocks. Frames to an exited script are dropped."""
        self._outbox.put((frame, body))

    def stop(self, grace: float = 10.0) -> None:
        """Ask the script to stop (`stop` frame); SIGTERM after `grace` seconds, SIGKILL 5 s later.

        Returns at once; the `WorkerExitEvent` follows when the process is gone. Idempotent.
        """
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        if self._exited.is_set():
            return
        self.send(WorkerFrame(type="stop"))
        threading.Thread(
            target=self._escalate, args=(grace,), name=f"worker-reaper-{self.spec.job}", daemon=True
        ).start()

    def wait(self, timeout: float | None) -> bool:
        """True once the process has exited and its exit event was emitted."""
        return self._exited.wait(timeout)

    def log_tail(self, lines: int = _TAIL_LINES, max_chars: int = _TAIL_CHARS) -> str:
        """The last lines of the script's log file (at most `max_chars` characters)."""
        try:
            with self.spec.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 8 * max_chars))
                text = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(log file {self.spec.log_path} unreadable: {exc})"
        tail = "\n".join(text.rstrip().splitlines()[-lines:])
        return tail[-max_chars:]

    # -- threads -----------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                frame, body = self._channel.recv()
                self._emit(WorkerFrameEvent(self.spec.job, self.run_id, frame, body))
        except ChannelClosed:
            pass
        except (ChannelError, SchemaError, ValueError, OSError) as exc:
            # A frame that does not parse: the script speaks another protocol (or is not ours).
            self._log.error("bad frame from the training script", error=str(exc))
            message = f"the node service could not read a frame from the training script: {exc}"
            self._emit(WorkerFrameEvent(self.spec.job, self.run_id, WorkerFrame(type="error", message=message), None))
            self.stop(grace=0.0)
        finally:
            returncode = self._proc.wait()
            self._outbox.put(None)
            self._channel.close()
            self._log.info("training script exited", returncode=returncode)
            self._emit(WorkerExitEvent(self.spec.job, self.run_id, returncode))
            self._exited.set()

    def _write(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            frame, body = item
            try:
                self._channel.send(frame, body)
            except (ChannelError, OSError) as exc:
                # The script is gone or going; its exit event tells the rest.
                self._log.debug("frame not delivered to the training script", type=frame.type, error=str(exc))
                return

    def _escalate(self, grace: float) -> None:
        if self._proc_wait(grace):
            return
        self._log.warning("training script did not stop in time; sending SIGTERM", grace=grace)
        self._signal(signal.SIGTERM)
        if self._proc_wait(_TERM_GRACE):
            return
        self._log.warning("training script ignored SIGTERM; sending SIGKILL")
        self._signal(signal.SIGKILL)

    def _proc_wait(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _signal(self, signum: int) -> None:
        # The script leads its own process group (start_new_session): signal the group, so processes
        # it started (data loaders, TF helpers) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)
