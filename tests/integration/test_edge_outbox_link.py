"""A real EdgeService (in-process, a fake training script) behind a FlakyProxy, a real Mosquitto, and a
fake aggregator in the test that acknowledges updates and asks for missing chunks.

What must hold: an update cut off mid-upload ends accepted exactly once, with only the missing chunks
sent again under the same transfer id; no ack within the ack timeout republishes the manifest; a
restarted edge resends what its outbox holds instead of training that round again; a completed job is
not run again.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker import Assembler, BlobSender, CompletedTransfer, Inbound, Session, manifest_from_payload, transfer_key
from edge_trainer.engine import LaunchSpec
from edge_trainer.service import EdgeService
from runtime import ScriptExited, ScriptFrame
from schemas import (
    Channel,
    DatasetRef,
    JobPlan,
    ModelRef,
    PlannedWorker,
    ScriptRef,
    Topics,
    TransferOrigin,
    UpdateAck,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    decode_weights,
    encode_weights,
)
from tests.helpers.mqtt import SessionFactory, wait_until
from tests.helpers.nodes import edge_node_root
from tests.helpers.proxy import FlakyProxy

T = Topics()
JOB, UID, NODE = "link-job", "uid-link-1", "edge1"
PARAMS = 60_000  # float32: a 240 kB blob, 30 chunks of 8 KiB
CHUNK = 8192


def make_plan(exit_round: int = 1) -> JobPlan:
    return JobPlan(
        job=JOB,
        uid=UID,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=exit_round,
        participants=[NODE],
        model=ModelRef(name="m", url="/model", format="ckpt"),
        workers=[
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url="/data/1.txt", format="txt", node_name=NODE),
                script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
                parameters={},
            )
        ],
        chunk_size=CHUNK,
    )


def weights(kind: Any, round_: int, sender: str = NODE) -> bytes:
    return encode_weights(
        [np.full(PARAMS, float(round_), dtype=np.float32)],
        kind=kind,
        job=JOB,
        round_=round_,
        sender=sender,
        num_samples=8,
    )


# -- the fake training script ----------------------------------------------------------------------


@dataclass
class FakeScript:
    """Answers like FederatedLearning(...).train(...) would, through the service's event queue."""

    run_id: str
    put: Callable[[object], None]
    root: Path
    frames: list[tuple[str, int]] = field(default_factory=list)
    exited: bool = False

    def hello(self) -> None:
        self.put(
            ScriptFrame(JOB, self.run_id, WorkerFrame(type="hello", num_samples=8, has_body=True), weights("init", 0))
        )

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None:
        self.frames.append((frame.type, frame.round))
        if frame.type == "train":
            update = WorkerFrame(type="update", round=frame.round, num_samples=8, has_body=True)
            self.put(ScriptFrame(JOB, self.run_id, update, weights("update", frame.round)))
        elif frame.type == "finish":
            model = self.root / "model"
            model.mkdir(exist_ok=True)
            (model / "model.ckpt.index").write_bytes(b"ckpt")
            (model / "model.json").write_text(json.dumps({"job": JOB, "round": frame.round, "digest": "cd" * 32}))
            saved = WorkerFrame(
                type="saved", round=frame.round, model_path=str(model / "model.ckpt"), model_digest="cd" * 32
            )
            self.put(ScriptFrame(JOB, self.run_id, saved, None))
            self.stop()

    def stop(self, grace: float = 10.0) -> None:
        if not self.exited:
            self.exited = True
            self.put(ScriptExited(JOB, self.run_id, 0, ""))

    def wait(self, timeout: float | None) -> bool:
        return True

    def log_tail(self, lines: int = 20, max_chars: int = 2000) -> str:
        return ""


class FakeScriptService(EdgeService):
    """The real service, with the training script replaced by `FakeScript`."""

    scripts: list[FakeScript]

    def _launch(self, spec: LaunchSpec, run_id: str) -> Any:
        script = FakeScript(run_id, self._events.put, self.root.path)
        self.scripts.append(script)
        script.hello()
        return script


@dataclass
class RunningEdge:
    service: FakeScriptService
    stop: threading.Event
    thread: threading.Thread

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20.0)
        assert not self.thread.is_alive()


# -- the fake aggregator ---------------------------------------------------------------------------


class FakeAggregator:
    """Reassembles updates, acks each (missing chunks named), counts each (node, round) once, publishes globals."""

    def __init__(self, session: Session, inbox: queue.Queue[Inbound], plan: JobPlan) -> None:
        self.session, self.inbox, self.plan = session, inbox, plan
        self.asm = Assembler()
        self.counted: dict[tuple[str, int], str] = {}  # (node, round) -> transfer
        self.completions: list[tuple[str, int, str]] = []  # every completed, accepted transfer (first time)
        self.chunks: Counter[tuple[int, str, int]] = Counter()  # (round, transfer, index) -> times received
        self.manifests: Counter[tuple[int, str]] = Counter()
        self.acks: list[UpdateAck] = []
        self.drop_first: dict[int, set[int]] = {}  # round -> chunk indices lost the first time
        self.ignore_manifests: dict[int, int] = {}  # round -> manifests to leave unanswered
        self.on_chunk: Callable[[int, int], None] | None = None
        self.hold_global: set[int] = set()  # rounds whose global model is not published
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        session.subscribe(T.all_updates())
        session.barrier(5.0)
        session.publish(T.plan(JOB), plan.to_json(), retain=True).wait(5.0)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        assert not self.errors, self.errors

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                self._handle(msg)
            except BaseException as exc:  # surfaced by close()
                self.errors.append(exc)
            self.session.ack(msg)

    def _handle(self, msg: Inbound) -> None:
        parsed = T.parse(msg.topic)
        key = transfer_key(msg.topic)
        assert parsed.round is not None and parsed.transfer is not None
        r = parsed.round
        if parsed.channel is Channel.UPDATE_CHUNK:
            assert parsed.chunk is not None
            self.chunks[(r, parsed.transfer, parsed.chunk)] += 1
            if self.on_chunk is not None:
                self.on_chunk(r, parsed.chunk)
            if parsed.chunk in self.drop_first.get(r, set()) and self.chunks[(r, parsed.transfer, parsed.chunk)] == 1:
                return  # lost
            done = self.asm.add_chunk(key, parsed.chunk, msg.payload)
            if done is not None:
                self._complete(done)
        elif parsed.channel is Channel.UPDATE_MANIFEST:
            manifest = manifest_from_payload(msg.payload)
            self.manifests[(r, manifest.transfer)] += 1
            if self.ignore_manifests.get(r, 0) > 0:
                self.ignore_manifests[r] -= 1
                return
            if self.counted.get((manifest.sender, r)) == manifest.transfer:
                self._ack(manifest.sender, r, manifest.transfer, True, reason="already stored")
                return
            done = self.asm.add_manifest(key, manifest)
            if done is not None:
                self._complete(done)
                return
            missing = self.asm.missing(key)
            if missing:
                self._ack(manifest.sender, r, manifest.transfer, False, missing=missing)

    def _complete(self, done: CompletedTransfer) -> None:
        m = done.manifest
        if (m.sender, m.round) in self.counted:
            self._ack(m.sender, m.round, m.transfer, True, reason="already counted")
            return
        self.counted[(m.sender, m.round)] = m.transfer
        self.completions.append((m.sender, m.round, m.transfer))
        self._ack(m.sender, m.round, m.transfer, True)
        if m.round not in self.hold_global:
            self.publish_global(m.round, done.blob)

    def publish_global(self, round_: int, blob: bytes | None = None) -> None:
        arrays = decode_weights(blob)[1] if blob is not None else [np.full(PARAMS, float(round_), dtype=np.float32)]
        gblob = encode_weights(arrays, kind="global", job=JOB, round_=round_, sender="cloud0", num_samples=8)
        BlobSender(self.session, chunk_size=CHUNK).send(
            T.global_manifest(JOB, round_),
            lambda i: T.global_chunk(JOB, round_, i),
            gblob,
            TransferOrigin("global", JOB, UID, round_, "cloud0", 8, round_ == self.plan.exit_round),
            retain=True,
            timeout=10.0,
        )

    def _ack(
        self,
        node: str,
        round_: int,
        transfer: str,
        accepted: bool,
        *,
        reason: str = "",
        missing: list[int] | None = None,
    ) -> None:
        ack = UpdateAck(
            job=JOB,
            uid=UID,
            round=round_,
            node=node,
            transfer=transfer,
            accepted=accepted,
            reason=reason,
            missing=missing or [],
        )
        self.acks.append(ack)
        self.session.publish(T.ack(JOB, round_, node), ack.to_json()).wait(5.0)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def edge_root(tmp_path: Path) -> Path:
    return edge_node_root(tmp_path, NODE, script="print('never run')\n")


@pytest.fixture
def proxy(broker: Any) -> Iterator[FlakyProxy]:
    with FlakyProxy(broker.port, host=broker.host) as p:
        yield p


@pytest.fixture
def start_edge(
    edge_root: Path, proxy: FlakyProxy, mqtt_settings_factory: Callable[..., Any]
) -> Iterator[Callable[..., RunningEdge]]:
    running: list[RunningEdge] = []

    def start(ack_timeout: float = 30.0) -> RunningEdge:
        settings = mqtt_settings_factory(NODE, port=proxy.port, keepalive=5)
        service = FakeScriptService(
            NODE, edge_root, settings, ack_timeout=ack_timeout, stop_grace=1.0, upload_timeout=20.0
        )
        service.scripts = []
        stop = threading.Event()
        thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
        thread.start()
        edge = RunningEdge(service, stop, thread)
        running.append(edge)
        return edge

    yield start
    for edge in running:
        edge.stop.set()
    for edge in running:
        edge.thread.join(20.0)


def worker_status(session_factory: SessionFactory) -> Callable[[], WorkerStatus | None]:
    """The newest retained worker status of NODE, as a watcher sees it."""
    watcher, inbox = session_factory("watcher")
    watcher.subscribe(T.worker_status(JOB, NODE))
    latest: list[WorkerStatus | None] = [None]

    def current() -> WorkerStatus | None:
        while not inbox.empty():
            msg = inbox.get_nowait()
            watcher.ack(msg)
            latest[0] = WorkerStatus.model_validate_json(msg.payload) if msg.payload else None
        return latest[0]

    return current


def outbox_files(root: Path) -> list[str]:
    folder = root / "state" / JOB / "outbox"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_link_cut_mid_upload_ends_with_the_update_accepted_exactly_once(
    session_factory: SessionFactory, start_edge: Callable[..., RunningEdge], proxy: FlakyProxy, edge_root: Path
) -> None:
    """The link is cut after 10 chunks of the round-1 update and restored 2 s later; two chunks are lost on the
    way. The update ends accepted once, under one transfer id, the lost chunks sent again alone; the job completes
    and the outbox is empty."""
    session, inbox = session_factory("cloud0")
    agg = FakeAggregator(session, inbox, make_plan(exit_round=1))
    agg.drop_first = {1: {3, 25}}
    cut = threading.Event()
    status = worker_status(session_factory)
    edge = start_edge(ack_timeout=30.0)
    publish = edge.service._session.publish
    sent = Counter[str]()

    def cut_mid_upload(topic: str, payload: bytes, **kw: Any) -> Any:
        # Runs on the edge's uploader thread: the 10th chunk of the round-1 update cuts the link.
        if "/rounds/1/updates/" in topic and "/chunks/" in topic:
            sent["chunks"] += 1
            if sent["chunks"] == 10:
                cut.set()
                proxy.cut()
                threading.Timer(2.0, proxy.restore).start()
        return publish(topic, payload, **kw)

    edge.service._session.publish = cut_mid_upload  # type: ignore[method-assign]
    try:
        wait_until(lambda: (s := status()) is not None and s.state is WorkerState.COMPLETED, 60.0, "completed")
    finally:
        agg.close()
    assert cut.is_set()
    assert [(n, r) for n, r, _ in agg.completions] == [(NODE, 0), (NODE, 1)]  # each round counted once
    transfer = agg.counted[(NODE, 1)]
    assert {t for (r, t, _) in agg.chunks if r == 1} == {transfer}  # one transfer id for round 1
    requests = [a.missing for a in agg.acks if a.round == 1 and not a.accepted]
    assert requests and all(set(m) <= {3, 25} for m in requests)
    assert next(a.reason for a in agg.acks if a.round == 1 and a.accepted) == ""  # accepted once as new
    # Chunks sent again: the ones asked for, plus at most what paho had in flight at the cut.
    resent = {i for (r, _, i), n in agg.chunks.items() if r == 1 and n > 1}
    assert {i for m in requests for i in m} <= resent
    assert sent["chunks"] <= 30 + 16 + 2
    assert outbox_files(edge_root) == []
    assert [s.frames for s in edge.service.scripts] == [[("train", 1), ("finish", 1)]]


@pytest.mark.slow
def test_no_ack_within_the_timeout_republishes_the_manifest(
    session_factory: SessionFactory, start_edge: Callable[..., RunningEdge], edge_root: Path
) -> None:
    """The aggregator leaves the first manifest of round 1 unanswered: after ack_timeout the same manifest (same
    transfer) comes again, is acked, and the job completes."""
    session, inbox = session_factory("cloud0")
    agg = FakeAggregator(session, inbox, make_plan(exit_round=1))
    agg.ignore_manifests = {1: 1}
    status = worker_status(session_factory)
    start_edge(ack_timeout=1.0)
    try:
        wait_until(lambda: (s := status()) is not None and s.state is WorkerState.COMPLETED, 30.0, "completed")
    finally:
        agg.close()
    [(_r, transfer)] = [k for k in agg.manifests if k[0] == 1]
    assert agg.manifests[(1, transfer)] == 2
    assert [c[:2] for c in agg.completions] == [(NODE, 0), (NODE, 1)]
    assert outbox_files(edge_root) == []


@pytest.mark.slow
def test_restarted_edge_resends_its_outbox_instead_of_training_again_and_a_completed_job_is_not_rerun(
    session_factory: SessionFactory, start_edge: Callable[..., RunningEdge], edge_root: Path
) -> None:
    """The edge stops while its round-1 update waits for an ack. Restarted, it republishes that manifest (same
    transfer), skips the init and does not train round 1 again; the job completes. Started a third time, the
    completed job is not run at all."""
    session, inbox = session_factory("cloud0")
    agg = FakeAggregator(session, inbox, make_plan(exit_round=1))
    agg.ignore_manifests = {1: 1}
    status = worker_status(session_factory)
    first = start_edge(ack_timeout=30.0)
    try:
        wait_until(lambda: agg.manifests.total() >= 2, 30.0, "round-1 manifest sent")
        # No ack: the update stays Uploading (it is in the outbox, on the broker, not stored by the aggregator).
        uploading = (WorkerState.UPLOADING, 1)
        wait_until(lambda: (s := status()) is not None and (s.state, s.round) == uploading, 10.0, "uploading")
        first.close()
        [entry] = [n for n in outbox_files(edge_root) if n.endswith(".json")]
        transfer = entry.removesuffix(".json")
        assert agg.manifests[(1, transfer)] == 1

        second = start_edge(ack_timeout=30.0)
        wait_until(lambda: (s := status()) is not None and s.state is WorkerState.COMPLETED, 30.0, "completed")
        assert agg.manifests[(1, transfer)] == 2
        assert [c for c in agg.completions if c[1] == 1] == [(NODE, 1, transfer)]
        assert [s.frames for s in second.service.scripts] == [[("finish", 1)]]  # no ("train", 1)
        assert len([k for k in agg.manifests if k[0] == 0]) == 1  # the init went up once, before the restart
        assert outbox_files(edge_root) == []
        second.close()

        third = start_edge()
        time.sleep(1.0)
        assert third.service.scripts == []
        third.close()
    finally:
        agg.close()


@pytest.mark.slow
def test_offline_edge_keeps_handling_events_and_stores_its_update_first(
    edge_root: Path, mqtt_settings_factory: Callable[..., Any]
) -> None:
    """With no broker reachable, a plan, the script's hello and its status publishes are handled at once (the
    logic thread never waits for the network), and the init is in the outbox before anything is sent."""
    from tests.helpers.mqtt import free_port

    settings = mqtt_settings_factory(NODE, port=free_port())
    service = FakeScriptService(NODE, edge_root, settings, stop_grace=1.0)
    service.scripts = []
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        plan = make_plan()
        # No broker will ever answer: reaching Uploading at all shows nothing waited for the network.
        service.put(Inbound(T.plan(JOB), plan.to_json(), retain=True, dup=False, qos=0, mid=0))
        wait_until(
            lambda: len(service.scripts) == 1 and service._jobs[JOB].state is WorkerState.UPLOADING, 5.0, "uploading"
        )
        wait_until(lambda: len(outbox_files(edge_root)) == 2, 5.0, "init stored")
        # The uploader writes the entry, then tells the logic thread: the bookkeeping follows the files.
        wait_until(lambda: service._deliveries.rounds(JOB, UID) == {0}, 5.0, "init tracked as pending")
    finally:
        stop.set()
        thread.join(20.0)
    assert not thread.is_alive()
    assert len(outbox_files(edge_root)) == 2  # kept for the next start
