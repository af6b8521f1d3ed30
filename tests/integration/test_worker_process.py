"""A real training script in a real child process, driven over a real worker channel by the edge's runner.

No broker: the job's ports are recorded in memory and uploads succeed at once; global models are
made here. The script is a tiny Keras model (16x16 images, a few hundred parameters) on 8 images
generated with pillow, so TensorFlow's import dominates the run time.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from edge_trainer import FederatedLearning, WorkerError
from edge_trainer.engine import EdgeJob, LaunchSpec, UploadDone, UploadRequest
from edge_trainer.testing import global_transfer
from runtime import ScriptExited, ScriptFrame, ScriptProcess, version_name
from schemas import (
    DatasetRef,
    JobPlan,
    ModelRef,
    NodeRoot,
    PlannedWorker,
    ScriptRef,
    TransferManifest,
    WorkerState,
    WorkerStatus,
    decode_weights,
    weights_digest,
)

JOB = "tiny-job"
NODE = "edge1"
TIMEOUT = 120.0

KERAS_SCRIPT = '''
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from edge_trainer import BaseConfig, Context, FederatedLearning, TxtDataParse, load_image


class Estimator:
    """A tiny CNN: 16x16x3 -> Conv2D(2) -> Dense(2)."""

    def __init__(self):
        import keras

        self.model = keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                keras.layers.Conv2D(2, 3, strides=2, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        rate = float(Context.get_parameters("learning_rate", 0.01))
        self.model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(rate), metrics=["accuracy"])

    def train(self, train_data, valid_data=None, epochs=1, batch_size=4, **kwargs):
        history = self.model.fit(
            np.asarray(train_data.x), np.asarray(train_data.y), epochs=int(epochs), batch_size=int(batch_size), verbose=0
        )
        return history.history

    def get_weights(self):
        return self.model.get_weights()

    def set_weights(self, weights):
        self.model.set_weights(weights)

    def predict(self, x):
        return self.model.predict(x, verbose=0)


def image_process(line):
    path, label = line.split(",")
    folder = os.path.dirname(BaseConfig.train_dataset_url)
    return [load_image(os.path.join(folder, path), (16, 16)), np.eye(2, dtype="float32")[int(label)]]


def main():
    data = TxtDataParse(data_type="train", func=image_process)
    data.parse(BaseConfig.train_dataset_url)
    epochs = int(Context.get_parameters("epochs", 1))
    batch_size = int(Context.get_parameters("batch_size", 4))
    FederatedLearning(estimator=Estimator).train(data, epochs=epochs, batch_size=batch_size)


if __name__ == "__main__":
    main()
'''

FAILING_SCRIPT = """
import numpy as np

from edge_trainer import BaseConfig, FederatedLearning, TxtDataParse


class Estimator:
    def __init__(self):
        self.weights = [np.zeros((2, 3), dtype=np.float32)]

    def train(self, train_data, valid_data=None, **kwargs):
        raise ValueError("boom in train: learning rate is not a number")

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


data = TxtDataParse(data_type="train")
data.parse(BaseConfig.train_dataset_url)
FederatedLearning(Estimator()).train(data)
"""


NUMPY_SCRIPT = """
import numpy as np

from edge_trainer import BaseConfig, FederatedLearning, TxtDataParse, load_image


class Estimator:
    def __init__(self):
        self.weights = [np.zeros((2, 3), dtype=np.float32)]

    def train(self, train_data, valid_data=None, **kwargs):
        return {"loss": [0.5]}

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


def image_process(line):
    path, label = line.split(",")
    return [load_image(BaseConfig.train_dataset_url.rsplit("/", 1)[0] + "/" + path, (16, 16)), int(label)]


data = TxtDataParse(data_type="train", func=image_process)
data.parse(BaseConfig.train_dataset_url)
FederatedLearning(Estimator()).train(data)
"""


# Scores every global model it is given: P(class 1) = clip(mean pixel + w, 0, 1) with w = weights[0][0, 0],
# so a global model with w = +1 predicts class 1 for every image and one with w = -1 class 0.
EVALUATING_SCRIPT = """
import numpy as np

from edge_trainer import BaseConfig, FederatedLearning, TxtDataParse, load_image


class Estimator:
    def __init__(self):
        self.weights = [np.zeros((2, 3), dtype=np.float32)]

    def train(self, train_data, valid_data=None, **kwargs):
        return {"loss": [0.5], "val_loss": [0.6]}

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights

    def predict(self, x):
        p = np.clip(np.asarray(x).mean(axis=(1, 2, 3)) + float(self.weights[0][0, 0]), 0.0, 1.0)
        return np.stack([1.0 - p, p], axis=1)

    def save(self, path):
        np.save(path + ".npy", self.weights[0])
        return path


def image_process(line):
    path, label = line.split(",")
    return [load_image(BaseConfig.train_dataset_url.rsplit("/", 1)[0] + "/" + path, (16, 16)), int(label)]


data = TxtDataParse(data_type="train", func=image_process)
data.parse(BaseConfig.train_dataset_url)
FederatedLearning(Estimator()).train(data, validation_split=0.25)
"""


@dataclass
class Recorder:
    """The job's ports: statuses and uploads are kept; every upload succeeds at once."""

    events: queue.Queue[object]
    statuses: list[WorkerStatus] = field(default_factory=list)
    uploads: list[UploadRequest] = field(default_factory=list)

    def publish_status(self, status: WorkerStatus) -> None:
        self.statuses.append(status)

    def upload(self, request: UploadRequest) -> None:
        self.uploads.append(request)
        self.events.put(UploadDone(request.job, request.run_id, request.kind, request.round))

    def publish_secagg(self, step: str, job: str, round_: int, payload: bytes) -> None:
        raise AssertionError(f"no secure aggregation in this job, yet {step} of round {round_} was published")


@dataclass
class Edge:
    job: EdgeJob
    ports: Recorder
    events: queue.Queue[object]
    workers: list[ScriptProcess]
    root: Path

    def pump(self, until: Callable[[], bool], what: str) -> None:
        """Feed events to the job (as the service's logic thread does) until `until()` holds."""
        deadline = time.monotonic() + TIMEOUT
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.job.finished:
                tail = self.workers[0].log_tail() if self.workers else ""
                raise AssertionError(f"no {what}: state {self.job.state} ({self.job.message}); log:\n{tail}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if isinstance(event, ScriptFrame):
                self.job.on_frame(event.frame, event.body)
            elif isinstance(event, ScriptExited):
                self.job.on_exit(event.code)
            elif isinstance(event, UploadDone):
                self.job.on_uploaded(event)

    @property
    def state(self) -> WorkerState:
        return self.ports.statuses[-1].state


def lay_out_node(root: Path, script: str) -> None:
    """8 tiny labelled images, their label file, and the training script under the node root."""
    images = root / "data" / "imgs"
    images.mkdir(parents=True)
    rng = np.random.default_rng(3)
    lines = []
    for i in range(8):
        pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"tile{i}.png")
        lines.append(f"imgs/tile{i}.png,{i % 2}")
    (root / "data" / "1.txt").write_text("\n".join(lines) + "\n")
    (root / "code").mkdir()
    (root / "code" / "train.py").write_text(script)


def make_plan() -> JobPlan:
    return JobPlan(
        job=JOB,
        uid="uid-tiny",
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=1,
        participants=[NODE],
        model=ModelRef(name="tiny-model", url="/model", format="ckpt"),
        workers=[
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url="/data/1.txt", format="txt", node_name=NODE),
                script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
                parameters={"epochs": "1", "batch_size": "4", "learning_rate": "0.01"},
            )
        ],
        chunk_size=64 * 1024,
    )


def start_edge(
    tmp_path: Path, script: str, lines: Sequence[str] | None = None, prepare: Callable[[Path], None] | None = None
) -> Edge:
    """`lines`: the label file's lines instead of the 8 tiles'; `prepare(root)` changes the node before the start."""
    root = tmp_path / NODE
    lay_out_node(root, script)
    if lines is not None:
        (root / "data" / "1.txt").write_text("".join(f"{line}\n" for line in lines))
    if prepare is not None:
        prepare(root)
    events: queue.Queue[object] = queue.Queue()
    ports = Recorder(events)
    workers: list[ScriptProcess] = []

    def launcher(spec: LaunchSpec, run_id: str) -> ScriptProcess:
        worker = ScriptProcess.start(spec.script_launch(run_id), events.put)
        workers.append(worker)
        return worker

    job = EdgeJob(make_plan(), node=NODE, root=NodeRoot(root), ports=ports, launcher=launcher, stop_grace=5.0)
    assert job.start(), ports.statuses[-1].message
    return Edge(job, ports, events, workers, root.resolve())


def global_model(
    arrays: Sequence[npt.NDArray[Any]], names: list[str], round_: int, *, final: bool
) -> tuple[TransferManifest, bytes]:
    return global_transfer(arrays, job=JOB, uid="uid-tiny", round_=round_, num_samples=8, names=names, final=final)


@pytest.fixture
def edges() -> Iterator[list[Edge]]:
    started: list[Edge] = []
    yield started
    for edge in started:  # never leave a child behind, whatever the test did
        for worker in edge.workers:
            worker.stop(grace=0.0)
            worker.wait(10.0)


@pytest.mark.slow
def test_keras_script_trains_a_round_and_saves_a_checkpoint(tmp_path: Path, edges: list[Edge]) -> None:
    """hello, train, update, finish: the final model lands at the Model url in ckpt format with model.json and its digest."""
    edge = start_edge(tmp_path, KERAS_SCRIPT)
    edges.append(edge)

    edge.pump(lambda: edge.state is WorkerState.READY, "hello and the init upload")
    [init] = edge.ports.uploads
    header, init_arrays = decode_weights(init.blob)
    assert (init.kind, init.round, init.num_samples) == ("init", 0, 8)
    assert header.sender == NODE and header.job == JOB
    names = [t.name for t in header.tensors]
    assert len(names) == 4 and names[0].endswith("kernel") and "conv2d" in names[0]

    start = [np.asarray(a) + np.float32(0.01) for a in init_arrays]
    edge.job.on_global(*global_model(start, names, 0, final=False))
    # No aggregator acknowledges it here, so the worker stays Uploading (with the round's metrics).
    edge.pump(lambda: len(edge.ports.uploads) == 2 and edge.state is WorkerState.UPLOADING, "the update of round 1")
    update = edge.ports.uploads[1]
    assert (update.kind, update.round, update.num_samples) == ("update", 1, 8)
    _, trained = decode_weights(update.blob)
    assert any(not np.array_equal(a, b) for a, b in zip(trained, start, strict=True))
    uploading = edge.ports.statuses[-1]
    assert "loss" in uploading.metrics and "accuracy" in uploading.metrics

    final = [np.asarray(a) * np.float32(0.5) for a in trained]
    edge.job.on_global(*global_model(final, names, 1, final=True))
    edge.pump(lambda: edge.state is WorkerState.COMPLETED, "the saved model")
    assert edge.workers[0].wait(TIMEOUT), "the script did not exit after saving"

    done = edge.ports.statuses[-1]
    assert edge.workers[0].returncode == 0
    version = version_name(JOB, "uid-tiny", 1)
    assert done.model_path == f"/model/versions/{version}/model.ckpt"  # the version this run wrote
    assert done.model_digest == weights_digest(final)
    model_dir = edge.root / "model"
    for folder in (model_dir, model_dir / "versions" / version, model_dir / "latest"):  # the url is the latest
        assert (folder / "model.ckpt.index").is_file()
        assert list(folder.glob("model.ckpt.data-*"))
        meta = json.loads((folder / "model.json").read_text())
        assert meta["format"] == "ckpt" and meta["job"] == JOB and meta["round"] == 1
        assert meta["digest"] == done.model_digest and meta["numTensors"] == 4
        assert "model.ckpt.index" in meta["files"]
        assert (meta["uid"], meta["version"]) == ("uid-tiny", version)
        assert set(meta["metrics"]) >= {"loss", "accuracy"}, "the last round's metrics are recorded"
    assert not list(edge.root.glob(".model*")), "no staging folder left behind"


def test_error_in_the_script_surfaces_as_failed_with_its_message(tmp_path: Path, edges: list[Edge]) -> None:
    """An exception in estimator.train reaches the worker status: Failed, with the message and the traceback."""
    edge = start_edge(tmp_path, FAILING_SCRIPT)
    edges.append(edge)

    edge.pump(lambda: edge.state is WorkerState.READY, "hello and the init upload")
    _, arrays = decode_weights(edge.ports.uploads[0].blob)
    edge.job.on_global(*global_model([np.asarray(a) for a in arrays], ["w0"], 0, final=False))
    edge.pump(lambda: edge.state is WorkerState.FAILED, "the failure")

    failed = edge.ports.statuses[-1]
    assert failed.message.startswith("ValueError: boom in train: learning rate is not a number")
    assert "worker.log" in failed.message and "Traceback" in failed.message
    assert edge.workers[0].wait(TIMEOUT)
    assert edge.workers[0].returncode == 1


def test_script_not_started_by_the_service_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """FederatedLearning.train outside fl-edge-trainer says how to start the script instead of failing obscurely."""
    monkeypatch.delenv("FL_WORKER_FD", raising=False)

    class Estimator:
        def get_weights(self) -> list[npt.NDArray[np.float32]]:
            return [np.zeros(2, dtype=np.float32)]

    with pytest.raises(WorkerError, match="start this script through fl-edge-trainer"):
        FederatedLearning(Estimator).train([1, 2, 3])


def test_a_missing_image_fails_the_worker_with_one_line(tmp_path: Path, edges: list[Edge]) -> None:
    """Issue 8: the worker status says which label line names which missing image, not a traceback;
    the traceback stays in worker.log."""
    edge = start_edge(tmp_path, NUMPY_SCRIPT, ["imgs/tile0.png,0", "imgs/tile1.png,1", "imgs/missing.png,0"])
    edges.append(edge)

    edge.pump(lambda: edge.ports.statuses[-1].state is WorkerState.FAILED, "the failure")

    assert edge.ports.statuses[-1].message == "1.txt line 3: image imgs/missing.png not found under /data"
    assert edge.workers[0].wait(TIMEOUT) and edge.workers[0].returncode == 1
    assert "Traceback" in (edge.root / "logs" / JOB / "worker.log").read_text()


def test_skipped_label_lines_reach_the_worker_status(tmp_path: Path, edges: list[Edge]) -> None:
    """A defect mask named in the label file (a .png beside its .jpg tile) is not trained on; the status says so."""

    def add_the_tile_of_a_mask(root: Path) -> None:
        Image.new("L", (16, 16)).save(root / "data" / "imgs" / "tile2.jpg")  # tile2.png is now its mask

    edge = start_edge(tmp_path, NUMPY_SCRIPT, prepare=add_the_tile_of_a_mask)
    edges.append(edge)

    edge.pump(lambda: edge.state is WorkerState.READY, "hello and the init upload")

    ready = edge.ports.statuses[-1]
    assert ready.num_samples == 7 and ready.skipped == 1
    assert ready.skipped_lines == ["1.txt line 3: imgs/tile2.png: a defect mask (tile2.jpg beside it is the image)"]
    assert "edge_trainer: skipped 1.txt line 3" in (edge.root / "logs" / JOB / "worker.log").read_text()


def test_the_worker_scores_each_global_model_on_its_validation_share(tmp_path: Path, edges: list[Edge]) -> None:
    """Federated evaluation in a real script: the global model of round 1 is scored when round 2 starts, the
    final one before it is saved, each on the last quarter of the 8 tiles (labels 0, 1), with the confusion
    counts of exactly those weights; the training metrics stay apart."""
    edge = start_edge(tmp_path, EVALUATING_SCRIPT)
    edges.append(edge)
    edge.pump(lambda: edge.state is WorkerState.READY, "hello and the init upload")

    def weights(w: float) -> list[npt.NDArray[np.float32]]:
        return [np.full((2, 3), w, dtype=np.float32)]

    edge.job.on_global(*global_model(weights(0.0), ["w0"], 0, final=False))
    edge.pump(lambda: len(edge.ports.uploads) == 2, "the update of round 1")
    assert edge.ports.statuses[-1].evaluation is None, "the round-0 model is not scored"
    edge.job.on_global(*global_model(weights(1.0), ["w0"], 1, final=False))
    edge.pump(lambda: len(edge.ports.uploads) == 3, "the update of round 2")

    round2 = next(s for s in reversed(edge.ports.statuses) if s.state is WorkerState.UPLOADING)
    assert (round2.metrics, round2.metrics_round) == ({"loss": 0.5, "val_loss": 0.6}, 2)
    scored = round2.evaluation
    assert scored is not None and scored.round == 1 and scored.num_samples == 2
    assert scored.confusion == [[0, 1], [0, 1]]  # w = +1: everything is class 1
    assert (scored.accuracy, scored.balanced_accuracy) == (0.5, 0.5)

    edge.job.on_global(*global_model(weights(-1.0), ["w0"], 2, final=True))
    edge.pump(lambda: edge.state is WorkerState.COMPLETED, "the saved model")
    final = edge.ports.statuses[-1].evaluation
    assert final is not None and final.round == 2 and final.confusion == [[1, 0], [1, 0]]
    assert final.loss is not None and final.loss > 0
    assert (
        "federated evaluation on the last 0.25 of train_data (2 samples)"
        in (edge.root / "logs" / JOB / "worker.log").read_text()
    )
