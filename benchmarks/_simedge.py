"""One simulated edge of the load generator (benchmarks/loadgen.py): its session, its blobs, its statuses;
the model layouts, the reproducible training times, a fleet's configuration and an edge's results.
`benchmarks/_simfleet.py` runs many of them (see its docstring for the protocol they speak)."""

from __future__ import annotations

import dataclasses
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from benchmarks._simnet import SimSession
from broker import Assembler, BlobSender, Inbound, MqttSettings, Session, manifest_from_payload, new_transfer_id
from schemas import (
    Evaluation,
    NodeState,
    NodeStatus,
    TransferManifest,
    TransferOrigin,
    WorkerState,
    WorkerStatus,
    manifest_for,
    read_header,
)

if TYPE_CHECKING:
    from benchmarks._simfleet import Fleet

Layout = list[tuple[str, tuple[int, ...]]]

# The example's Keras model (Sedna's network): 10 float32 tensors, 423,874 parameters (tests/unit/test_codec.py).
SEED_LAYOUT: Layout = [
    (f"{layer}/{part}", shape)
    for (layer, part), shape in zip(
        [
            (layer, part)
            for layer in ("conv2d", "conv2d_1", "dense", "dense_1", "dense_2")
            for part in ("kernel", "bias")
        ],
        [(3, 3, 3, 64), (64,), (3, 3, 64, 32), (32,), (6272, 64), (64,), (64, 32), (32,), (32, 2), (2,)],
        strict=True,
    )
]
# A tiny model (one chunk per transfer): what 1,000 edges send when the broker's message rate is the question.
TINY_LAYOUT: Layout = [("dense/kernel", (16, 8)), ("dense/bias", (8,))]


def training_seconds(seed: int, index: int, round_: int, low: float, high: float) -> float:
    """The simulated training time of edge `index` in `round_`: uniform in [low, high], reproducible."""
    return random.Random(f"{seed}/{index}/{round_}").uniform(low, high)


@dataclass(frozen=True)
class FleetConfig:
    """What one fleet process runs: its edges (name, index), the job, the model layout and the timing."""

    host: str
    port: int
    prefix: str
    job: str
    edges: list[tuple[str, int]]
    layout: Layout
    rounds: int
    train_low: float
    train_high: float
    seed: int = 0
    num_samples: int = 100
    evaluate: bool = True
    dispatchers: int = 2
    uploaders: int = 32
    upload_timeout: float = 300.0
    # Per edge (same order as `edges`): a provisioned identity's settings (password, TLS), as its node.yaml
    # gives them; None: plain, anonymous connections to host:port.
    settings: list[MqttSettings] | None = None
    # The edges' MQTT clients: "lean" drives every client of the process from one network thread
    # (benchmarks/_simnet.py), "session" gives each a `broker.Session` (paho's thread and a reconciler each).
    client: str = "lean"
    # Added to the process's niceness before anything runs (a diagnostic: the edges of a real fleet run on
    # their own machines, not on the aggregator's cores).
    nice: int = 0


@dataclass
class EdgeResult:
    """What one edge saw, with wall-clock times (time.time()) comparable with the round records."""

    name: str
    globals_at: dict[int, float] = field(default_factory=dict)  # global round -> complete at this edge
    uploaded_at: dict[int, float] = field(default_factory=dict)  # round -> the broker acked every chunk
    upload_started: dict[int, float] = field(default_factory=dict)
    acked_at: dict[int, float] = field(default_factory=dict)  # round -> the aggregator's accepted ack
    completed_at: float | None = None
    errors: list[str] = field(default_factory=list)
    resends: int = 0


class _Tagged:
    """A session's inbox: tags each message with its edge and hands it to its dispatcher's queue (never blocks).
    One edge's messages always go to the same dispatcher, so they are handled in the order they came, as the
    real edge's one logic thread handles them (a global model never overtakes the plan it belongs to)."""

    def __init__(self, edge: SimEdge, sink: queue.Queue[tuple[SimEdge, Inbound]]) -> None:
        self._edge = edge
        self._sink = sink

    def put_nowait(self, item: Inbound, /) -> None:
        self._sink.put_nowait((self._edge, item))


class Globals:
    """The global models as this process received them: each part's first copy goes into one shared
    `Assembler`, which checks every chunk and the whole blob once, whichever edge brought it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assembler: Assembler[int] = Assembler()
        self._manifests: dict[bytes, TransferManifest] = {}  # payload -> parsed (every edge gets the same bytes)
        self._seen: set[tuple[int, int]] = set()  # (round, chunk index or -1 for the manifest)
        self.done: dict[int, tuple[TransferManifest, str]] = {}  # round -> (manifest, the weights' digest)

    def manifest(self, payload: bytes) -> TransferManifest:
        with self._lock:
            cached = self._manifests.get(payload)
        if cached is None:
            cached = manifest_from_payload(payload)
            with self._lock:
                self._manifests[payload] = cached
        return cached

    def add(self, round_: int, index: int, payload: bytes, manifest: TransferManifest | None) -> None:
        with self._lock:
            if (round_, index) in self._seen or round_ in self.done:
                return
            self._seen.add((round_, index))
            if manifest is not None:
                done = self._assembler.add_manifest(round_, manifest)
            else:
                done = self._assembler.add_chunk(round_, index, payload)
            if done is not None:
                header, _ = read_header(done.blob)
                self.done[round_] = (done.manifest, header.sha256)


class SimEdge:
    """One simulated edge: its session, its blobs, what it knows of the job run."""

    def __init__(self, fleet: Fleet, name: str, index: int, blobs: dict[int, bytes]) -> None:
        self.fleet = fleet
        self.name = name
        self.index = index
        self.blobs = blobs  # round -> blob (0: init)
        self.manifests: dict[int, TransferManifest] = {}
        self.uid: str | None = None
        self.result = EdgeResult(name)
        self.parts: dict[int, set[int]] = {}  # global round -> parts received (-1: the manifest)
        self.newest_global = -1
        self.evaluation: Evaluation | None = None
        self.lock = threading.Lock()
        topics = fleet.topics
        offline = NodeStatus(node=name, role="edge", state=NodeState.OFFLINE).to_json()
        settings = fleet.settings.get(name) or MqttSettings(
            client_id=name, host=fleet.config.host, port=fleet.config.port
        )
        inbox = _Tagged(self, fleet.inboxes[index % len(fleet.inboxes)])
        will = (topics.node_status(name), offline)
        self.session: Session | SimSession = (
            SimSession(fleet.net, settings, inbox=inbox, will=will)
            if fleet.net is not None
            else Session(settings, inbox=inbox, will=will, topics=topics)
        )
        self.sender = BlobSender(self.session)
        # Each blob's chunk hashes, taken now, before any job (outside every figure), at the sender's chunk size.
        self.hashed = {
            r: manifest_for(blob, _origin(name, r), chunk_size=self.sender.chunk_size, transfer=new_transfer_id())
            for r, blob in blobs.items()
        }

    @property
    def lost(self) -> str | None:
        """Why this edge's connection ended other than by `stop` (a lean client's; a `Session` reconnects)."""
        return self.session.lost if isinstance(self.session, SimSession) else None

    def manifest(self, round_: int, origin: TransferOrigin, chunk_size: int) -> TransferManifest:
        """The manifest of this edge's blob of `round_` for `origin` (a new transfer id): from the hashes taken
        at the start when the plan's chunk size is the one they were taken at, else hashed now."""
        hashed = self.hashed.get(round_)
        # Every field of TransferOrigin is a manifest field of the same name (as `ChunkedBlob.manifest` uses it).
        fields = {f.name: getattr(origin, f.name) for f in dataclasses.fields(TransferOrigin)}
        if hashed is not None and hashed.chunk_size == chunk_size:
            return hashed.model_copy(update={**fields, "transfer": new_transfer_id()})
        return manifest_for(self.blobs[round_], origin, chunk_size=chunk_size, transfer=new_transfer_id())

    def status(self, state: WorkerState, round_: int, message: str, **extra: object) -> None:
        """Publish this edge's worker status (retained, QoS 1; not waited for, as the real edge does). Nothing
        after Completed: an upload thread's late "sent" must not overwrite it (the real edge's one logic
        thread orders them; here the lock does)."""
        with self.lock:
            if self.result.completed_at is not None:
                return
            if state is WorkerState.COMPLETED:
                self.result.completed_at = time.time()
            self._publish_status(state, round_, message, **extra)

    def _publish_status(self, state: WorkerState, round_: int, message: str, **extra: object) -> None:
        doc = WorkerStatus(
            job=self.fleet.config.job,
            uid=self.uid,
            node=self.name,
            state=state,
            round=round_,
            num_samples=self.fleet.config.num_samples,
            message=message,
            evaluation=self.evaluation,
            **extra,
        )
        self.session.publish(self.fleet.topics.worker_status(doc.job, self.name), doc.to_json(), retain=True)


# The local fit's metrics the real edge reports with its update (Keras' last epoch).
METRICS = {"loss": 0.41, "categorical_accuracy": 0.83}


def _origin(name: str, round_: int) -> TransferOrigin:
    """A placeholder origin for hashing a blob before its job's plan is known (the plan fills in the rest)."""
    return TransferOrigin(
        kind="init" if round_ == 0 else "update", job="pending", uid="pending", round=round_, sender=name, num_samples=1
    )
