"""A job with compressed updates end to end: two real edges (the numpy training script) over a real broker,
edge1 sending int8 updates, edge2 top-k (10 %) with error feedback, float16 global models. The job succeeds,
every global model is the (float16-rounded) FedAvg of the captured updates decoded onto the previous
global model, the updates on the wire are the encoded size, the residual is on edge2's disk, and
`flctl audit` accepts the encoded blobs (their layout is the job's)."""

from __future__ import annotations

import pytest

from flctl import cli as flctl_cli
from schemas import RoundRecord, decode_weights, read_header
from tests.faults.conftest import JOB, RigFactory, reassemble

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def test_int8_and_top_k_updates_with_float16_globals(rig: RigFactory, capsys: pytest.CaptureFixture[str]) -> None:
    r = rig(
        2,
        exit_round=3,
        keras=False,
        hidden=64,  # 8 x 64 + 64 parameters: big enough that the encodings' sizes show
        proxies=False,
        agg_params={"global_compression": "float16"},
        edge_params={"edge1": {"compression": "int8"}, "edge2": {"compression": "topk", "topk_fraction": "0.1"}},
    )
    status = r.wait_job(150)
    r.assert_outcome(status)  # includes: each global model is FedAvg of the decoded updates

    assert r.capture is not None
    blobs = reassemble(r.capture.messages, r.topics)
    for round_ in range(1, 4):
        base = decode_weights(blobs[("global", round_ - 1, "")][-1])[1]
        for edge, codec in (("edge1", "int8"), ("edge2", "topk")):
            (blob,) = blobs[("update", round_, edge)]
            header, _ = read_header(blob)
            assert [t.encoding.codec if t.encoding else None for t in header.tensors] == [codec, codec]
            raw_bytes = sum(t.nbytes for t in header.tensors)
            # int8: 1 byte a value; top-k 10 %: 8 bytes (index, value) for a tenth of the values, rounded up per tensor
            assert header.payload_bytes <= raw_bytes * (0.25 if codec == "int8" else 0.21), (edge, header)
            # the decoded update is a float32 model of the round-0 layout, trained from `base`
            _, arrays = decode_weights(blob, base=base)
            assert [(a.dtype.name, a.shape) for a in arrays] == [("float32", (8, 64)), ("float32", (64,))]
        (global_blob,) = blobs[("global", round_, "")][-1:]
        assert read_header(global_blob)[0].payload_bytes == (8 * 64 + 64) * 2  # float16 on the wire

    records = [
        RoundRecord.model_validate_json(payload)
        for topic, payload in r.capture.messages
        if topic.endswith("/record") and payload
    ]
    record = next(rec for rec in records if rec.round == 3)
    assert record.workers is not None
    sizes = {w.node: w.upload_bytes for w in record.workers}
    assert sizes["edge1"] is not None and sizes["edge2"] is not None and sizes["edge2"] < sizes["edge1"], sizes
    assert (r.tmp / "edge2" / "state" / JOB / "residual.npz").is_file()
    assert not (r.tmp / "edge1" / "state" / JOB / "residual.npz").exists()

    capsys.readouterr()
    code = flctl_cli.main([*r.cluster.flctl_args(), "audit", "fl", JOB])
    out = capsys.readouterr().out
    assert code == 0, out
    for edge in r.edges:
        assert f"{edge}: only control JSON and weight blobs of the job's layout left {edge}" in out, out
    r.finish()
