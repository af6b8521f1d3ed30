"""A job of N edges on the aggregator's engine (MemoryPort or a port on disk), for intake and memory tests and
`benchmarks/fold.py`: the example's spec with one training worker and one Dataset per edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator.engine import Job, JobFacts, JobSettings, Stage
from cloud_aggregator.service import FileSpill, StateStore
from cloud_aggregator.testing import MemoryPort, chunks_of, make_transfer
from schemas import Dataset, FederatedLearningJob, Model, TransferManifest, WorkerFrame, parse_documents

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
UID = "fedcba9876543210fedcba9876543210"

Arrays = list[npt.NDArray[Any]]


class DiskPort(MemoryPort):
    """A MemoryPort whose spool and spilled transfers are files (`StateStore`), so they hold no memory."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.store = StateStore(root)

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        self.store.store_update(job, round_, node, transfer, blob)

    def open_spill(self, job: str) -> FileSpill:  # type: ignore[override]
        return self.store.open_spill(job)


def fleet_resources(edges: int) -> tuple[FederatedLearningJob, dict[str, Dataset], dict[str, Model]]:
    """The example's job with training workers edge1..edge<N>, each with its own Dataset."""
    resources = parse_documents(EXAMPLE.read_text(), str(EXAMPLE))
    spec = next(r for r in resources if isinstance(r, FederatedLearningJob))
    template = next(r for r in resources if isinstance(r, Dataset))
    models = {r.metadata.name: r for r in resources if isinstance(r, Model)}
    worker = spec.spec.training_workers[0]
    datasets: dict[str, Dataset] = {}
    workers = []
    for i in range(1, edges + 1):
        name = f"edge{i}-dataset"
        datasets[name] = template.model_copy(
            update={
                "metadata": template.metadata.model_copy(update={"name": name}),
                "spec": template.spec.model_copy(update={"node_name": f"edge{i}"}),
            }
        )
        workers.append(
            worker.model_copy(
                update={"node_name": f"edge{i}", "dataset": worker.dataset.model_copy(update={"name": name})}
            )
        )
    spec = spec.model_copy(update={"spec": spec.spec.model_copy(update={"training_workers": workers})})
    return spec, datasets, models


def fleet_job(port: MemoryPort, edges: int, initial: Arrays, *, settings: JobSettings | None = None) -> Job:
    """A job of `edges` edges in round 1 on `initial` (edge1's init), FedAvg, 3 rounds."""
    spec, datasets, models = fleet_resources(edges)
    facts = JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=settings or JobSettings())
    job = Job(facts, port)
    job.start(0.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=3, participants_count=edges), 0.1)
    manifest, blob = make_transfer(initial, kind="init", job=JOB, uid=UID, round_=0, sender="edge1", num_samples=1)
    job.on_init_transfer("edge1", 0, manifest, blob)
    assert job.stage is Stage.TRAINING and job.round == 1, job.stage
    return job


def upload(node: str, arrays: Arrays, *, chunk_size: int, samples: int = 10) -> tuple[TransferManifest, list[bytes]]:
    """An update of round 1 from `node`, as its chunks."""
    manifest, blob = make_transfer(
        arrays, kind="update", job=JOB, uid=UID, round_=1, sender=node, num_samples=samples, chunk_size=chunk_size
    )
    return manifest, chunks_of(manifest, blob)


def send_interleaved(job: Job, uploads: dict[str, tuple[TransferManifest, list[bytes]]], now_s: float) -> None:
    """Every upload's chunks round-robin (all in flight at once), then each manifest, as BlobSender sends them."""
    longest = max(len(chunks) for _, chunks in uploads.values())
    for i in range(longest):
        for node, (manifest, chunks) in uploads.items():
            if i < len(chunks):
                job.on_update_chunk(node, 1, manifest.transfer, i, fresh(chunks[i]), now_s=now_s)
    for node, (manifest, _) in uploads.items():
        job.on_update_manifest(node, 1, manifest, now_s)


def resend_missing(
    job: Job, port: MemoryPort, uploads: dict[str, tuple[TransferManifest, list[bytes]]], now_s: float
) -> int:
    """Answer every ack that names missing chunks as an edge's outbox does (those chunks, then the manifest);
    return how many chunks were sent again."""
    sent, seen = 0, 0
    while seen < len(port.acks):
        ack = port.acks[seen]
        seen += 1
        if ack.accepted or not ack.missing:
            continue
        manifest, chunks = uploads[ack.node]
        for i in ack.missing:
            job.on_update_chunk(ack.node, 1, manifest.transfer, i, fresh(chunks[i]), now_s=now_s)
            sent += 1
        job.on_update_manifest(ack.node, 1, manifest, now_s)
    return sent


def random_model(rng: np.random.Generator, sizes: list[int]) -> Arrays:
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def fresh(chunk: bytes) -> bytes:
    """A new bytes object with the chunk's bytes, as each message from the network is (so tracemalloc sees
    the chunks a receiver keeps: `bytes(chunk)` would be the same object)."""
    return memoryview(chunk).tobytes()
