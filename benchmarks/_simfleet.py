"""Simulated edges for the load generator (benchmarks/loadgen.py): each a real MQTT client speaking the wire
protocol of `fl-edge-trainer`, without a training script or TensorFlow.

One `Fleet` runs in one process and holds many edges. Each edge has its own `broker.Session` (client id =
node name, its retained `NodeStatus` with role ``edge`` and the offline last will), reads the job's plan,
publishes its worker statuses in the order the real edge does (Starting, Uploading, Ready, then per round
Training, Uploading, Waiting sent, Waiting stored; Saving, Completed), uploads its init (only the plan's init
source does; the others are Ready and wait for the round-0 model, with the real edge's init_wait fallback)
and one update per round with `broker.BlobSender` (``prepare`` then ``resend``, the edge uploader's path) and reads the
retained global models and its acks. "Training" is a sleep drawn by `training_seconds`, a pure function of
(seed, edge, round), so the orchestrating process knows every edge's training time without being told.

Threads, whatever the number of edges: paho's network thread and the reconciler of each session; a few
dispatcher threads that take every received message from one queue (the sessions' callbacks only put
there); one scheduler thread that wakes when a simulated training ends; a pool that runs the uploads
(`BlobSender` waits for the broker's acks). What a real edge does on disk (outbox, delivery record) and in
its script is left out: the benchmark is about the aggregator and the broker.

Costs kept off the critical path so that the load generator takes little of the CPU the aggregator and the
broker share with it: every weights blob is encoded before the job starts; the manifests (hashes) are made
when the plan names the run; a global model that every edge of the process receives is checked against its
manifest once (one shared `broker.Assembler`), each edge only counts its parts.
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np

from benchmarks._simedge import METRICS, EdgeResult, FleetConfig, Globals, SimEdge, training_seconds
from benchmarks._simnet import SimNet
from broker import BrokerError, Inbound, TransferError
from runtime import configure_logging
from schemas import (
    Channel,
    Evaluation,
    JobPlan,
    NodeState,
    NodeStatus,
    TopicError,
    Topics,
    TransferOrigin,
    UpdateAck,
    WeightsKind,
    WireError,
    WorkerState,
    encode_weights,
)


class Fleet:
    """Many `SimEdge`s in one process; `run` returns each edge's `EdgeResult` once `stop` is set."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.topics = Topics(config.prefix)
        self.inboxes: list[queue.Queue[tuple[SimEdge, Inbound]]] = [queue.Queue() for _ in range(config.dispatchers)]
        self.globals = Globals()
        self._plans: dict[bytes, JobPlan | None] = {}
        self._plans_lock = threading.Lock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timers_cv = threading.Condition()
        self._timer_seq = 0
        self._pool = ThreadPoolExecutor(max_workers=config.uploaders, thread_name_prefix="upload")
        self._stop = threading.Event()
        self.settings = {name: s for (name, _), s in zip(config.edges, config.settings or [], strict=False)}
        self.net = SimNet() if config.client == "lean" else None
        self.edges = [SimEdge(self, name, index, self._blobs(name, index)) for name, index in config.edges]

    # -- set-up ----------------------------------------------------------------------------------

    def _blobs(self, name: str, index: int) -> dict[int, bytes]:
        """This edge's init and update blobs, random but reproducible, encoded before anything starts."""
        rng = np.random.default_rng([self.config.seed, index])
        blobs = {}
        for r in range(self.config.rounds + 1):
            arrays = [(rng.standard_normal(shape) * 0.05).astype(np.float32) for _, shape in self.config.layout]
            kind: WeightsKind = "init" if r == 0 else "update"
            blobs[r] = encode_weights(
                arrays,
                kind=kind,
                job=self.config.job,
                round_=r,
                sender=name,
                num_samples=self.config.num_samples,
                names=[n for n, _ in self.config.layout],
            )
        return blobs

    def connect(self, timeout: float) -> None:
        """Start every session, wait until all are connected, then announce each edge (node status online)."""
        for edge in self.edges:
            edge.session.subscribe(self.topics.plan(self.config.job))
            edge.session.subscribe(self.topics.acks_for(edge.name))
            edge.session.subscribe(self.topics.job_globals(self.config.job))
            edge.session.start()
        deadline = time.monotonic() + timeout
        for edge in self.edges:
            if not edge.session.wait_connected(max(0.0, deadline - time.monotonic())):
                raise BrokerError(
                    f"simulated edge {edge.name} did not connect within {timeout} s"
                    + (f": {edge.lost}" if edge.lost else "")
                )
        results = []
        for edge in self.edges:
            online = NodeStatus(node=edge.name, role="edge", state=NodeState.ONLINE).to_json()
            results.append(edge.session.publish(self.topics.node_status(edge.name), online, retain=True))
        for result in results:
            result.wait(max(0.0, deadline - time.monotonic()))

    # -- the run ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> list[EdgeResult]:
        threads = [threading.Thread(target=self._dispatch, args=(inbox,), daemon=True) for inbox in self.inboxes]
        threads.append(threading.Thread(target=self._scheduler, daemon=True))
        for t in threads:
            t.start()
        stop.wait()
        self._stop.set()
        with self._timers_cv:
            self._timers_cv.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for edge in self.edges:
            offline = NodeStatus(node=edge.name, role="edge", state=NodeState.OFFLINE).to_json()
            edge.session.stop(timeout=2.0, final=(self.topics.node_status(edge.name), offline))
        if self.net is not None:
            self.net.close()
        for edge in self.edges:
            if edge.lost is not None:
                edge.result.errors.append(f"connection: {edge.lost}")
        return [edge.result for edge in self.edges]

    def done(self) -> bool:
        """Every edge reported Completed."""
        return all(edge.result.completed_at is not None for edge in self.edges)

    def _dispatch(self, inbox: queue.Queue[tuple[SimEdge, Inbound]]) -> None:
        while not self._stop.is_set():
            try:
                edge, msg = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._handle(edge, msg)
            except Exception as exc:  # a bug in the generator must show in the results, not hang the run
                edge.result.errors.append(f"{type(exc).__name__}: {exc} (topic {msg.topic})")
            finally:
                edge.session.ack(msg)

    def _handle(self, edge: SimEdge, msg: Inbound) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            return
        if parsed.channel is Channel.PLAN:
            self._on_plan(edge, msg.payload)
        elif parsed.channel is Channel.ACK:
            if msg.payload:
                self._on_ack(edge, UpdateAck.model_validate_json(msg.payload))
        elif parsed.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK) and msg.payload:
            if parsed.round is None or parsed.round <= edge.newest_global or edge.uid is None:
                return
            if parsed.channel is Channel.GLOBAL_MANIFEST:
                manifest = self.globals.manifest(msg.payload)
                if manifest.uid != edge.uid:
                    return
                self.globals.add(parsed.round, -1, msg.payload, manifest)
                index = -1
            else:
                index = parsed.chunk if parsed.chunk is not None else -2
                self.globals.add(parsed.round, index, msg.payload, None)
            self._on_global_part(edge, parsed.round, index)

    def _on_plan(self, edge: SimEdge, payload: bytes) -> None:
        if not payload:
            return
        with self._plans_lock:
            if payload not in self._plans:
                self._plans[payload] = JobPlan.model_validate_json(payload)
            plan = self._plans[payload]
        if plan is None or edge.name not in plan.participants or edge.uid == plan.uid:
            return
        with edge.lock:
            edge.uid = plan.uid
            edge.sender.chunk_size = plan.chunk_size
            # The manifests from the chunk hashes taken before the job started (`SimEdge.hashed`): a real
            # edge hashes each blob as it produces it, on its own machine; here all edges share the
            # aggregator's two cores, and hashing 100 x 4 blobs at the plan put all of it into round 1.
            size = max(1, min(plan.chunk_size, edge.session.max_payload))
            for r in edge.blobs:
                origin = TransferOrigin(
                    kind="init" if r == 0 else "update",
                    job=plan.job,
                    uid=plan.uid,
                    round=r,
                    sender=edge.name,
                    num_samples=self.config.num_samples,
                )
                edge.manifests[r] = edge.manifest(r, origin, size)
        edge.status(WorkerState.STARTING, 0, "starting the training script")
        if plan.waits_for_init(edge.name):
            # As the real edge (issue 12): only the plan's init source uploads its init; the others wait
            # for the round-0 model and upload theirs after init_wait only if it did not come.
            edge.status(WorkerState.READY, 0, f"waiting for the round-0 model from {plan.init_source}")
            self._after(plan.init_wait, lambda: self._init_fallback(edge, plan))
            return
        edge.status(WorkerState.UPLOADING, 0, "uploading the initial weights")
        self._pool.submit(self._upload, edge, 0)

    def _init_fallback(self, edge: SimEdge, plan: JobPlan) -> None:
        """The init wait ran out: upload this edge's init unless a global model came (or the run changed)."""
        with edge.lock:
            if edge.uid != plan.uid or edge.newest_global >= 0:
                return
        edge.status(
            WorkerState.UPLOADING,
            0,
            f"uploading the initial weights (no round-0 model from {plan.init_source} within {plan.init_wait:g} s)",
        )
        self._pool.submit(self._upload, edge, 0)

    def _on_global_part(self, edge: SimEdge, round_: int, index: int) -> None:
        with edge.lock:
            parts = edge.parts.setdefault(round_, set())
            parts.add(index)
            done = self.globals.done.get(round_)
            if done is None or round_ <= edge.newest_global or len(parts) < done[0].chunks + 1:
                return
            edge.newest_global = round_
            edge.parts = {r: p for r, p in edge.parts.items() if r > round_}
        manifest, digest = done
        edge.result.globals_at[round_] = time.time()
        if manifest.final:
            edge.status(WorkerState.SAVING, round_, f"saving the final model of round {round_}")
            edge.status(
                WorkerState.COMPLETED,
                round_,
                "final model saved at /model/versions/sim (simulated)",
                model_path="/model/versions/sim",
                model_digest=digest,
            )
            return
        if round_ >= 1 and self.config.evaluate:
            # The real script scores each global model on its held-out data while it trains the next round.
            edge.evaluation = Evaluation.of(round_, [[40, 5], [3, 52]], loss=0.3)
        nxt = round_ + 1
        edge.status(WorkerState.TRAINING, nxt, f"training round {nxt}")
        delay = training_seconds(self.config.seed, edge.index, nxt, self.config.train_low, self.config.train_high)

        def upload() -> None:
            self._pool.submit(self._upload, edge, nxt)

        self._after(delay, upload)

    def _on_ack(self, edge: SimEdge, ack: UpdateAck) -> None:
        if ack.uid != edge.uid:
            return
        manifest = edge.manifests.get(ack.round)
        if manifest is None or manifest.transfer != ack.transfer:
            return
        if ack.accepted:
            if ack.round not in edge.result.acked_at:
                edge.result.acked_at[ack.round] = time.time()
                if ack.round == 0:
                    edge.status(WorkerState.READY, 0, "waiting for the first global model")
                else:
                    edge.status(
                        WorkerState.WAITING,
                        ack.round,
                        f"update of round {ack.round} stored by the aggregator; waiting for the round to close",
                        metrics=METRICS,
                        metrics_round=ack.round,
                    )
        elif ack.missing:
            edge.result.resends += 1
            self._pool.submit(self._upload, edge, ack.round, ack.missing)
        else:
            edge.result.errors.append(f"round {ack.round} refused: {ack.reason}")

    def _upload(self, edge: SimEdge, round_: int, indices: list[int] | None = None) -> None:
        if self._stop.is_set():
            return
        manifest = edge.manifests[round_]
        job, name = self.config.job, edge.name
        if indices is None and round_ >= 1:
            edge.status(WorkerState.UPLOADING, round_, f"uploading the update of round {round_}")
        edge.result.upload_started.setdefault(round_, time.time())
        try:
            if indices is None:
                # Its chunks were hashed before the job (`SimEdge.hashed`): a real edge's `prepare` hashed them
                # moments before too, on its own CPU; here that CPU is the one the aggregator and broker use.
                edge.sender.adopt(edge.blobs[round_], manifest)
            edge.sender.resend(
                self.topics.update_manifest(job, round_, name, manifest.transfer),
                lambda i: self.topics.update_chunk(job, round_, name, manifest.transfer, i),
                edge.blobs[round_],
                manifest,
                indices,
                timeout=self.config.upload_timeout,
            )
        except (BrokerError, TransferError, WireError) as exc:
            edge.result.errors.append(f"upload of round {round_}: {exc}")
            return
        # As the edge: no status between the broker's acknowledgement and the aggregator's (Waiting comes with
        # the ack, "stored by the aggregator").
        edge.result.uploaded_at.setdefault(round_, time.time())

    # -- the timer -------------------------------------------------------------------------------

    def _after(self, delay: float, action: Callable[[], None]) -> None:
        with self._timers_cv:
            self._timer_seq += 1
            heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_seq, action))
            self._timers_cv.notify()

    def _scheduler(self) -> None:
        while not self._stop.is_set():
            with self._timers_cv:
                now = time.monotonic()
                due = []
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
                if not due:
                    wait = self._timers[0][0] - now if self._timers else 0.5
                    self._timers_cv.wait(min(wait, 0.5))
                    continue
            for action in due:
                action()


def fleet_process(config: FleetConfig, ready: Any, stop: Any, results: Any) -> None:
    """A fleet as a child process (multiprocessing, spawn): connect, say ``ready`` (or the error), run until
    `stop` is set, put the edges' results (plain dicts) and the process's CPU seconds on `results`."""
    configure_logging(node="loadgen", role="cli", level="WARNING")
    if config.nice:
        os.nice(config.nice)  # before any thread starts: the threads inherit it
    try:
        fleet = Fleet(config)
        fleet.connect(timeout=120.0)
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    ready.put("")
    before = os.times()  # the blobs are built: count only what the job costs
    local = threading.Event()

    def relay() -> None:
        stop.wait()
        local.set()

    watcher = threading.Thread(target=relay, daemon=True)
    watcher.start()
    edges = fleet.run(local)
    after = os.times()
    results.put({"edges": [asdict(e) for e in edges], "cpu": after.user + after.system - before.user - before.system})
