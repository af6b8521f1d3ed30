"""The seed scenario end to end: real Mosquitto, real service processes, real TensorFlow.

A small synthetic dataset (few, small images) keeps it to well under a minute; everything else is
what `make demo` runs: the example's scripts, the page's YAML, `flctl create`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from flctl.synth import copy_split, synthesize
from schemas import Channel, Kind, Phase, RoundRecord, Topics, TransferManifest
from tests.helpers.capture import Capture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "surface_defect_detection"
JOB = "surface-defect-detection"
EDGES = {"edge1": "1.txt", "edge2": "2.txt"}
MODEL_FLOAT32_BYTES = 423_874 * 4


def lay_out_nodes(workdir: Path) -> dict[str, list[Path]]:
    """Small synthetic dataset split over the edges, scripts in each node's /code; returns each edge's images."""
    source = workdir / "dataset-source"
    synthesize(source, scale=0.04, seed=7, size_range=(40, 64))
    images: dict[str, list[Path]] = {}
    for edge, labels in EDGES.items():
        copy_split(source, source / labels, workdir / edge / "data")
        images[edge] = sorted((workdir / edge / "data").rglob("*.jpg")) + sorted(
            (workdir / edge / "data").rglob("*.png")
        )
        (workdir / edge / "code").mkdir(parents=True)
        for script in ("train.py", "interface.py"):
            shutil.copy2(EXAMPLE / "training_worker" / script, workdir / edge / "code" / script)
    (workdir / "cloud0" / "code").mkdir(parents=True)
    shutil.copy2(EXAMPLE / "aggregation_worker" / "aggregate.py", workdir / "cloud0" / "code" / "aggregate.py")
    return images


def checkpoint_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every variable of the TensorFlow checkpoint an edge wrote, by its checkpoint key."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(model_dir / "model.ckpt"))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def test_seed_job_succeeds_over_mqtt(tmp_path: Path) -> None:
    """The page's job runs 3 rounds over MQTT; both edges end with the same model; no image byte is published."""
    images = lay_out_nodes(tmp_path)
    topics = Topics()
    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        capture = Capture(cluster.settings("capture"), topics.everything())
        with capture:
            cluster.start_node("cloud0", "aggregator")
            for edge in EDGES:
                cluster.start_node(edge, "edge")
            code = flctl_cli.main(
                [*cluster.flctl_args(), "create", "-f", str(EXAMPLE / "surface-defect-detection.yaml")]
            )
            assert code == 0

            status = cluster.wait_for_job(JOB, timeout=420)

        assert status.phase is Phase.SUCCEEDED, status.message
        assert status.exit_round == 3
        assert [r.round for r in status.rounds] == [1, 2, 3]
        for record in status.rounds:
            assert sorted(record.participants) == ["edge1", "edge2"]
        assert status.current_round == 3
        assert status.completion_time is not None
        # Every round: the edges' local training metrics (Keras history, sample-weighted) and the federated
        # evaluation of that round's global model on the edges' validation shares (the final round's too:
        # the edges score it before they report Completed), apart; its duration and bytes.
        for record in status.rounds:
            assert {"loss", "categorical_accuracy", "val_loss"} <= set(record.train), record.train
            assert record.eval is not None and record.eval.round == record.round, record
            assert record.eval.num_samples > 0 and record.eval.loss is not None
            assert 0.0 <= record.eval.balanced_accuracy <= 1.0 and len(record.eval.confusion) == 2
            assert record.duration_seconds is not None and record.duration_seconds > 0
            assert record.bytes_in is not None and record.bytes_in >= 2 * MODEL_FLOAT32_BYTES
            assert record.bytes_out is not None and record.bytes_out >= MODEL_FLOAT32_BYTES

        # Each edge wrote the final model at its Model url (/model under its root), in ckpt format.
        tensors = {}
        for edge in EDGES:
            model_dir = tmp_path / edge / "model"
            assert (model_dir / "model.ckpt.index").is_file()
            tensors[edge] = checkpoint_tensors(model_dir)
        assert tensors["edge1"].keys() == tensors["edge2"].keys()
        assert len(tensors["edge1"]) >= 10
        for key, value in tensors["edge1"].items():
            np.testing.assert_array_equal(value, tensors["edge2"][key], err_msg=key)
        digests = {w.node: w.model_digest for w in status.workers if w.role == "training"}
        assert digests["edge1"] is not None and digests["edge1"] == digests["edge2"]

        # Exactly exit_round aggregations: one global model per round 1..3 plus the round-0 start.
        global_rounds = set()
        updates: dict[int, list[TransferManifest]] = {}
        for topic, payload in capture.messages:
            parsed = topics.parse(topic)
            if parsed.channel is Channel.GLOBAL_MANIFEST and payload:
                global_rounds.add(parsed.round)
            if parsed.channel is Channel.UPDATE_MANIFEST:
                manifest = TransferManifest.model_validate_json(payload)
                updates.setdefault(manifest.round, []).append(manifest)
        assert global_rounds == {0, 1, 2, 3}
        # Each round's full record, per worker, on its own retained topic (the newest publication counts).
        records = {
            topics.parse(topic).round: RoundRecord.model_validate_json(payload)
            for topic, payload in capture.messages
            if payload and topics.parse(topic).channel is Channel.ROUND_RECORD
        }
        assert sorted(records) == [1, 2, 3]
        for round_, record in records.items():
            assert record.workers is not None and sorted(w.node for w in record.workers) == ["edge1", "edge2"]
            for worker in record.workers:
                assert "loss" in worker.train and worker.eval is not None and worker.eval.round == round_
                assert worker.upload_bytes is not None and worker.upload_bytes >= MODEL_FLOAT32_BYTES
            assert record.eval is not None and record.eval.workers == ["edge1", "edge2"]
        for round_ in (1, 2, 3):
            assert sorted(m.sender for m in updates[round_]) == ["edge1", "edge2"]
            for manifest in updates[round_]:
                # Binary tensors with a small header: within a few percent of the float32 model size.
                assert MODEL_FLOAT32_BYTES <= manifest.total_bytes <= MODEL_FLOAT32_BYTES * 1.02

        # No image byte crossed the broker: no 64-byte run of any image or mask file appears in any payload.
        payloads = [p for _, p in capture.messages if p]
        for paths in images.values():
            assert paths
            for path in paths:
                data = path.read_bytes()
                middle = len(data) // 2
                for probe in (data[:64], data[middle : middle + 64], data[-64:]):
                    assert not any(probe in p for p in payloads), f"bytes of {path.name} were published"

        for node in cluster.nodes.values():
            assert node.alive(), f"{node.name} exited early:\n{node.log_tail()}"
    # LocalCluster stopped every service cleanly.
    for node in cluster.nodes.values():
        assert node.proc.returncode == 0, f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}"


def test_published_seed_with_name_mistake_fails_clearly(tmp_path: Path) -> None:
    """The page's YAML as published names missing datasets: the job fails naming them, and nothing trains."""
    lay_out_nodes(tmp_path)
    topics = Topics()
    with LocalCluster(tmp_path, service_args=["--log-level", "DEBUG"]) as cluster:
        cluster.start_broker()
        capture = Capture(cluster.settings("capture"), topics.everything())
        with capture:
            cluster.start_node("cloud0", "aggregator")
            cluster.start_node("edge1", "edge")
            spec = EXAMPLE / "seed-as-published.yaml"
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
            status = cluster.wait_for_job(JOB, timeout=120)

        assert status.phase is Phase.FAILED
        assert 'Dataset "edge-1-surface-defect-detection-dataset" not found' in status.message
        assert 'did you mean "edge1-surface-defect-detection-dataset"' in status.message
        assert "edge-2-surface-defect-detection-dataset" in status.message
        published = {topics.parse(t).channel for t, p in capture.messages if p}
        assert Channel.PLAN not in published
        assert Channel.UPDATE_MANIFEST not in published
        assert not (tmp_path / "edge1" / "logs").exists() or not any((tmp_path / "edge1" / "logs").iterdir())


def test_raw_mosquitto_pub_equals_flctl_create(tmp_path: Path) -> None:
    """A spec published with mosquitto_pub is validated like flctl's; a bad one gets a clear status."""
    lay_out_nodes(tmp_path)
    topics = Topics()
    bad = tmp_path / "bad-job.yaml"
    bad.write_text(
        "apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata:\n  name: broken\n"
        "spec:\n  aggregationWorker:\n    model: {name: m}\n    nodeName: cloud0\n"
        "    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py}\n"
        "  trainingWorkers:\n    - nodeName: edge1\n      dataset: {name: d}\n"
        "      workerSpec: {scriptDir: /code, scriptBootFile: train.py, parameters: [{key: batch_size, value: '-1'}]}\n"
    )
    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        cluster.start_node("cloud0", "aggregator")
        mosquitto_pub = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
        subprocess.run(
            [
                mosquitto_pub,
                "-p",
                str(cluster.port),
                "-q",
                "1",
                "-r",
                "-t",
                topics.spec(Kind.JOB, "broken"),
                "-f",
                str(bad),
            ],
            check=True,
            timeout=30,
        )
        status = cluster.wait_for_job("broken", timeout=60)
    assert status.phase is Phase.FAILED
    assert "spec.trainingWorkers[0].workerSpec.parameters[0].value" in status.message
    assert "batch_size" in status.message
