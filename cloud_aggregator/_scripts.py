"""Starting, signalling and reaping the jobs' aggregation scripts (Sedna's aggregation worker).

A script runs as ``sys.executable <scriptDir>/<scriptBootFile>`` with cwd = its scriptDir, both
resolved under the node root and required to be inside the node's code root (``--code-root`` /
FL_CODE_ROOT, default ``/code``: a folder under the root; `resolve_in_code_root`), and Sedna's environment (`script_environment`): JOB_NAME, NAMESPACE,
WORKER_NAME, NODE_NAME, MODEL_URL (resolved under the root), MODEL_NAME, MODEL_FORMAT,
PARTICIPANTS_COUNT, PRETRAINED_MODEL_URL when set, FL_NODE_ROOT, FL_WORKER_FD, and every parameter of
the aggregationWorker under its own key. It inherits the service's environment except the MQTT
settings (``FL_MQTT_*``): scripts never touch MQTT. Output goes to ``ROOT/logs/<job>/aggregation.log``.

One reader thread per script turns its frames into `ScriptFrame` events and its exit into one
`ScriptExited` event (with the tail of its log), handed to `emit`; the service's logic thread handles
them. Nothing here decides about the job.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import AggregatorError, WorkerScriptError
from cloud_aggregator.engine import ScriptRequest, ScriptSignal
from runtime import ChannelClosed, ChannelError, WorkerChannel, spawn_channel_pair
from schemas import NodeRoot, PathEscapeError, SchemaError, WorkerEnv, WorkerFrame, now

__all__ = [
    "CODE_ROOT_ENV",
    "DEFAULT_CODE_ROOT",
    "ScriptExited",
    "ScriptFrame",
    "ScriptSupervisor",
    "code_root_from_env",
    "resolve_in_code_root",
    "script_environment",
]

DEFAULT_CODE_ROOT = "/code"
CODE_ROOT_ENV = "FL_CODE_ROOT"

TAIL_LINES = 20
TAIL_BYTES = 4096


@dataclass(frozen=True)
class ScriptFrame:
    """A frame the aggregation script of (job, uid) sent."""

    job: str
    uid: str
    frame: WorkerFrame


@dataclass(frozen=True)
class ScriptExited:
    """The aggregation script of (job, uid) exited; `code` is its exit code (negative: killed by a signal)."""

    job: str
    uid: str
    code: int | None
    tail: str


ScriptEvent = ScriptFrame | ScriptExited


def script_environment(
    request: ScriptRequest,
    *,
    root: Path,
    node: str,
    fd: int,
    model_url: Path,
    pretrained_url: Path | None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The script's environment: the base (minus MQTT settings), its parameters, then Sedna's variables."""
    inherited = dict(os.environ if base is None else base)
    env = {k: v for k, v in inherited.items() if not k.startswith("FL_MQTT_")}
    env.update(request.worker.parameters)
    env.update(
        {
            WorkerEnv.JOB_NAME: request.job,
            WorkerEnv.NAMESPACE: request.namespace,
            WorkerEnv.WORKER_NAME: f"aggworker-{request.uid[:5]}",
            WorkerEnv.NODE_NAME: node,
            WorkerEnv.MODEL_URL: str(model_url),
            WorkerEnv.MODEL_NAME: request.model.name,
            WorkerEnv.MODEL_FORMAT: request.model.format,
            WorkerEnv.PARTICIPANTS_COUNT: str(request.participants_count),
            WorkerEnv.NODE_ROOT: str(root),
            WorkerEnv.WORKER_FD: str(fd),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if pretrained_url is not None:
        env[WorkerEnv.PRETRAINED_MODEL_URL] = str(pretrained_url)
    return env


def code_root_from_env() -> str:
    """The code root the environment sets (FL_CODE_ROOT; `fl-cloud-aggregator --code-root` sets it), or /code."""
    return os.environ.get(CODE_ROOT_ENV) or DEFAULT_CODE_ROOT


def resolve_in_code_root(root: NodeRoot, code_root: str, url: str, *, job: str, field: str) -> Path:
    """The real location of spec path `url` if it lies inside the code root; WorkerScriptError saying why not.

    ``..`` and symlinks are followed first, so a link in the code root that points elsewhere is refused.
    """
    try:
        return root.resolve_script(url, code_root, job=job, field=field)
    except PathEscapeError as exc:
        raise WorkerScriptError(str(exc)) from exc


def read_tail(path: Path, offset: int) -> str:
    """The last lines the script wrote to its log (from `offset`, where this run began)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            fh.seek(max(offset, end - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-TAIL_LINES:])


@dataclass
class _Script:
    job: str
    uid: str
    proc: subprocess.Popen[bytes]
    channel: WorkerChannel
    log_path: Path
    log_offset: int
    signalled_at: float | None = None
    terminated_at: float | None = None
    exited: threading.Event = field(default_factory=threading.Event)


class ScriptSupervisor:
    """Every running aggregation script of this service, keyed by (job, uid)."""

    def __init__(
        self,
        *,
        root: Path,
        node: str,
        emit: Callable[[ScriptEvent], None],
        clock: Callable[[], float],
        stop_grace: float = 10.0,
        code_root: str | None = None,
    ) -> None:
        self._root = root
        self.code_root = code_root if code_root is not None else code_root_from_env()
        self._node_root = NodeRoot(root)
        self._node = node
        self._emit = emit
        self._clock = clock
        self._grace = stop_grace
        self._scripts: dict[tuple[str, str], _Script] = {}
        self._lock = threading.Lock()
        self._log: FilteringBoundLogger = structlog.get_logger("cloud_aggregator.scripts")

    def start(self, request: ScriptRequest) -> None:
        """Start the job's aggregation script; raise an AggregatorError saying why it cannot start."""
        worker = request.worker
        field = "spec.aggregationWorker.workerSpec"
        script_dir = resolve_in_code_root(
            self._node_root, self.code_root, worker.script_dir, job=request.job, field=f"{field}.scriptDir"
        )
        script = resolve_in_code_root(
            self._node_root,
            self.code_root,
            posixpath.join(worker.script_dir, worker.script_boot_file),
            job=request.job,
            field=f"{field}.scriptBootFile",
        )
        if not script.is_file():
            raise WorkerScriptError(
                f"aggregation script {posixpath.join(worker.script_dir, worker.script_boot_file)} not found "
                f"(looked for {script} under the node root {self._root})"
            )
        model_url = self._node_root.resolve(request.model.url, f'Model "{request.model.name}" url')
        pretrained = request.pretrained_model
        pretrained_url = (
            self._node_root.resolve(pretrained.url, f'Model "{pretrained.name}" url') if pretrained else None
        )
        log_dir = self._root / "logs" / request.job
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_file = (log_dir / "aggregation.log").open("ab")
        except OSError as exc:
            raise WorkerScriptError(f"cannot open the script's log under {log_dir}: {exc}") from exc
        with log_file:
            log_file.write(f"=== {now().isoformat()} job {request.job} uid {request.uid}: {script}\n".encode())
            log_file.flush()
            offset = log_file.tell()
            parent, child_fd = spawn_channel_pair()
            env = script_environment(
                request,
                root=self._root,
                node=self._node,
                fd=child_fd,
                model_url=model_url,
                pretrained_url=pretrained_url,
            )
            try:
                proc = subprocess.Popen(
                    [sys.executable, str(script)],
                    cwd=script_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=(child_fd,),
                    start_new_session=True,  # a Ctrl-C to the service's terminal is for the service
                )
            except OSError as exc:
                parent.close()
                raise WorkerScriptError(f"cannot start {script}: {exc}") from exc
            finally:
                parent.close_child_fd()
        handle = _Script(request.job, request.uid, proc, parent, log_dir / "aggregation.log", offset)
        with self._lock:
            self._scripts[(request.job, request.uid)] = handle
        threading.Thread(target=self._read, args=(handle,), name=f"script-{request.job}", daemon=True).start()
        self._log.info("aggregation script started", job=request.job, uid=request.uid, pid=proc.pid, script=str(script))

    def signal(self, job: str, uid: str, signal: ScriptSignal) -> None:
        """Send `finish` or `stop`; a script still alive `stop_grace` seconds later is terminated."""
        with self._lock:
            handle = self._scripts.get((job, uid))
        if handle is None or handle.signalled_at is not None:
            return
        handle.signalled_at = self._clock()
        try:
            handle.channel.send(WorkerFrame(type=signal))
        except ChannelError as exc:
            self._log.info(
                "aggregation script gone before it could be signalled", job=job, signal=signal, error=str(exc)
            )

    def tick(self, now_s: float) -> None:
        """Terminate scripts that ignore their signal; kill those that ignore the termination."""
        with self._lock:
            handles = list(self._scripts.values())
        for handle in handles:
            if handle.signalled_at is None or handle.proc.poll() is not None:
                continue
            if handle.terminated_at is None and now_s >= handle.signalled_at + self._grace:
                self._log.warning(
                    "aggregation script ignores its signal; terminating it", job=handle.job, pid=handle.proc.pid
                )
                handle.terminated_at = now_s
                with contextlib.suppress(OSError):
                    handle.proc.terminate()
            elif handle.terminated_at is not None and now_s >= handle.terminated_at + self._grace:
                self._log.warning(
                    "aggregation script survives SIGTERM; killing it", job=handle.job, pid=handle.proc.pid
                )
                with contextlib.suppress(OSError):
                    handle.proc.kill()

    def stop_all(self, timeout: float) -> None:
        """Service shutdown: `stop` every script, wait up to `timeout`, then kill what is left."""
        with self._lock:
            handles = list(self._scripts.values())
        for handle in handles:
            self.signal(handle.job, handle.uid, "stop")
        deadline = self._clock() + timeout
        for handle in handles:
            try:
                handle.proc.wait(max(0.0, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                self._log.warning("aggregation script still running at shutdown; killing it", job=handle.job)
                with contextlib.suppress(OSError):
                    handle.proc.kill()
        for handle in handles:
            handle.exited.wait(max(0.0, deadline - self._clock()) + 1.0)

    def running(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._scripts)

    def _read(self, handle: _Script) -> None:
        log = self._log.bind(job=handle.job, uid=handle.uid)
        try:
            while True:
                try:
                    frame, _body = handle.channel.recv()
                except ChannelClosed:
                    break
                except (ChannelError, SchemaError, AggregatorError) as exc:
                    log.warning("unreadable frame from the aggregation script; channel closed", error=str(exc))
                    break
                self._emit(ScriptFrame(handle.job, handle.uid, frame))
            code = handle.proc.wait()
        finally:
            handle.channel.close()
            with self._lock:
                self._scripts.pop((handle.job, handle.uid), None)
        tail = read_tail(handle.log_path, handle.log_offset)
        log.info("aggregation script exited", code=code)
        self._emit(ScriptExited(handle.job, handle.uid, code, tail))
        handle.exited.set()
