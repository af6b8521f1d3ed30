"""Following a job from the outside, for fault tests: wait on status changes instead of sleeping.

`JobWatcher` subscribes to a job's status, its workers' statuses, node presence, update acks and the job's
event stream, keeps the newest of each and every ack and event, and lets a test block until a predicate
over them holds (bounded). Wait on `events` for an event: the stream carries each one at once, while the
job status publishes a few times a round and keeps only the newest MAX_EVENTS.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError

from broker import Inbound, MqttSettings, Session
from schemas import (
    Channel,
    JobEvent,
    JobStatus,
    Kind,
    NodeState,
    NodeStatus,
    TopicError,
    Topics,
    UpdateAck,
    WorkerStatus,
)


class JobWatcher:
    """The newest job status, worker statuses and node presences of one job, plus every ack seen."""

    def __init__(self, settings: MqttSettings, topics: Topics, job: str) -> None:
        self.job = job
        self.topics = topics
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._session = Session(settings, inbox=self._inbox, topics=topics)
        job_levels = f"{topics.prefix}/{Kind.JOB.value}/{job}"
        for flt in (
            topics.status(Kind.JOB, job),
            f"{job_levels}/workers/+/status",
            topics.all_node_statuses(),
            f"{job_levels}/rounds/+/acks/+",
            topics.events(job),
        ):
            self._session.subscribe(flt)
        self.status: JobStatus | None = None
        self.history: list[JobStatus] = []
        self.workers: dict[str, WorkerStatus] = {}
        self.worker_history: list[WorkerStatus] = []
        self.presence: dict[str, NodeState] = {}
        self.acks: list[UpdateAck] = []
        self.events: list[JobEvent] = []  # every event of the stream since the watcher connected
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name=f"watch-{job}", daemon=True)

    def __enter__(self) -> JobWatcher:
        self._session.start()
        if not self._session.wait_connected(10.0):
            self._session.stop()
            raise TimeoutError("the job watcher could not connect")
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._session.stop(timeout=2.0)

    # -- waiting -------------------------------------------------------------------------------------

    def wait(self, predicate: Callable[[JobWatcher], bool], timeout: float, what: str) -> None:
        """Block until `predicate(self)` holds; AssertionError naming `what` and the last status after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"not {what} within {timeout:g} s; last status: {self.describe()}")
                self._cond.wait(min(remaining, 0.5))

    def wait_worker(self, node: str, state: str, round_: int | None, timeout: float) -> None:
        """Until the worker status of `node` says `state` (e.g. "Uploading") for `round_` (any round if None)."""

        def ok(w: JobWatcher) -> bool:
            ws = w.workers.get(node)
            return ws is not None and ws.state.value == state and (round_ is None or ws.round == round_)

        self.wait(ok, timeout, f"{node} {state}" + (f" round {round_}" if round_ is not None else ""))

    def wait_presence(self, node: str, state: NodeState, timeout: float) -> None:
        self.wait(lambda w: w.presence.get(node) is state, timeout, f"node {node} {state.value}")

    def wait_rounds(self, count: int, timeout: float) -> None:
        """Until the job status records `count` closed rounds."""
        self.wait(lambda w: w.status is not None and len(w.status.rounds) >= count, timeout, f"{count} rounds closed")

    def wait_finished(self, timeout: float) -> JobStatus:
        self.wait(lambda w: w.status is not None and w.status.phase.finished, timeout, "job finished")
        assert self.status is not None
        return self.status

    def describe(self) -> str:
        s = self.status
        if s is None:
            return "no job status yet"
        workers = ", ".join(f"{w.node}={w.state.value}@{w.round}" for w in s.workers)
        events = "; ".join(f"{e.type} {e.reason}: {e.message}" for e in (self.events or s.events)[-8:])
        return (
            f"phase {s.phase.value}, round {s.current_round}/{s.exit_round}, rounds closed "
            f"{[r.round for r in s.rounds]}, waiting for {s.waiting_for}, workers [{workers}], "
            f"message {s.message!r}, last events: {events}"
        )

    # -- the inbox -----------------------------------------------------------------------------------

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._record(msg)
            finally:
                self._session.ack(msg)

    def _record(self, msg: Inbound) -> None:
        if not msg.payload:
            return
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            return
        try:
            with self._cond:
                if parsed.channel is Channel.STATUS:
                    status = JobStatus.model_validate_json(msg.payload)
                    self.status = status
                    self.history.append(status)
                elif parsed.channel is Channel.WORKER_STATUS:
                    worker = WorkerStatus.model_validate_json(msg.payload)
                    self.workers[worker.node] = worker
                    self.worker_history.append(worker)
                elif parsed.channel is Channel.NODE_STATUS:
                    node = NodeStatus.model_validate_json(msg.payload)
                    self.presence[node.node] = node.state
                elif parsed.channel is Channel.ACK:
                    self.acks.append(UpdateAck.model_validate_json(msg.payload))
                elif parsed.channel is Channel.EVENTS:
                    self.events.append(JobEvent.model_validate_json(msg.payload))
                self._cond.notify_all()
        except ValidationError:
            return


def processes_under(path: Path) -> list[tuple[int, str]]:
    """Live processes whose command line mentions `path` (a test's tmp_path), found by scanning /proc."""
    needle = str(path.resolve())
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = next(
                (line.split()[1] for line in (entry / "status").read_text().splitlines() if line.startswith("State:")),
                "",
            )
        except (OSError, StopIteration, IndexError):
            continue
        if needle in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def wait_no_processes_under(path: Path, timeout: float) -> None:
    """Until no process mentions `path`; AssertionError listing the leftovers after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_under(path)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left behind after {timeout:g} s: {left}")
        time.sleep(0.1)
