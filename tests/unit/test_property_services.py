"""Property-based tests of the services fed mutated weights (issue 4, "Bad input"): fake ports, no broker.

The aggregator's job engine, in round r with honest updates coming in, receives random mutations of a
participant's valid update (byte flips, truncation, header fields changed, re-encodings with wrong
shapes, dtypes, NaN or sample counts, manifest fields changed): it never raises, accepts a mutant only
when its content is the honest update's, and the round's global model is the sample-weighted mean of
the honest updates. The edge's `EdgeJob` fed mutated global models never raises and hands the training
script only intact global models of its job.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_aggregator.testing import MemoryPort, chunks_of, make_transfer
from schemas import MAX_NUM_SAMPLES, TransferManifest, WireError, decode_weights, encode_weights
from tests.unit.test_edge_job import JOB as EDGE_JOB
from tests.unit.test_edge_job import UID as EDGE_UID
from tests.unit.test_edge_job import started
from tests.unit.test_job_rounds import JOB, UID, training

Arrays = list[npt.NDArray[Any]]
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SHAPES = [(3, 2), (4,)]  # the layout of tests.unit.test_job_rounds.weights()

values = st.floats(-1e4, 1e4, width=32)
samples = st.integers(1, 10_000)


def arrays_of(seed: list[float]) -> Arrays:
    return [np.full(SHAPES[0], seed[0], np.float32), np.arange(4, dtype=np.float32) * seed[1]]


def manifest_of(blob: bytes, *, transfer: str, **fields: Any) -> TransferManifest:
    """The manifest a sender computes for `blob` (whatever the blob holds), with `fields` overriding."""
    digest = hashlib.sha256(blob).hexdigest()
    data: dict[str, Any] = {
        "transfer": transfer,
        "kind": "update",
        "job": JOB,
        "uid": UID,
        "total_bytes": len(blob),
        "chunk_size": len(blob),
        "chunks": 1,
        "sha256": digest,
        "chunk_sha256": [digest],
    }
    data.update(fields)
    return TransferManifest.model_validate(data)


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack(">I", blob[4:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return b"FLW1" + struct.pack(">I", len(head)) + head + payload


header_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["update", "global", "init", JOB, "edge1", "edge2", "2020-01-01T00:00:00Z"]),
)


@st.composite
def blob_mutation(draw: st.DrawFn, blob: bytes, arrays: Arrays, fields: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A mutated blob and manifest overrides, from a valid blob whose encode_weights `fields` are given."""
    op = draw(
        st.sampled_from(["flip", "truncate", "append", "header", "shape", "dtype", "nonfinite", "samples", "reencode"])
    )
    overrides: dict[str, Any] = {}
    if op == "flip":
        out = bytearray(blob)
        for _ in range(draw(st.integers(1, 3))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out), overrides
    if op == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))], overrides
    if op == "append":
        return blob + draw(st.binary(min_size=1, max_size=16)), overrides
    if op == "header":
        header, payload = split(blob)
        key = draw(st.sampled_from([*header, "extra"]))
        header[key] = draw(header_values)
        return join(header, payload), overrides
    mutated = [a.copy() for a in arrays]
    kwargs = dict(fields)
    if op == "shape":
        i = draw(st.integers(0, len(mutated) - 1))
        mutated[i] = draw(st.sampled_from([mutated[i].reshape(-1), np.append(mutated[i], 1.0), mutated[i][:1]]))
    elif op == "dtype":
        i = draw(st.integers(0, len(mutated) - 1))
        with np.errstate(all="ignore"):
            mutated[i] = mutated[i].astype(draw(st.sampled_from([np.float64, np.float16, np.int32])))
    elif op == "nonfinite":
        i = draw(st.integers(0, len(mutated) - 1))
        mutated[i].reshape(-1)[draw(st.integers(0, mutated[i].size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
    elif op == "samples":
        # The header and (or not) the manifest claim another sample count, absurd ones included.
        # When both agree on a plausible count the update is merely another one, not a corrupted one:
        # the manifest then claims only impossible counts. Our encoder refuses impossible counts, so
        # those are written into the header directly, as a forged blob would carry them.
        absurd = st.sampled_from([0, MAX_NUM_SAMPLES + 1, 2**53 + 1, 10**300, 10**400])
        both = draw(st.booleans())
        count = draw(absurd) if both else draw(st.one_of(absurd, st.integers(1, 10**6)))
        if both:
            overrides["num_samples"] = count
        if not 0 <= count <= MAX_NUM_SAMPLES:
            header, payload = split(encode_weights(mutated, **kwargs))
            header["numSamples"] = count
            return join(header, payload), overrides
        kwargs["num_samples"] = count
    else:  # re-encode with another kind, job, round or sender
        key = draw(st.sampled_from(["kind", "job", "round_", "sender"]))
        kwargs[key] = draw(
            {
                "kind": st.sampled_from(["init", "global"]),
                "job": st.sampled_from(["other-job", JOB.upper()]),
                "round_": st.integers(0, 9),
                "sender": st.sampled_from(["edge1", "edge2", "cloud0"]),
            }[key]
        )
    return encode_weights(mutated, **kwargs), overrides


manifest_changes = st.dictionaries(
    st.sampled_from(["num_samples", "sender", "round", "uid", "kind", "job"]),
    st.one_of(st.integers(0, 10), st.sampled_from(["edge1", "edge2", "update", "init", "global", "x", UID])),
    max_size=2,
)


def same_content(blob: bytes, arrays: Arrays, num_samples: int) -> bool:
    """Whether `blob` decodes to exactly the honest update (same arrays, bits and layout, same sample count)."""
    try:
        header, got = decode_weights(blob)
    except WireError:
        return False
    return (
        header.num_samples == num_samples
        and all(
            g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes()
            for g, w in zip(got, arrays, strict=True)
        )
        and len(got) == len(arrays)
    )


def deliver(
    job: Any, node: str, round_: int, manifest: TransferManifest, blob: bytes, *, chunked: bool, size: int
) -> None:
    """As the service hands it over: a complete transfer, or chunks then the manifest (cut at `size`)."""
    if not chunked:
        job.on_update(node, round_, manifest, blob)
        return
    if blob:
        recut = [blob[i : i + size] for i in range(0, len(blob), size)]
        digest = [hashlib.sha256(c).hexdigest() for c in recut]
        manifest = manifest.model_copy(update={"chunk_size": size, "chunks": len(recut), "chunk_sha256": digest})
        for i, data in enumerate(chunks_of(manifest, blob)):
            job.on_update_chunk(node, round_, manifest.transfer, i, data, now_s=5.0)
    job.on_update_manifest(node, round_, manifest, 5.0)


@SETTINGS
@given(
    st.integers(1, 3),
    st.sampled_from(["edge1", "edge2"]),
    st.booleans(),
    st.lists(st.tuples(values, values), min_size=2, max_size=2),
    st.lists(samples, min_size=2, max_size=2),
    st.data(),
)
def test_mutated_updates_are_rejected_and_the_round_averages_the_honest_ones(  # noqa: PLR0917 - hypothesis
    round_: int,
    mutator: str,
    other_first: bool,
    seeds: list[tuple[float, float]],
    counts: list[int],
    data: st.DataObject,
) -> None:
    port = MemoryPort()
    job = training(port)  # round 1 of 3, the round-0 model from edge1
    for r in range(1, round_):  # earlier rounds close with plain updates
        for node in ("edge1", "edge2"):
            m, b = make_transfer(
                arrays_of([r, r]), kind="update", job=JOB, uid=UID, round_=r, sender=node, num_samples=3
            )
            job.on_update(node, r, m, b)
    assert job.round == round_

    honest = {node: (arrays_of(list(seed)), n) for node, seed, n in zip(("edge1", "edge2"), seeds, counts, strict=True)}
    other = "edge2" if mutator == "edge1" else "edge1"

    def send_honest(node: str) -> None:
        arrays, n = honest[node]
        m, b = make_transfer(arrays, kind="update", job=JOB, uid=UID, round_=round_, sender=node, num_samples=n)
        deliver(job, node, round_, m, b, chunked=data.draw(st.booleans()), size=data.draw(st.integers(16, 512)))

    if other_first:
        send_honest(other)
    arrays, n = honest[mutator]
    fields: dict[str, Any] = {"kind": "update", "job": JOB, "round_": round_, "sender": mutator, "num_samples": n}
    blob = encode_weights(arrays, **fields)
    for i in range(data.draw(st.integers(1, 3))):
        mutant, overrides = data.draw(blob_mutation(blob, arrays, fields))
        changes = data.draw(manifest_changes)
        if not mutant:
            continue  # an empty payload is a deleted retained message, never a transfer
        try:
            claims = {"num_samples": n, "sender": mutator, "round": round_, **overrides, **changes}
            manifest = manifest_of(mutant, transfer=f"{i + 1:016x}", **claims)
        except ValueError:
            continue  # not a manifest the service would parse (pydantic refuses it first)
        before = len(port.acks)
        counted_before = round_ != job.round or mutator in job.counted
        chunked, size = data.draw(st.booleans()), data.draw(st.integers(16, 512))
        deliver(job, mutator, round_, manifest, mutant, chunked=chunked, size=size)
        answers = [a for a in port.acks[before:] if a.transfer == manifest.transfer]
        accepted = any(a.accepted for a in answers)
        clean_manifest = manifest.num_samples == n and all(
            getattr(manifest, k) == v
            for k, v in {"sender": mutator, "round": round_, "uid": UID, "kind": "update", "job": JOB}.items()
        )
        if accepted and not counted_before:
            assert clean_manifest and same_content(mutant, arrays, n), "a corrupted update was accepted"
        if not (clean_manifest and same_content(mutant, arrays, n)):
            assert not accepted or counted_before
            assert answers
            # Once the worker is counted for the round, any further update of it is a duplicate: acknowledged
            # ("already counted", so its edge drops it) and never folded (hypothesis found this case).
            last = answers[-1]
            assert not last.accepted or (counted_before and last.reason.startswith("already counted"))
    send_honest(mutator)
    if not other_first:
        send_honest(other)

    # The round closed with the honest updates only.
    closed = [g for g in port.published_globals if g.round == round_]
    assert len(closed) == 1
    (a1, n1), (a2, n2) = honest["edge1"], honest["edge2"]
    for got, w1, w2 in zip(closed[0].arrays, a1, a2, strict=True):
        expected = ((w1.astype(np.float64) * float(n1) + w2.astype(np.float64) * float(n2)) / float(n1 + n2)).astype(
            np.float32
        )
        np.testing.assert_array_equal(got, expected)
    record = job.status.rounds[-1]
    assert record.round == round_ and record.total_samples == n1 + n2
    assert job.status.phase.value == "Running"


# -- the edge --------------------------------------------------------------------------------------


def global_of(round_: int, value: float, *, final: bool = False) -> tuple[TransferManifest, bytes, Arrays]:
    arrays = [np.full((2, 3), value, np.float32)]
    manifest, blob = make_transfer(
        arrays,
        kind="global",
        job=EDGE_JOB,
        uid=EDGE_UID,
        round_=round_,
        sender="cloud0",
        num_samples=16,
        transfer=f"{round_:016x}",
        final=final,
    )
    return manifest, blob, arrays


@SETTINGS
@given(st.data())
def test_mutated_global_models_never_reach_the_training_script(tmp_path_factory: Any, data: st.DataObject) -> None:
    root: Path = tmp_path_factory.mktemp("edge1")
    (root / "data").mkdir()
    (root / "data" / "1.txt").write_text("a.jpg,0\n")
    (root / "code").mkdir()
    (root / "code" / "train.py").write_text("print('hi')\n")
    h = started(root)
    valid: dict[int, Arrays] = {}
    for r in range(data.draw(st.integers(1, 4))):
        manifest, blob, arrays = global_of(r, float(r) + 0.5, final=r == 3)
        valid[r] = arrays
        fields: dict[str, Any] = {"kind": "global", "job": EDGE_JOB, "round_": r, "sender": "cloud0", "num_samples": 16}
        for _ in range(data.draw(st.integers(0, 3))):
            mutant, _ = data.draw(blob_mutation(blob, arrays, fields))
            changes = data.draw(
                st.dictionaries(
                    st.sampled_from(["job", "uid", "kind", "round"]),
                    st.sampled_from([0, 1, 2, 5, "x", EDGE_JOB, EDGE_UID, "global", "update"]),
                    max_size=1,
                )
            )
            try:
                mutated_manifest = TransferManifest.model_validate({**manifest.model_dump(), **changes})
            except ValueError:
                continue
            h.job.on_global(mutated_manifest, mutant)
        h.job.on_global(manifest, blob)
        # The script answers a train frame, so the next global is used at once.
        frame, _ = h.worker.sent[-1] if h.worker.sent else (None, None)
        if frame is not None and frame.type == "train" and h.job.state.value == "Training":
            body = encode_weights(
                arrays, kind="update", job=EDGE_JOB, round_=frame.round, sender="edge1", num_samples=8
            )
            from schemas import WorkerFrame

            h.job.on_frame(WorkerFrame(type="update", round=frame.round, num_samples=8, has_body=True), body)
    assert h.ports.last.state.value != "Failed"
    for frame, body in h.worker.sent:
        assert body is not None
        header, arrays = decode_weights(body)  # verifies the tensor hash
        assert header.kind == "global" and header.job == EDGE_JOB
        r = frame.round - 1 if frame.type == "train" else frame.round
        assert header.round == r
        assert all(bool(np.isfinite(a).all()) for a in arrays if a.dtype.kind in "fc")
        # A re-encoding with another tensor layout is not recognisable by the edge (it does not compare
        # with its model's layout); with the right layout the values are the aggregator's, bit for bit.
        if r not in valid:
            # A re-encoding labelled with a round the test never published, header and manifest agreeing
            # (e.g. round 5): from the aggregator's own sender, indistinguishable from a real newer global
            # model, so the edge takes it. Its values are still one of the published models', bit for bit.
            assert any(
                len(v) == len(arrays) and all(g.tobytes() == w.tobytes() for g, w in zip(arrays, v, strict=True))
                for v in valid.values()
            )
            continue
        layout = [(a.dtype, a.shape) for a in valid[r]]
        if [(a.dtype, a.shape) for a in arrays] == layout:
            assert all(g.tobytes() == w.tobytes() for g, w in zip(arrays, valid[r], strict=True))
