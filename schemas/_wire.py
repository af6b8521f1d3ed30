"""Wire messages between the services (JSON on MQTT) and between a service and its worker script.

MQTT:
- `JobPlan` (``.../plan``, retained): the job as the controller validated and resolved it. Edges act
  on the plan, never on the raw spec, so a job that fails validation never starts training.
- `TransferManifest` (``.../manifest``): describes one chunked transfer of a weights blob; built by
  `manifest_for` from the blob and its `TransferOrigin` (whose blob, for which job run and round), or by
  `ChunkedBlob` for a sender that hashes its chunks while it publishes them.
- `UpdateAck` (``.../acks/<node>``): the aggregator's receipt for an update.

Worker channel (a local socket pair between a node service and the script it runs):
- `WorkerFrame`: a JSON header, optionally followed by a weights blob.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from schemas._parameters import DEFAULT_INIT_WAIT, MAX_EXIT_ROUND, MAX_INIT_WAIT
from schemas._status import Evaluation, now
from schemas._tensors import MAX_NUM_SAMPLES, WeightsKind, encode_weights

_SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PLAN_API = "fl.edge.io/v1"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class ScriptRef(_Wire):
    dir: str
    boot_file: str
    framework_type: str
    framework_version: str | None = None


class DatasetRef(_Wire):
    name: str
    url: str
    format: str
    node_name: str


class ModelRef(_Wire):
    name: str
    url: str
    format: str


class PlannedWorker(_Wire):
    node: str
    dataset: DatasetRef
    script: ScriptRef
    parameters: dict[str, str]


class JobPlan(_Wire):
    """Everything an edge needs to run its part of a job, fixed when the job started."""

    api_version: Literal["fl.edge.io/v1"] = "fl.edge.io/v1"
    job: str
    namespace: str = "default"
    uid: str
    created_at: datetime = Field(default_factory=now)
    aggregation_node: str
    aggregation: str
    exit_round: int = Field(ge=1, le=MAX_EXIT_ROUND)  # the bound the spec's exit_round has
    participants: list[str]
    model: ModelRef
    pretrained_model: ModelRef | None = None
    workers: list[PlannedWorker]
    chunk_size: int = Field(ge=1024)
    # The one training worker asked for the initial weights (the round-0 model), as Flower asks one client
    # for its parameters: the others wait `init_wait` seconds for the round-0 model before they upload
    # their own init (a fallback). None (older plans, ``init_wait: 0``): every edge uploads its init.
    init_source: str | None = None
    init_wait: float = Field(default=DEFAULT_INIT_WAIT, ge=0, le=MAX_INIT_WAIT)

    @model_validator(mode="after")
    def _init_source_is_a_worker(self) -> JobPlan:
        if self.init_source is not None and self.worker(self.init_source) is None:
            raise ValueError(f"initSource {self.init_source!r} is not a training worker of the plan")
        return self

    def worker(self, node: str) -> PlannedWorker | None:
        return next((w for w in self.workers if w.node == node), None)

    def to_json(self) -> bytes:
        """Without an init source (``init_wait: 0``) `init_wait` means nothing and is left out, so the plan
        has only the fields it had before issue 12: edges older than `init_source` refuse fields they do not
        know, and this is how an aggregator runs jobs with them during an upgrade."""
        exclude = {"init_wait"} if self.init_source is None else None
        return self.model_dump_json(by_alias=True, exclude_none=True, exclude=exclude).encode()

    def waits_for_init(self, node: str) -> bool:
        """Whether `node` waits (`init_wait` seconds) for the round-0 model of another worker, the plan's
        `init_source`, before it uploads its own initial weights; False: it uploads them at once."""
        return self.init_source is not None and self.init_source != node and self.init_wait > 0

    def site_of(self, node: str) -> str | None:
        """The site whose aggregator takes `node`'s updates in a hierarchical job (the plan gives every
        training worker ``hierarchical: "true"`` and its own ``site``); None for a flat job or another node."""
        worker = self.worker(node)
        if worker is None:
            return None
        params = {k.lower(): v for k, v in worker.parameters.items()}
        if params.get("hierarchical", "").strip().lower() != "true":
            return None
        return params.get("site", "").strip() or None


class TransferManifest(_Wire):
    """One chunked transfer. Chunk i carries bytes [i*chunkSize, (i+1)*chunkSize) of the blob."""

    transfer: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    kind: WeightsKind
    job: str
    uid: str
    round: int = Field(ge=0)
    sender: str
    total_bytes: int = Field(ge=1)
    chunk_size: int = Field(ge=1)
    chunks: int = Field(ge=1)
    sha256: _SHA256
    chunk_sha256: list[_SHA256]
    num_samples: int = Field(ge=0, le=MAX_NUM_SAMPLES)
    final: bool = False
    created_at: datetime = Field(default_factory=now)


@dataclass(frozen=True)
class TransferOrigin:
    """Whose weights blob a transfer carries and what it is for: what every manifest of it repeats."""

    kind: WeightsKind
    job: str
    uid: str
    round: int
    sender: str
    num_samples: int
    final: bool = False


def manifest_for(
    blob: bytes | bytearray | memoryview, origin: TransferOrigin, *, chunk_size: int, transfer: str
) -> TransferManifest:
    """The manifest of `blob` cut into chunks of `chunk_size` bytes: sizes, the blob's SHA-256 and each chunk's.

    Raises ValueError for an empty blob or a chunk size below 1 (and pydantic's ValidationError for fields
    out of range)."""
    chunked = ChunkedBlob(blob, chunk_size)
    for _ in chunked.pieces():
        pass
    return chunked.manifest(origin, transfer)


class ChunkedBlob:
    """A blob cut into chunks of `chunk_size` bytes (memoryviews, never copied), hashed in one pass.

    `pieces()` yields (index, chunk) and hashes each chunk (its own SHA-256 and the blob's) when the caller
    asks for the next one: a sender publishes a chunk first and it is hashed while paho's thread writes it
    (`broker.BlobSender.send`). Once every piece was taken, `manifest()` is the transfer's manifest, with no
    second pass over the blob. ValueError for an empty blob or a chunk size below 1."""

    def __init__(self, blob: bytes | bytearray | memoryview, chunk_size: int) -> None:
        if not len(blob):
            raise ValueError("a transfer needs a non-empty blob")
        if chunk_size < 1:
            raise ValueError(f"chunk_size {chunk_size} must be >= 1")
        self.view = memoryview(blob).cast("B")
        self.chunk_size = chunk_size
        self.count = math.ceil(len(self.view) / chunk_size)
        self._whole = hashlib.sha256()
        self._chunk_sha256: list[str] = []

    def pieces(self) -> Iterator[tuple[int, memoryview]]:
        for index in range(self.count):
            piece = self.view[index * self.chunk_size : (index + 1) * self.chunk_size]
            yield index, piece
            self._whole.update(piece)
            self._chunk_sha256.append(hashlib.sha256(piece).hexdigest())

    def manifest(self, origin: TransferOrigin, transfer: str) -> TransferManifest:
        if len(self._chunk_sha256) != self.count:
            raise ValueError(f"{len(self._chunk_sha256)} of {self.count} chunks hashed: take every piece first")
        return TransferManifest(
            transfer=transfer,
            # Every field of TransferOrigin is a manifest field of the same name. Only those: an origin may be
            # a subclass that carries more (the edge's UploadRequest also holds the blob to send).
            **{f.name: getattr(origin, f.name) for f in fields(TransferOrigin)},
            total_bytes=len(self.view),
            chunk_size=self.chunk_size,
            chunks=self.count,
            sha256=self._whole.hexdigest(),
            chunk_sha256=list(self._chunk_sha256),
        )


def weights_transfer(
    arrays: Sequence[npt.NDArray[np.generic]],
    origin: TransferOrigin,
    *,
    chunk_size: int,
    transfer: str | None = None,
    names: Sequence[str] | None = None,
) -> tuple[TransferManifest, bytes]:
    """`arrays` encoded as the weights blob of `origin`, and the manifest of its chunked transfer: what a
    sender publishes. `transfer` defaults to the start of the blob's SHA-256 (the same arrays, the same id)."""
    blob = encode_weights(
        arrays,
        kind=origin.kind,
        job=origin.job,
        round_=origin.round,
        sender=origin.sender,
        num_samples=origin.num_samples,
        names=names,
    )
    transfer = transfer or hashlib.sha256(blob).hexdigest()[:16]
    return manifest_for(blob, origin, chunk_size=chunk_size, transfer=transfer), blob


class UpdateAck(_Wire):
    """The aggregator's answer to one update transfer.

    `accepted` true: the update is stored durably (or was already counted); the edge may drop its copy.
    `accepted` false with `missing`: the transfer is incomplete; resend exactly these chunks.
    `accepted` false without `missing`: the update is refused for good (`reason` says why).
    """

    job: str
    uid: str
    round: int
    node: str
    transfer: str
    accepted: bool
    reason: str = ""
    missing: list[int] = Field(default_factory=list)


# -- worker channel ------------------------------------------------------------------------------

FrameType = Literal[
    "hello",  # worker -> service: started; body = initial weights (training workers)
    "config",  # aggregation worker -> service: the AggregationServer settings
    "train",  # service -> worker: train one round from the body's weights
    "update",  # worker -> service: trained weights in the body
    "evaluated",  # worker -> service: the global model it was given, scored on its held-out data
    "finish",  # service -> worker: final weights in the body; save the model and exit
    "saved",  # worker -> service: the model is written
    "stop",  # service -> worker: the job ended (deleted or failed); exit now
    "error",  # worker -> service: the script failed; message says why
]


class WorkerFrame(_Wire):
    """Header of one frame on the worker channel. A weights blob may follow (`has_body`)."""

    type: FrameType
    round: int = 0
    num_samples: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    # evaluated: the scores of the global model of `round` on the worker's held-out data
    evaluation: Evaluation | None = None
    message: str = ""
    # error: "data" when the message is a data error's one line (no log tail is added to it)
    error_kind: Literal["data"] | None = None
    # hello (training workers): label lines the data loader skipped, and the first few of them
    skipped: int | None = None
    skipped_lines: list[str] | None = None
    # config (aggregation worker)
    aggregation: str | None = None
    exit_round: int | None = None
    participants_count: int | None = None
    # saved
    model_path: str | None = None
    model_digest: str | None = None
    has_body: bool = False
