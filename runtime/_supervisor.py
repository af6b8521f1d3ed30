"""Worker scripts as child processes: one supervisor for both node services.

A node service runs each job's script (the edge's training script, the cloud's aggregation script) as
``sys.executable <script>`` in its own session, its environment built by `script_environment`, its
stdout and stderr appended to the job's log, and its end of the worker channel in ``FL_WORKER_FD``.
The service never blocks on a child:

- a reader thread turns every frame the script sends into a `ScriptFrame` and, once the channel closes
  and the process has exited, one `ScriptExited` (with the last lines the script wrote in this run);
- a writer thread sends the frames the service queues (a weights body can fill the socket buffer
  while the script is busy);
- `ScriptProcess.end` sends a last frame (``stop`` or ``finish``), then SIGTERM to the script's whole
  process group after a grace period, then SIGKILL: a script never outlives its job for long, and
  processes it started (data loaders, TensorFlow helpers) go with it.

Both events go to the service's single event queue through `emit`. `ScriptSupervisor` keeps the
running scripts of one service by (job, run id) and stops them all when the service stops.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from structlog.typing import FilteringBoundLogger

from runtime._channel import WorkerChannel, spawn_channel_pair
from runtime._errors import ChannelClosed, ChannelError, ScriptStartError
from runtime._logging import get_logger
from runtime._script_env import script_environment
from runtime._warm import WarmPool, WarmWorker
from schemas import SchemaError, WorkerFrame, now

__all__ = ["ScriptEvent", "ScriptExited", "ScriptFrame", "ScriptLaunch", "ScriptProcess", "ScriptSupervisor"]

TAIL_LINES = 20
TAIL_CHARS = 2000
DEFAULT_STOP_GRACE = 10.0  # after the last frame, before SIGTERM
DEFAULT_TERM_GRACE = 5.0  # after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class _ScriptRun:
    """Which script: run `run_id` of job `job`'s script. `run_id` tells one run of a job from the next."""

    job: str
    run_id: str


@dataclass(frozen=True)
class ScriptLaunch(_ScriptRun):
    """Everything needed to start one run of a job's script."""

    script: Path
    cwd: Path
    variables: Mapping[str, str]  # the worker's own: Sedna's variables and the job's parameters
    log_path: Path


@dataclass(frozen=True)
class ScriptFrame(_ScriptRun):
    """A frame the script of (job, run_id) sent; `body` is its weights blob, if any."""

    frame: WorkerFrame
    body: bytes | None = None


@dataclass(frozen=True)
class ScriptExited(_ScriptRun):
    """The script of (job, run_id) exited: `code` (negative: killed by that signal), its last log lines."""

    code: int
    tail: str


ScriptEvent = ScriptFrame | ScriptExited
EndFrame = Literal["stop", "finish"]  # what `ScriptProcess.end` sends last: exit now, or the job is done


@dataclass(frozen=True)
class _Started:
    """What `ScriptProcess.start` started: the process, the service's end of its channel, and where this
    run's lines begin in the job's log (`log_tail` reads from there)."""

    proc: subprocess.Popen[bytes]
    channel: WorkerChannel
    log_offset: int


class ScriptProcess:
    """One running script. Create it with `ScriptProcess.start` (or `ScriptSupervisor.start`)."""

    def __init__(
        self,
        launch: ScriptLaunch,
        started: _Started,
        *,
        emit: Callable[[ScriptEvent], None],
        log: FilteringBoundLogger,
        term_grace: float,
    ) -> None:
        self.launch = launch
        self._proc = started.proc
        self._channel = started.channel
        self._log_offset = started.log_offset
        self._emit = emit
        self._log = log
        self._term_grace = term_grace
        self.warm = False  # True when the run went to a warm worker (`runtime.WarmPool`) instead of a new interpreter
        self._outbox: queue.SimpleQueue[tuple[WorkerFrame, bytes | None] | None] = queue.SimpleQueue()
        self._exited = threading.Event()
        self._end_lock = threading.Lock()
        self._ending = False
        self._reader = threading.Thread(target=self._read, name=f"script-reader-{launch.job}", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"script-writer-{launch.job}", daemon=True)

    @classmethod
    def start(
        cls,
        launch: ScriptLaunch,
        emit: Callable[[ScriptEvent], None],
        *,
        log: FilteringBoundLogger | None = None,
        term_grace: float = DEFAULT_TERM_GRACE,
        warm: WarmPool | None = None,
    ) -> ScriptProcess:
        """Start the script with its environment and channel, in `warm`'s idle worker when it can run it
        exactly as a cold start (else cold; the log says which and why); ScriptStartError saying why it
        cannot start."""
        log = (log or get_logger()).bind(job=launch.job, run=launch.run_id)
        try:
            launch.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = launch.log_path.open("ab")
        except OSError as exc:
            raise ScriptStartError(f"cannot open the script's log {launch.log_path}: {exc}") from exc
        with out:
            parent, child_fd = spawn_channel_pair()
            try:
                env = script_environment(launch.variables, fd=child_fd)
                worker, cold_why = warm.take(env) if warm is not None else (None, "")
                how = "warm start" if worker is not None else f"cold start: {cold_why}" if cold_why else "cold start"
                header = (
                    f"\n=== {now().isoformat()} job {launch.job} run {launch.run_id}: {launch.script} ({how}) ===\n"
                )
                out.write(header.encode())
                out.flush()
                offset = out.tell()
                proc = cls._warm_start(launch, env, worker, child_fd, out, log=log) if worker is not None else None
                if proc is None:
                    proc = cls._cold_start(launch, env, child_fd, out)
            except BaseException:
                parent.close()
                raise
            finally:
                parent.close_child_fd()  # the child holds its own copy; ours would hide the child's EOF
        script = cls(launch, _Started(proc, parent, offset), emit=emit, log=log, term_grace=term_grace)
        script.warm = worker is not None and proc is worker.proc
        script._reader.start()
        script._writer.start()
        log.info(
            "script started",
            pid=proc.pid,
            script=str(launch.script),
            log_file=str(launch.log_path),
            start="warm" if script.warm else "cold",
            **({"cold_reason": cold_why} if cold_why and not script.warm else {}),
        )
        return script

    @staticmethod
    def _cold_start(launch: ScriptLaunch, env: dict[str, str], child_fd: int, out: BinaryIO) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                [sys.executable, str(launch.script)],
                cwd=launch.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(child_fd,),
                # Its own session: a Ctrl-C on the service's terminal is for the service, which stops
                # its scripts cleanly; and the script's process group can be signalled as a whole.
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: an environment the OS cannot take
            raise ScriptStartError(f"cannot start {launch.script}: {exc}") from exc

    @staticmethod
    def _warm_start(
        launch: ScriptLaunch,
        env: dict[str, str],
        worker: WarmWorker,
        child_fd: int,
        out: BinaryIO,
        *,
        log: FilteringBoundLogger,
    ) -> subprocess.Popen[bytes] | None:
        # The warm worker is already its own session leader (spawned like a cold start), so pid-based
        # stop and kill of its process group work unchanged; None: it could not take the run, start cold.
        try:
            worker.launch(launch.script, launch.cwd, env, child_fd, out.fileno())
        except ScriptStartError as exc:
            log.warning("warm worker failed; starting the script cold", error=str(exc))
            out.write(f"(warm worker failed: {exc}; cold start)\n".encode())
            out.flush()
            return None
        proc: subprocess.Popen[bytes] = worker.proc
        return proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited and its exit event was emitted, else None."""
        return self._proc.returncode if self._exited.is_set() else None

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None:
        """Queue a frame for the script; never blocks. Frames to an exited script are dropped."""
        self._outbox.put((frame, body))

    def end(self, last: EndFrame = "stop", grace: float = DEFAULT_STOP_GRACE) -> None:
        """Send `last` (``stop``: exit now; ``finish``: the job is done), then SIGTERM the script's process
        group if it is still alive `grace` seconds later, SIGKILL after the term grace. Returns at once;
        the `ScriptExited` event follows when the process is gone. Only the first call counts."""
        with self._end_lock:
            if self._ending:
                return
            self._ending = True
        if self._exited.is_set():
            return
        self.send(WorkerFrame(type=last))
        threading.Thread(
            target=self._escalate, args=(grace,), name=f"script-reaper-{self.launch.job}", daemon=True
        ).start()

    def stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """`end("stop", grace)`: the job ended or the service stops."""
        self.end("stop", grace)

    def wait(self, timeout: float | None) -> bool:
        """True once the process has exited and its exit event was emitted."""
        return self._exited.wait(timeout)

    def log_tail(self, lines: int = TAIL_LINES, max_chars: int = TAIL_CHARS) -> str:
        """The last lines this run of the script wrote to its log (at most `max_chars` characters)."""
        path = self.launch.log_path
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(self._log_offset, size - 8 * max_chars))
                text = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(log file {path} unreadable: {exc})"
        tail = "\n".join(text.rstrip().splitlines()[-lines:])
        return tail[-max_chars:]

    # -- threads -----------------------------------------------------------------------------------

    def _read(self) -> None:
        job, run_id = self.launch.job, self.launch.run_id
        try:
            while True:
                frame, body = self._channel.recv()
                self._emit(ScriptFrame(job, run_id, frame, body))
        except ChannelClosed:
            pass  # EOF: the script exited (or closed its end)
        except (ChannelError, SchemaError, ValueError, OSError) as exc:
            self._report_bad_frame(exc)
        finally:
            code = self._proc.wait()
            self._outbox.put(None)
            self._channel.close()
            self._log.info("script exited", returncode=code)
            self._emit(ScriptExited(job, run_id, code, self.log_tail()))
            self._exited.set()

    def _report_bad_frame(self, exc: Exception) -> None:
        # A frame that does not parse: the script speaks another protocol (or is not ours).
        self._log.error("bad frame from the script", error=str(exc))
        message = f"the node service could not read a frame from the script: {exc}"
        self._emit(ScriptFrame(self.launch.job, self.launch.run_id, WorkerFrame(type="error", message=message)))
        self.stop(grace=0.0)

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
                self._log.debug("frame not delivered to the script", type=frame.type, error=str(exc))
                return

    def _escalate(self, grace: float) -> None:
        if self._wait_proc(grace):
            return
        self._log.warning("script did not stop in time; sending SIGTERM to its process group", grace=grace)
        self._signal(signal.SIGTERM)
        if self._wait_proc(self._term_grace):
            return
        self._log.warning("script ignored SIGTERM; sending SIGKILL to its process group")
        self._signal(signal.SIGKILL)

    def _wait_proc(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _signal(self, signum: int) -> None:
        # The script leads its own process group (start_new_session): signal the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signum)


class ScriptSupervisor:
    """The running scripts of one node service, by (job, run id)."""

    def __init__(
        self,
        emit: Callable[[ScriptEvent], None],
        *,
        stop_grace: float = DEFAULT_STOP_GRACE,
        term_grace: float = DEFAULT_TERM_GRACE,
        log: FilteringBoundLogger | None = None,
        warm: WarmPool | None = None,
    ) -> None:
        self._emit = emit
        self._warm = warm  # scripts start in its warm workers when they can (`ScriptProcess.start`)
        self.stop_grace = stop_grace
        self._term_grace = term_grace
        self._log = log or get_logger()
        self._scripts: dict[tuple[str, str], ScriptProcess] = {}
        self._lock = threading.Lock()

    def start(self, launch: ScriptLaunch) -> ScriptProcess:
        """Start `launch`'s script; ScriptStartError saying why it cannot start."""
        script = ScriptProcess.start(
            launch, self._on_event, log=self._log, term_grace=self._term_grace, warm=self._warm
        )
        with self._lock:
            self._scripts[(launch.job, launch.run_id)] = script
        return script

    def get(self, job: str, run_id: str) -> ScriptProcess | None:
        with self._lock:
            return self._scripts.get((job, run_id))

    def end(self, job: str, run_id: str, last: EndFrame = "stop") -> None:
        """Send `last` to the script of (job, run_id), then terminate it if it lingers (see `ScriptProcess.end`)."""
        script = self.get(job, run_id)
        if script is not None:
            script.end(last, self.stop_grace)

    def running(self) -> list[tuple[str, str]]:
        """(job, run id) of every script that has not exited yet."""
        with self._lock:
            return list(self._scripts)

    def stop_all(self, grace: float | None = None) -> list[ScriptProcess]:
        """Service shutdown: `stop` every script (SIGTERM after `grace`, default the stop grace, SIGKILL
        after the term grace), wait until they are gone; return those still running after that (none,
        unless the kernel cannot reap them)."""
        grace = self.stop_grace if grace is None else grace
        if self._warm is not None:
            self._warm.close()
        with self._lock:
            scripts = list(self._scripts.values())
        for script in scripts:
            script.end("stop", grace)
        deadline = time.monotonic() + grace + self._term_grace + 1.0
        left = [s for s in scripts if not s.wait(max(0.0, deadline - time.monotonic()))]
        for script in left:
            self._log.error("script still running at shutdown", job=script.launch.job, pid=script.pid)
        return left

    def _on_event(self, event: ScriptEvent) -> None:
        if isinstance(event, ScriptExited):
            with self._lock:
                self._scripts.pop((event.job, event.run_id), None)
            if self._warm is not None:
                self._warm.start()  # the next job's warm worker, now that this run no longer needs the cores
        self._emit(event)
