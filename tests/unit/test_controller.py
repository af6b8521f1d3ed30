"""The controller driven by spec messages, as the broker would deliver them: validation, references, restarts."""

from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cloud_aggregator import ControllerError, WorkerScriptError
from cloud_aggregator.engine import Controller, JobSettings, ScriptRequest, Stage
from cloud_aggregator.service import AggregationScripts, aggregation_launch, write_model
from cloud_aggregator.testing import MemoryPort
from runtime import ScriptEvent, ScriptExited, ScriptFrame, script_environment
from schemas import (
    ConditionType,
    FederatedLearningJob,
    JobStatus,
    Kind,
    ModelRef,
    NodeRoot,
    NodeState,
    NodeStatus,
    PathEscapeError,
    Phase,
    ResourceStatus,
    Topics,
    WorkerFrame,
    load_yaml_documents,
    parse_documents,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection"
SEED = EXAMPLES / "seed-as-published.yaml"
FIXED = EXAMPLES / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
TOPICS = Topics()
KINDS = {"Dataset": Kind.DATASET, "Model": Kind.MODEL, "FederatedLearningJob": Kind.JOB}


def documents(path: Path) -> list[tuple[Kind, str, bytes]]:
    """Each document of a YAML file as (kind, name, payload), as `flctl create` publishes them."""
    return [
        (KINDS[d["kind"]], d["metadata"]["name"], yaml.safe_dump(d, sort_keys=False).encode())
        for d in load_yaml_documents(path.read_text(), str(path))
    ]


def publish(controller: Controller, kind: Kind, name: str, payload: bytes, now_s: float = 0.0) -> None:
    controller.on_spec(kind, name, TOPICS.spec(kind, name), payload, now_s)


def announce(controller: Controller, node: str, role: str = "edge", now_s: float = 0.0) -> None:
    """A node status of `node`, as its service publishes it (retained) on connect."""
    status = NodeStatus.model_validate({"node": node, "role": role, "state": NodeState.ONLINE})
    controller.on_node_status(node, status.to_json(), now_s)


def ready_controller(
    port: MemoryPort,
    *,
    grace: float = 5.0,
    node_grace: float = 60.0,
    node: str = "cloud0",
    edges: tuple[str, ...] = ("edge1", "edge2"),
) -> Controller:
    """A controller past its startup barrier that has seen the node statuses of `edges` (retained)."""
    settings = JobSettings(chunk_size=4096, reference_grace=grace, node_grace=node_grace)
    controller = Controller(node=node, port=port, settings=settings, new_uid=lambda: "a" * 32)
    for edge in edges:
        announce(controller, edge)
    controller.ready(0.0)
    return controller


def fixed_spec_hash() -> str:
    resources = parse_documents(FIXED.read_text(), str(FIXED))
    return next(r for r in resources if isinstance(r, FederatedLearningJob)).spec_hash()


def job_payload(changes: dict[str, Any] | None = None) -> bytes:
    """The fixed example's job document, with `changes` ({"dotted.path.0.key": value}) applied."""
    doc = next(d for d in load_yaml_documents(FIXED.read_text(), str(FIXED)) if d["kind"] == "FederatedLearningJob")
    for dotted, value in (changes or {}).items():
        target = doc
        *parents, last = dotted.split(".")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    return yaml.safe_dump(doc, sort_keys=False).encode()


def test_seed_with_the_dataset_name_mistake_fails_after_the_grace_period() -> None:
    """The page's YAML names missing datasets: Pending for the grace period, then Failed naming them and the closest names."""
    port = MemoryPort()
    controller = ready_controller(port, grace=5.0)

    for kind, name, payload in documents(SEED):
        publish(controller, kind, name, payload, 0.0)

    pending = port.job_status(JOB)
    assert pending.phase is Phase.PENDING
    assert 'waiting for Dataset "edge-1-surface-defect-detection-dataset"' in pending.message
    controller.tick(4.9)
    assert port.job_status(JOB).phase is Phase.PENDING

    controller.tick(5.0)

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert (
        'spec.trainingWorkers[0].dataset.name: Dataset "edge-1-surface-defect-detection-dataset" not found; '
        'did you mean "edge1-surface-defect-detection-dataset"?'
    ) in status.message
    assert 'Dataset "edge-2-surface-defect-detection-dataset" not found' in status.message
    assert status.conditions[-1].type is ConditionType.FAILED and status.conditions[-1].reason == "InvalidReference"
    assert port.scripts == [] and port.plans == {}


def test_documents_in_any_order_within_the_grace_period() -> None:
    """A job published before its Datasets and Model starts as soon as the last one arrives."""
    port = MemoryPort()
    controller = ready_controller(port)
    docs = documents(FIXED)

    for kind, name, payload in reversed(docs):
        publish(controller, kind, name, payload, 1.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert port.job_status(JOB).phase is Phase.PENDING
    assert controller.stage(JOB) is Stage.STARTING
    assert port.resource_status(Kind.DATASET, "edge1-surface-defect-detection-dataset").valid


def test_retained_specs_are_evaluated_only_when_ready() -> None:
    """Before ready() (the startup barrier) nothing is evaluated, so a job never fails for a dataset still in flight."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=JobSettings(reference_grace=5.0))
    announce(controller, "edge1")
    announce(controller, "edge2")
    docs = documents(FIXED)

    publish(controller, *docs[-1])
    controller.tick(100.0)
    assert (Kind.JOB, JOB) not in port.statuses
    for doc in docs[:-1]:
        publish(controller, *doc)
    controller.ready(100.0)

    assert [s.job for s in port.scripts] == [JOB]


def test_invalid_job_published_raw_gets_a_status_naming_document_and_field() -> None:
    """A bad job document published raw gets phase Failed naming the topic, the document and the field."""
    port = MemoryPort()
    controller = ready_controller(port)
    bad = (
        b"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata:\n  name: broken\n"
        b"spec:\n  aggregationWorker:\n    model: {name: m}\n    nodeName: cloud0\n"
        b"    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py}\n"
        b"  trainingWorkers:\n    - nodeName: edge1\n      dataset: {name: d}\n"
        b"      workerSpec: {scriptDir: /code, scriptBootFile: train.py, parameters: [{key: batch_size, value: '-1'}]}\n"
    )

    publish(controller, Kind.JOB, "broken", bad)

    status = port.job_status("broken")
    assert status.phase is Phase.FAILED
    assert 'topic fl/federatedlearningjobs/broken/spec (FederatedLearningJob "broken")' in status.message
    assert "spec.trainingWorkers[0].workerSpec.parameters[0].value" in status.message
    assert "batch_size" in status.message
    assert status.conditions[0].type is ConditionType.FAILED and status.conditions[0].reason == "InvalidSpec"
    assert port.scripts == []


def test_invalid_dataset_gets_an_invalid_resource_status() -> None:
    """A Dataset with a bad field gets valid=false naming the field; a job referring to it keeps waiting."""
    port = MemoryPort()
    controller = ready_controller(port)
    payload = b"apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {name: d1}\nspec: {url: /data/1.txt, format: csv, nodeName: edge1}\n"

    publish(controller, Kind.DATASET, "d1", payload)

    status = port.resource_status(Kind.DATASET, "d1")
    assert isinstance(status, ResourceStatus) and not status.valid
    assert "spec.format" in status.message and 'Dataset "d1"' in status.message
    assert "d1" not in controller.datasets


def test_spec_on_the_wrong_topic_is_rejected() -> None:
    """A document published on another name's topic is invalid for that topic."""
    port = MemoryPort()
    controller = ready_controller(port)

    publish(controller, Kind.JOB, "other-name", job_payload())

    status = port.job_status("other-name")
    assert status.phase is Phase.FAILED and "metadata.name" in status.message


def test_identical_spec_again_is_a_no_op() -> None:
    """The same job spec published twice starts one script and publishes nothing more."""
    port = MemoryPort()
    controller = ready_controller(port)
    for doc in documents(FIXED):
        publish(controller, *doc)
    published = len(port.status_history)

    publish(controller, Kind.JOB, JOB, job_payload(), 3.0)

    assert len(port.scripts) == 1
    assert len(port.status_history) == published


def test_identical_spec_with_other_formatting_is_a_no_op() -> None:
    """The spec hash, not the bytes, identifies a job: JSON of the same spec is the same job."""
    port = MemoryPort()
    controller = ready_controller(port)
    for doc in documents(FIXED):
        publish(controller, *doc)
    as_json = yaml.safe_load(job_payload())

    publish(controller, Kind.JOB, JOB, json.dumps(as_json).encode())

    assert len(port.scripts) == 1


def test_different_spec_for_a_running_job_is_rejected() -> None:
    """A changed spec for a started job gets a Warning event and the running spec back; the job goes on."""
    port = MemoryPort()
    controller = ready_controller(port)
    for doc in documents(FIXED):
        publish(controller, *doc)
    original = port.scripts[0]
    changed = job_payload({"spec.trainingWorkers.0.workerSpec.parameters.0.value": "64"})

    publish(controller, Kind.JOB, JOB, changed, 2.0)

    status = port.job_status(JOB)
    assert status.events[-1].type == "Warning" and "delete and re-create the job" in status.events[-1].message
    assert port.restored_specs == [(Kind.JOB, JOB, job_payload())]
    assert port.scripts == [original]
    assert status.phase is Phase.PENDING  # still starting, unchanged


def test_deleting_a_job_clears_its_topics() -> None:
    """An empty retained spec deletes the job: script stopped, plan, status and globals cleared."""
    port = MemoryPort()
    controller = ready_controller(port)
    for doc in documents(FIXED):
        publish(controller, *doc)
    controller.on_script_frame(JOB, "a" * 32, WorkerFrame(type="config", exit_round=3), 1.0)
    assert port.plans[JOB] is not None

    publish(controller, Kind.JOB, JOB, b"", 2.0)

    assert port.signals == [(JOB, "a" * 32, "stop")]
    assert port.plans[JOB] is None and port.statuses[(Kind.JOB, JOB)] is None
    assert controller.job(JOB) is None


def test_deleting_an_invalid_job_clears_its_status() -> None:
    """The Failed status of an invalid job document goes away with the document."""
    port = MemoryPort()
    controller = ready_controller(port)
    publish(controller, Kind.JOB, JOB, b"kind: nonsense\n")

    publish(controller, Kind.JOB, JOB, b"")

    assert port.statuses[(Kind.JOB, JOB)] is None


def test_finished_job_is_not_rerun_after_a_restart() -> None:
    """A retained Succeeded status with the same spec hash means the job is not run again."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    docs = documents(FIXED)
    for doc in docs:
        publish(controller, *doc)
    old = JobStatus(name=JOB, phase=Phase.SUCCEEDED, spec_hash=fixed_spec_hash(), aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())

    controller.ready(0.0)

    assert port.scripts == []
    assert (Kind.JOB, JOB) not in port.statuses


def test_running_job_resumes_with_its_uid_after_a_restart() -> None:
    """A retained Running status with the same spec hash (the aggregator died mid-job): the run resumes, same uid."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, new_uid=lambda: "b" * 32)
    for doc in documents(FIXED):
        publish(controller, *doc)
    old = JobStatus(name=JOB, uid="c" * 32, phase=Phase.RUNNING, spec_hash=fixed_spec_hash())
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())

    controller.ready(0.0)

    assert [s.uid for s in port.scripts] == ["c" * 32]


def test_running_job_with_another_spec_hash_starts_a_new_run() -> None:
    """A retained Running status of another spec is not resumed: a new run with a new uid."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, new_uid=lambda: "b" * 32)
    for doc in documents(FIXED):
        publish(controller, *doc)
    old = JobStatus(name=JOB, uid="c" * 32, phase=Phase.RUNNING, spec_hash="0" * 64)
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())
    announce(controller, "edge1")
    announce(controller, "edge2")

    controller.ready(0.0)

    assert [s.uid for s in port.scripts] == ["b" * 32]


def test_leftovers_of_deleted_jobs_are_cleared_at_startup() -> None:
    """A retained status of a job of this node that was deleted (its kept spec left a tombstone) is cleared
    when the controller is ready. (A spec that is merely missing is not a delete: test_controller_durable.py.)"""
    port = MemoryPort()
    port.disk.kept.keep_spec(Kind.JOB, "gone", b"the deleted spec")
    port.disk.kept.forget_spec(Kind.JOB, "gone", deleted=True)
    controller = Controller(node="cloud0", port=port)
    old = JobStatus(name="gone", phase=Phase.RUNNING, aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, "gone", old.to_json())
    other = JobStatus(name="elsewhere", phase=Phase.RUNNING, aggregation_node="cloud9")
    controller.on_retained_status(Kind.JOB, "elsewhere", other.to_json())

    controller.ready(0.0)

    assert port.statuses[(Kind.JOB, "gone")] is None and port.plans["gone"] is None
    assert (Kind.JOB, "elsewhere") not in port.statuses


def test_job_of_another_aggregation_node_is_ignored() -> None:
    """A job whose aggregation worker runs on another (known) node gets no status and no script from this node."""
    port = MemoryPort()
    controller = ready_controller(port, node="cloud1")
    announce(controller, "cloud0", role="aggregator")

    for doc in documents(FIXED):
        publish(controller, *doc)

    assert (Kind.JOB, JOB) not in port.statuses
    assert port.scripts == []


def test_changed_spec_for_a_job_finished_before_a_restart_is_rejected() -> None:
    """After a restart, a finished job (retained status, same spec) still rejects a different spec."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    for doc in documents(FIXED):
        publish(controller, *doc)
    old = JobStatus(
        name=JOB, uid="c" * 32, phase=Phase.SUCCEEDED, spec_hash=fixed_spec_hash(), aggregation_node="cloud0"
    )
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())
    controller.ready(0.0)

    publish(controller, Kind.JOB, JOB, job_payload({"spec.trainingWorkers.0.workerSpec.parameters.0.value": "64"}), 1.0)

    assert port.scripts == []
    assert port.restored_specs == [(Kind.JOB, JOB, job_payload())]
    status = port.job_status(JOB)
    assert status.phase is Phase.SUCCEEDED and status.events[-1].reason == "SpecRejected"


def test_job_failed_on_references_can_be_replaced() -> None:
    """A job that never started (its references were missing) may be published again, fixed, and runs."""
    port = MemoryPort()
    controller = ready_controller(port, grace=1.0)
    for doc in documents(SEED):
        publish(controller, *doc)
    controller.tick(2.0)
    assert port.job_status(JOB).phase is Phase.FAILED

    publish(controller, Kind.JOB, JOB, job_payload(), 3.0)

    assert [s.job for s in port.scripts] == [JOB]


def test_deleting_a_job_finished_before_a_restart_clears_its_topics() -> None:
    """A job known only from its retained terminal status is cleared completely when its spec is deleted."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    for doc in documents(FIXED):
        publish(controller, *doc)
    old = JobStatus(
        name=JOB, uid="c" * 32, phase=Phase.SUCCEEDED, spec_hash=fixed_spec_hash(), aggregation_node="cloud0"
    )
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())
    controller.ready(0.0)

    publish(controller, Kind.JOB, JOB, b"", 1.0)

    assert port.plans[JOB] is None and port.statuses[(Kind.JOB, JOB)] is None


# -- the node root and the aggregation script process ------------------------------------------------


def test_paths_resolve_under_the_root_and_escapes_are_refused(tmp_path: Path) -> None:
    """Spec paths resolve under the node root; '..', a symlink out and URLs are refused."""
    root = tmp_path / "cloud0"
    (root / "code").mkdir(parents=True)
    (root / "code" / "out").symlink_to(tmp_path)

    assert NodeRoot(root).resolve("/model", "Model url") == (root / "model").resolve()
    assert NodeRoot(root).resolve("code/x/../y", "scriptDir") == (root / "code" / "y").resolve()
    for bad in ("/../etc", "/code/../../etc", "/code/out/secret", "s3://bucket/model"):
        with pytest.raises(PathEscapeError) as info:
            NodeRoot(root).resolve(bad, "Model url")
        assert info.value.url == bad and "Model url" in str(info.value)


def test_final_model_is_written_as_npz_with_a_json_beside_it(tmp_path: Path) -> None:
    """The final weights land at <Model url under root>/<model>.npz (the latest) and in the job run's version,
    readable by np.load, plus a JSON; a meta without a job cannot name a version."""
    arrays = [np.ones((2, 3), np.float32), np.arange(4, dtype=np.float32)]
    meta = {"job": "j", "uid": "0123456789", "round": 3}

    path = write_model(
        tmp_path, url="/model", model_name="m", arrays=arrays, names=["dense/kernel", "dense/kernel"], meta=meta
    )

    model = (tmp_path / "model").resolve()
    assert path == model / "versions" / "j-01234567-r3" / "m.npz"
    for npz in (path, model / "m.npz"):
        with np.load(npz) as archive:
            assert archive.files == ["dense/kernel", "dense/kernel_1"]
            np.testing.assert_array_equal(archive["dense/kernel_1"], arrays[1])
    side = json.loads((model / "m.json").read_text())
    assert side["round"] == 3 and side["keys"] == ["dense/kernel", "dense/kernel_1"]
    assert side["version"] == "j-01234567-r3" and side == json.loads(path.with_suffix(".json").read_text())
    with pytest.raises(ControllerError, match="a job name is needed"):
        write_model(tmp_path, url="/model", model_name="m", arrays=arrays, names=["w", "b"], meta={"round": 3})


def script_request(job: str = JOB) -> ScriptRequest:
    resources = parse_documents(FIXED.read_text(), str(FIXED))
    spec = next(r for r in resources if isinstance(r, FederatedLearningJob))
    return ScriptRequest(
        job=job,
        uid="d" * 32,
        namespace="default",
        worker=spec.spec.aggregation_worker.effective(),
        model=ModelRef(name="surface-defect-detection-model", url="/model", format="ckpt"),
        pretrained_model=None,
        participants_count=2,
    )


def test_script_environment_is_sednas(tmp_path: Path) -> None:
    """The script sees Sedna's variables and its parameters, never the service's MQTT settings."""
    base = {"PATH": "/usr/bin", "FL_MQTT_PASSWORD": "secret", "exit_round": "99"}

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "aggregate.py").write_text("")
    launch = aggregation_launch(script_request(), root=NodeRoot(tmp_path), node="cloud0")
    env = script_environment(launch.variables, fd=7, base=base)

    assert env["JOB_NAME"] == JOB and env["NAMESPACE"] == "default" and env["WORKER_NAME"].startswith("aggworker-")
    assert (
        env["MODEL_URL"] == str(tmp_path.resolve() / "model") and env["MODEL_NAME"] == "surface-defect-detection-model"
    )
    assert (
        env["PARTICIPANTS_COUNT"] == "2"
        and env["FL_WORKER_FD"] == "7"
        and env["FL_NODE_ROOT"] == str(tmp_path.resolve())
    )
    assert env["exit_round"] == "3"  # the job's parameter, under its own key
    assert env["PATH"] == "/usr/bin" and "FL_MQTT_PASSWORD" not in env
    assert "PRETRAINED_MODEL_URL" not in env


def test_example_aggregation_script_runs_under_the_supervisor(tmp_path: Path) -> None:
    """The example's aggregate.py, started for real, sends its config and exits 0 on finish."""
    (tmp_path / "code").mkdir()
    shutil.copy2(EXAMPLES / "aggregation_worker" / "aggregate.py", tmp_path / "code" / "aggregate.py")
    events: queue.Queue[ScriptEvent] = queue.Queue()
    supervisor = AggregationScripts(root=NodeRoot(tmp_path), node="cloud0", emit=events.put)

    supervisor.start(script_request())
    config = events.get(timeout=60)
    supervisor.signal(JOB, "d" * 32, "finish")
    exited = events.get(timeout=60)

    assert isinstance(config, ScriptFrame) and config.frame.type == "config"
    assert (config.frame.aggregation, config.frame.exit_round, config.frame.participants_count) == ("FedAvg", 3, 2)
    assert isinstance(exited, ScriptExited) and exited.code == 0
    assert (tmp_path / "logs" / JOB / "aggregation.log").is_file()
    assert supervisor.running() == []


def test_missing_aggregation_script_cannot_start(tmp_path: Path) -> None:
    """A scriptBootFile that does not exist under the root is a clear WorkerScriptError."""
    supervisor = AggregationScripts(root=NodeRoot(tmp_path), node="cloud0", emit=lambda _e: None)

    with pytest.raises(WorkerScriptError, match=r"aggregate\.py not found"):
        supervisor.start(script_request())
