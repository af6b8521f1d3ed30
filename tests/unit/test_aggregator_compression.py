"""The aggregator with compressed updates: each is decoded onto the model it was trained from and folded as a
float update (FedAvg of the decoded updates, by hand), a restart refolds compressed spooled updates to the
same bytes, a robust close decodes from the spool, top-k with a robust rule is refused, float16 global
models (fake port, no broker)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_aggregator.engine import Job, JobFacts, Stage
from cloud_aggregator.testing import MemoryPort, chunks_of
from schemas import (
    Codec,
    Kind,
    Phase,
    TransferOrigin,
    WorkerFrame,
    compress_update,
    decode_weights,
    encode_weights,
    manifest_for,
    read_header,
)
from tests.unit.test_aggregator_async import three_edges
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_job_rounds import JOB, SETTINGS, UID

Arrays = list[npt.NDArray[Any]]
SAMPLES = {"edge1": 10, "edge2": 30, "edge3": 20}
INIT: Arrays = [np.zeros((3, 2), np.float32), np.arange(4, dtype=np.int64)]


def facts(aggregation: dict[str, str], training: dict[str, str], *, resume: bool = False) -> JobFacts:
    """The example job with a third training worker, `aggregation` parameters on its aggregation worker and
    `training` on every training worker."""
    return three_edges(aggregation, training, resume=resume)


def started(
    port: MemoryPort,
    aggregation: dict[str, str] | None = None,
    training: dict[str, str] | None = None,
    *,
    resume: bool = False,
) -> Job:
    previous = port.statuses.get((Kind.JOB, JOB)) if resume else None
    agg = aggregation or {}
    job = Job(facts(agg, training or {}, resume=resume), port, previous_status=previous)  # type: ignore[arg-type]
    job.start(0.0)
    job.on_script_frame(
        WorkerFrame(type="config", aggregation=agg.get("aggregation_algorithm", "FedAvg"), exit_round=3), 0.1
    )
    if not resume and job.stage is not Stage.DONE:
        manifest, chunks = transfer("edge1", 0, INIT, kind="init")
        send(job, "edge1", manifest, chunks, 0.2)
    return job


def trained(node: str, round_: int) -> Arrays:
    """What `node`'s script sends for `round_`: a float tensor that differs per node and round, ints unchanged."""
    rng = np.random.default_rng(100 * round_ + int(node[-1]))
    return [rng.normal(size=(3, 2)).astype(np.float32), INIT[1]]


def compressed(node: str, round_: int, base: Arrays, codec: Codec, fraction: float = 0.5) -> bytes:
    raw = encode_weights(
        trained(node, round_), kind="update", job=JOB, round_=round_, sender=node, num_samples=SAMPLES[node]
    )
    return compress_update(raw, base, codec, fraction=fraction)[0]


def deliver(job: Job, node: str, round_: int, blob: bytes, now_s: float = 1.0) -> None:
    origin = TransferOrigin("update", JOB, UID, round_, node, SAMPLES[node])
    manifest = manifest_for(blob, origin, chunk_size=SETTINGS.chunk_size, transfer=f"{int(node[-1]):02d}{round_:06d}")
    send(job, node, manifest, chunks_of(manifest, blob), now_s)


def global_of(port: MemoryPort, round_: int) -> Arrays:
    return [g for g in port.published_globals if g.round == round_][-1].arrays


def fedavg(updates: list[tuple[int, Arrays]]) -> npt.NDArray[np.float32]:
    """Sample-weighted mean of tensor 0 in float64, as FedAvg folds, cast to float32."""
    total = sum(n for n, _ in updates)
    acc = np.zeros(updates[0][1][0].shape)
    for n, a in updates:
        acc += n * a[0].astype(np.float64)
    return (acc / total).astype(np.float32)


def test_fedavg_of_int8_updates_is_fedavg_of_their_decoded_values() -> None:
    port = MemoryPort()
    job = started(port, training={"compression": "int8"})
    for round_ in (1, 2):
        base = global_of(port, round_ - 1)
        blobs = {node: compressed(node, round_, base, "int8") for node in SAMPLES}
        for node, blob in blobs.items():
            deliver(job, node, round_, blob)
        decoded = [(SAMPLES[n], decode_weights(b, base=base)[1]) for n, b in blobs.items()]
        got = global_of(port, round_)
        np.testing.assert_array_equal(got[0], fedavg(decoded))
        assert got[1].tolist() == INIT[1].tolist()  # the int tensor was sent raw and is unchanged
        # ... and the decoded updates are the trained ones within int8's bound (scale / 2 per tensor).
        for node, (_, arrays) in zip(SAMPLES, decoded, strict=True):
            delta = trained(node, round_)[0].astype(np.float64) - base[0]
            assert np.abs(arrays[0] - trained(node, round_)[0]).max() <= (delta.max() - delta.min()) / 510 + 1e-6
    record = port.round_records[(JOB, 1)]
    assert record is not None and record.workers is not None
    assert all(w.upload_bytes is not None and w.upload_bytes < 2000 for w in record.workers)


def test_round_one_by_hand_with_top_k() -> None:
    """Top-k 1/6 of a 3x2 tensor keeps one entry per edge; from the zero init FedAvg is that entry times
    n / 60 at its place, everything else 0."""
    port = MemoryPort()
    job = started(port, training={"compression": "topk", "topk_fraction": "0.1"})
    want = np.zeros(6)
    for node, n in SAMPLES.items():
        flat = trained(node, 1)[0].reshape(-1).astype(np.float64)
        i = int(np.argmax(np.abs(flat)))
        want[i] += n * float(np.float32(flat[i])) / 60
        deliver(job, node, 1, compressed(node, 1, INIT, "topk", fraction=0.1))
    np.testing.assert_allclose(global_of(port, 1)[0].reshape(-1), want, rtol=1e-6)


@pytest.mark.parametrize("aggregation", [{}, {"global_compression": "float16"}])
def test_a_restart_refolds_compressed_spooled_updates_to_the_same_bytes(aggregation: dict[str, str]) -> None:
    """Killed in round 2 with edge1's int8 update spooled: the resumed run decodes it onto the checkpoint's
    model (float16 globals: the rounded one, as the edges decoded it) and closes rounds 2 and 3 to the same
    bytes as a run without the restart."""
    want = MemoryPort()
    job = started(want, aggregation, {"compression": "int8"})
    steps = [(node, r) for r in (1, 2) for node in SAMPLES]
    for node, r in steps:
        deliver(job, node, r, compressed(node, r, global_of(want, r - 1), "int8"))
    old = MemoryPort()
    job = started(old, aggregation, {"compression": "int8"})
    for node, r in steps[:4]:  # round 1 closed, edge1's update of round 2 spooled
        deliver(job, node, r, compressed(node, r, global_of(old, r - 1), "int8"))
    port = MemoryPort(disk=old.disk)
    port.statuses = dict(old.statuses)
    job = started(port, aggregation, {"compression": "int8"}, resume=True)
    for node, r in steps[4:]:
        deliver(job, node, r, compressed(node, r, global_of(old, r - 1), "int8"), now_s=2.0)
    got = {g.round: g.blob[read_header(g.blob)[1] :] for g in [*old.published_globals, *port.published_globals]}
    assert got == {g.round: g.blob[read_header(g.blob)[1] :] for g in want.published_globals}
    assert job.round == 3


def test_a_robust_close_decodes_the_spooled_updates() -> None:
    port = MemoryPort()
    job = started(port, {"aggregation_algorithm": "FedMedian"}, {"compression": "float16"})
    blobs = {node: compressed(node, 1, INIT, "float16") for node in SAMPLES}
    for node, blob in blobs.items():
        deliver(job, node, 1, blob)
    decoded = np.stack([decode_weights(b, base=INIT)[1][0] for b in blobs.values()])
    np.testing.assert_allclose(global_of(port, 1)[0], np.median(decoded, axis=0), rtol=1e-6)


def test_top_k_with_a_robust_rule_is_refused() -> None:
    port = MemoryPort()
    job = started(port, {"aggregation_algorithm": "FedMedian"}, {"compression": "topk"})
    status = port.job_status(JOB)
    assert job.stage is Stage.DONE and status.phase is Phase.FAILED
    assert "cannot aggregate top-k sparsified updates" in status.message and "edge1, edge2, edge3" in status.message


def test_an_encoded_init_is_refused() -> None:
    port = MemoryPort()
    job = started(port, training={"compression": "int8"})
    blob = compress_update(
        encode_weights(INIT, kind="init", job=JOB, round_=0, sender="edge2", num_samples=30), INIT, "int8"
    )[0]
    origin = TransferOrigin("init", JOB, UID, 0, "edge2", 30)
    manifest = manifest_for(blob, origin, chunk_size=SETTINGS.chunk_size, transfer="aa000000")
    send(job, "edge2", manifest, chunks_of(manifest, blob), 1.0)
    [ack] = port.acks_for("edge2")
    assert not ack.accepted and "an encoded delta cannot be a init" in (ack.reason or "")


def test_float16_global_models() -> None:
    """The published global is float16 on the wire and the job's model is its rounding: an update encoded
    against what the edges decoded folds onto the same base."""
    port = MemoryPort()
    job = started(port, {"global_compression": "float16"}, {"compression": "int8"})
    base = global_of(port, 0)
    for node in SAMPLES:
        deliver(job, node, 1, compressed(node, 1, base, "int8"))
    published = [g for g in port.published_globals if g.round == 1][-1]
    header, _ = read_header(published.blob)
    assert header.tensors[0].encoding is not None and header.tensors[0].encoding.codec == "float16"
    assert header.tensors[1].encoding is None
    decoded = [(SAMPLES[n], decode_weights(compressed(n, 1, base, "int8"), base=base)[1]) for n in SAMPLES]
    want = fedavg(decoded).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(published.arrays[0], want)
    assert job.round == 2


def test_asynchronous_a_stale_encoded_update_is_decoded_onto_its_own_base_then_rebased() -> None:
    """Buffers of two, staleness exponent 1: edge3's int8 update of round 1 (deltas from version 0) arrives in
    round 2: decoded onto version 0, rebased onto version 1, weighed 20 / 2; edge1's of round 2 onto version 1."""
    port = MemoryPort()
    asynchronous = {"aggregation_mode": "async", "buffer_size": "2", "max_staleness": "1", "staleness_exponent": "1"}
    job = started(port, asynchronous, {"compression": "int8"})
    v0 = global_of(port, 0)
    for node in ("edge1", "edge2"):
        deliver(job, node, 1, compressed(node, 1, v0, "int8"))
    v1 = global_of(port, 1)
    stale = compressed("edge3", 1, v0, "int8")
    fresh = compressed("edge1", 2, v1, "int8")
    deliver(job, "edge3", 1, stale)
    deliver(job, "edge1", 2, fresh)
    d3 = decode_weights(stale, base=v0)[1][0].astype(np.float64)
    rebased = (v1[0].astype(np.float64) + (d3 - v0[0])).astype(np.float32)
    want = fedavg([(10, [rebased]), (10, decode_weights(fresh, base=v1)[1])])
    np.testing.assert_allclose(global_of(port, 2)[0], want, rtol=1e-6)
