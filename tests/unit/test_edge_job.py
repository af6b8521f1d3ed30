"""The per-job state machine of an edge, without a broker or a child process (fake ports and worker)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_trainer.engine import EdgeJob, LaunchSpec, UploadDone
from edge_trainer.testing import RecordingPorts, ScriptedWorker, global_transfer
from schemas import (
    DatasetRef,
    Evaluation,
    JobPlan,
    ModelRef,
    NodeRoot,
    PlannedWorker,
    ScriptRef,
    TransferManifest,
    WeightsKind,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    decode_weights,
    encode_weights,
)
from tests.helpers.nodes import edge_node_root

JOB = "sdd"
UID = "uid-1"
NODE = "edge1"


@dataclass
class Harness:
    job: EdgeJob
    ports: RecordingPorts
    worker: ScriptedWorker
    launches: list[LaunchSpec]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return edge_node_root(tmp_path, NODE)


def make_plan(
    *,
    dataset_node: str = NODE,
    dataset_url: str = "/data/1.txt",
    framework: str = "tensorflow",
    version: str | None = None,
    uid: str = UID,
) -> JobPlan:
    return JobPlan(
        job=JOB,
        uid=uid,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=3,
        participants=[NODE, "edge2"],
        model=ModelRef(name="m", url="/model", format="ckpt"),
        workers=[
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url=dataset_url, format="txt", node_name=dataset_node),
                script=ScriptRef(
                    dir="/code", boot_file="train.py", framework_type=framework, framework_version=version
                ),
                parameters={"batch_size": "32", "epochs": "1"},
            )
        ],
        chunk_size=64 * 1024,
    )


def make_job(root: Path, plan: JobPlan | None = None, tf_version: str | None = "2.21.0") -> Harness:
    ports, worker, launches = RecordingPorts(), ScriptedWorker(), []

    def launcher(spec: LaunchSpec, run_id: str) -> ScriptedWorker:
        launches.append(spec)
        return worker

    job = EdgeJob(
        plan or make_plan(),
        node=NODE,
        root=NodeRoot(root),
        ports=ports,
        launcher=launcher,
        tf_version=lambda: tf_version,
        pending_rounds=lambda: set(ports.outbox),
        delivered_round=lambda: ports.delivered,
    )
    return Harness(job, ports, worker, launches)


def weights_blob(kind: WeightsKind, round_: int, value: float = 0.0) -> bytes:
    arrays = [np.full((2, 3), value, dtype=np.float32), np.zeros(3, dtype=np.float32)]
    return encode_weights(arrays, kind=kind, job=JOB, round_=round_, sender=NODE, num_samples=8)


def global_model(round_: int, *, final: bool = False, uid: str = UID) -> tuple[TransferManifest, bytes]:
    return global_transfer(
        [np.full((2, 3), float(round_), dtype=np.float32)],
        job=JOB,
        uid=uid,
        round_=round_,
        num_samples=16,
        transfer=f"{round_:016x}",
        final=final,
    )


def started(root: Path) -> Harness:
    h = make_job(root)
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    return h


def test_plan_for_another_nodes_dataset_is_refused(root: Path) -> None:
    """A plan whose Dataset lives on another node fails here, naming the Dataset and its node; nothing starts."""
    h = make_job(root, make_plan(dataset_node="edge2"))
    assert not h.job.start()
    assert h.ports.last.state is WorkerState.FAILED
    assert 'Dataset "d1" belongs to node edge2' in h.ports.last.message
    assert h.launches == []


def hierarchical_plan(site: str) -> JobPlan:
    plan = make_plan()
    worker = plan.workers[0].model_copy(update={"parameters": {"hierarchical": "true", "site": site}})
    return plan.model_copy(update={"workers": [worker]})


def test_hierarchical_plan_naming_another_site_is_refused(root: Path) -> None:
    """An edge whose node.yaml says site-b, planned at site-a of a hierarchical job, fails at once, naming both
    sites and the field, instead of sending updates that site-a's aggregator could never receive."""
    h = make_job(root, hierarchical_plan("site-a"))
    h.job.site = "site-b"
    assert not h.job.start()
    assert h.ports.last.state is WorkerState.FAILED
    message = h.ports.last.message
    assert "spec.trainingWorkers[0].workerSpec.parameters site is 'site-a'" in message
    assert "this node is at site 'site-b'" in message
    assert h.launches == []


@pytest.mark.parametrize("own_site", ["site-a", None])
def test_hierarchical_plan_at_the_nodes_site_or_a_node_without_one_starts(root: Path, own_site: str | None) -> None:
    """The same site, or a node that names none (every node on one broker), starts as usual."""
    h = make_job(root, hierarchical_plan("site-a"))
    h.job.site = own_site
    assert h.job.start()
    assert len(h.launches) == 1


def test_framework_other_than_tensorflow_is_refused(root: Path) -> None:
    """frameworkType pytorch is refused with a clear reason."""
    h = make_job(root, make_plan(framework="pytorch"))
    assert not h.job.start()
    assert h.ports.last.state is WorkerState.FAILED
    assert 'frameworkType "pytorch" is not supported' in h.ports.last.message
    assert h.launches == []


def test_missing_tensorflow_is_refused(root: Path) -> None:
    """A node without TensorFlow refuses TensorFlow jobs."""
    h = make_job(root, tf_version=None)
    assert not h.job.start()
    assert "TensorFlow is not installed" in h.ports.last.message


def test_framework_version_mismatch_is_only_a_warning(root: Path) -> None:
    """frameworkVersion 2.3 on a node with TF 2.21 starts the script and says so in the status."""
    h = make_job(root, make_plan(version="2.3"), tf_version="2.21.0")
    assert h.job.start()
    assert h.ports.last.state is WorkerState.STARTING
    assert "frameworkVersion 2.3 requested, TensorFlow 2.21.0 is installed" in h.ports.last.message
    assert len(h.launches) == 1


def test_matching_framework_version_has_no_warning(root: Path) -> None:
    """frameworkVersion 2.21 on TF 2.21.0 starts without a warning."""
    h = make_job(root, make_plan(version="2.21"), tf_version="2.21.0")
    assert h.job.start()
    assert "frameworkVersion" not in h.ports.last.message


def test_dataset_path_escaping_the_root_is_refused(root: Path) -> None:
    """A Dataset url with '..' out of the root fails the worker with the path in the message."""
    h = make_job(root, make_plan(dataset_url="/../../etc/passwd"))
    assert not h.job.start()
    assert "escapes the node root" in h.ports.last.message
    assert h.launches == []


def test_missing_label_file_is_refused(root: Path) -> None:
    """A Dataset url that is not a file under the root is refused before the script starts."""
    h = make_job(root, make_plan(dataset_url="/data/2.txt"))
    assert not h.job.start()
    assert 'label file of Dataset "d1" not found: /data/2.txt' in h.ports.last.message


def test_missing_script_is_refused(root: Path) -> None:
    """A scriptBootFile that does not exist is refused."""
    (root / "code" / "train.py").unlink()
    h = make_job(root)
    assert not h.job.start()
    assert "training script train.py not found in scriptDir /code" in h.ports.last.message


def test_launch_gets_sedna_environment_and_parameters(root: Path) -> None:
    """The script gets Sedna's variables with resolved paths, and every parameter under its own key."""
    h = make_job(root)
    assert h.job.start()
    env = h.launches[0].env
    real = root.resolve()
    assert env["JOB_NAME"] == JOB and env["WORKER_NAME"] == NODE and env["NODE_NAME"] == NODE
    assert env["TRAIN_DATASET_URL"] == str(real / "data" / "1.txt")
    assert env["MODEL_URL"] == str(real / "model")
    assert env["MODEL_FORMAT"] == "ckpt" and env["MODEL_NAME"] == "m" and env["DATASET_NAME"] == "d1"
    assert env["PARTICIPANTS_COUNT"] == "1" and env["FL_NODE_ROOT"] == str(real)
    assert env["batch_size"] == "32" and env["epochs"] == "1"
    assert h.launches[0].cwd == real / "code"
    assert h.launches[0].log_path == real / "logs" / JOB / "worker.log"


def test_hello_uploads_the_initial_weights(root: Path) -> None:
    """hello's weights go up as the round-0 init update; once through, the worker is Ready."""
    h = make_job(root)
    assert h.job.start()
    blob = weights_blob("init", 0)
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), blob)
    [upload] = h.ports.uploads
    assert (upload.kind, upload.round, upload.num_samples, upload.uid) == ("init", 0, 8, UID)
    assert upload.blob == blob
    assert h.ports.state() is WorkerState.UPLOADING
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "init", 0))
    assert h.ports.state() is WorkerState.READY


def test_global_round_r_trains_round_r_plus_1(root: Path) -> None:
    """The global model of round 0 makes the script train round 1 from it."""
    h = started(root)
    manifest, blob = global_model(0)
    h.job.on_global(manifest, blob)
    assert h.worker.types() == [("train", 1)]
    assert h.worker.sent[0][1] == blob
    assert (h.ports.last.state, h.ports.last.round) == (WorkerState.TRAINING, 1)


def test_update_is_uploaded_for_its_round(root: Path) -> None:
    """The script's update of round 1 is uploaded with its metrics; the worker stays Uploading, with no
    status of its own for the moment between the broker's acknowledgement and the aggregator's, and waits
    once the aggregator says it stored the update."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(
        WorkerFrame(type="update", round=1, num_samples=8, metrics={"loss": 0.5}, has_body=True),
        weights_blob("update", 1),
    )
    assert [(u.kind, u.round) for u in h.ports.uploads] == [("init", 0), ("update", 1)]
    assert h.ports.last.state is WorkerState.UPLOADING and h.ports.last.metrics == {"loss": 0.5}
    published = len(h.ports.statuses)
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "update", 1))
    assert len(h.ports.statuses) == published and h.job.state is WorkerState.UPLOADING
    h.job.on_acked("update", 1)
    assert (h.ports.last.state, h.ports.last.round) == (WorkerState.WAITING, 1)
    assert "stored by the aggregator" in h.ports.last.message and h.ports.last.metrics == {"loss": 0.5}


def test_an_update_the_aggregator_does_not_confirm_in_time_is_said_sent_and_waiting(root: Path) -> None:
    """No receipt within the ack timeout (the aggregator down or busy): the worker says its update went out
    and is waiting, once; the receipt then moves it on as usual. Nothing for another round or an init."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "update", 1))
    published = len(h.ports.statuses)
    h.job.on_unconfirmed("update", 2, 30.0)
    h.job.on_unconfirmed("init", 1, 30.0)
    assert len(h.ports.statuses) == published
    h.job.on_unconfirmed("update", 1, 30.0)
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.WAITING, 1)
    assert h.ports.last.message.startswith("update of round 1 sent; the aggregator has not confirmed it for 30 s")
    h.job.on_unconfirmed("update", 1, 30.0)
    assert len(h.ports.statuses) == published + 1
    h.job.on_acked("update", 1)
    assert "stored by the aggregator" in h.ports.last.message


def test_an_update_through_after_a_link_notice_says_it_is_sent(root: Path) -> None:
    """After a "not through yet" notice, the upload getting through is said (still Uploading until the ack)."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "update", 1, transfer="ab" * 8, pending=True))
    assert "not through yet" in h.ports.last.message
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "update", 1, transfer="ab" * 8))
    assert h.ports.last.state is WorkerState.UPLOADING
    assert h.ports.last.message == "update of round 1 sent; waiting for the aggregator to store it"


def test_final_global_finishes_and_saved_completes(root: Path) -> None:
    """The final global model makes the script save; its saved frame turns the worker Completed."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    manifest, blob = global_model(1, final=True)
    h.job.on_global(manifest, blob)
    assert h.worker.types() == [("train", 1), ("finish", 1)]
    assert h.worker.sent[-1][1] == blob
    assert h.ports.state() is WorkerState.SAVING
    model_file = root.resolve() / "model" / "model.ckpt"
    h.job.on_frame(WorkerFrame(type="saved", round=1, model_path=str(model_file), model_digest="ab" * 32), None)
    assert h.ports.state() is WorkerState.COMPLETED
    assert h.ports.last.model_path == "/model/model.ckpt"
    assert h.ports.last.model_digest == "ab" * 32
    h.job.on_exit(0)
    assert h.ports.last.state is WorkerState.COMPLETED


def test_edge_behind_catches_up_to_the_newest_global(root: Path) -> None:
    """Waiting for global 1 but getting global 3: the script trains round 4 from it."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    h.job.on_global(*global_model(3))
    assert h.worker.types() == [("train", 1), ("train", 4)]
    assert h.ports.last.round == 4


def test_globals_before_hello_use_only_the_newest(root: Path) -> None:
    """Retained globals 0..2 that arrive while the script loads data lead to one train, of round 3."""
    h = make_job(root)
    assert h.job.start()
    for r in (0, 2, 1):
        h.job.on_global(*global_model(r))
    assert h.worker.sent == []
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert h.worker.types() == [("train", 3)]


def test_global_while_training_waits_for_the_update(root: Path) -> None:
    """A newer global that arrives while the script trains is used right after its update."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_global(*global_model(1))
    assert h.worker.types() == [("train", 1)]
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    assert h.worker.types() == [("train", 1), ("train", 2)]


def test_duplicate_and_older_globals_are_ignored(root: Path) -> None:
    """The same global twice, or an older one, never trains a round again."""
    h = started(root)
    h.job.on_global(*global_model(1))
    h.job.on_frame(WorkerFrame(type="update", round=2, num_samples=8, has_body=True), weights_blob("update", 2))
    h.job.on_global(*global_model(1))
    h.job.on_global(*global_model(0))
    assert h.worker.types() == [("train", 2)]


def test_global_of_another_job_run_is_ignored(root: Path) -> None:
    """A global model with another uid (an earlier run of the same job name) is ignored."""
    h = started(root)
    h.job.on_global(*global_model(0, uid="uid-old"))
    assert h.worker.sent == []


def test_error_frame_then_exit_fails_with_message_and_log_tail(root: Path) -> None:
    """The script's error message and the tail of its log end up in the Failed status."""
    h = started(root)
    h.job.on_frame(WorkerFrame(type="error", message="ValueError: boom"), None)
    assert h.worker.stopped
    h.job.on_exit(1)
    assert h.ports.last.state is WorkerState.FAILED
    assert h.ports.last.message.startswith("ValueError: boom")
    assert "worker.log" in h.ports.last.message and "Traceback" in h.ports.last.message


def test_crash_without_error_frame_reports_exit_code(root: Path) -> None:
    """A script that dies (no error frame) fails with its exit code and the log tail."""
    h = started(root)
    h.job.on_exit(-9)
    assert h.ports.last.state is WorkerState.FAILED
    assert "killed by signal 9" in h.ports.last.message


def test_script_that_lost_its_channel_while_the_service_runs_fails_saying_so(root: Path) -> None:
    """Exit code 69 (SERVICE_GONE_EXIT) while this service is alive is a fault on the service's side: the
    worker fails, naming it, with the script's one line in the log tail."""
    h = started(root)
    h.worker.tail = "fl-edge-trainer (pid 1) closed the worker channel without a stop: ... exits with code 69"
    h.job.on_exit(69)
    assert h.ports.last.state is WorkerState.FAILED
    assert "lost its worker channel to this service and exited (code 69)" in h.ports.last.message
    assert "closed the worker channel without a stop" in h.ports.last.message


def test_failed_upload_fails_the_worker(root: Path) -> None:
    """An upload that cannot get through fails the worker and stops the script."""
    h = started(root)
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "init", 0, error="not acknowledged"))
    assert h.ports.last.state is WorkerState.FAILED
    assert "uploading the init weights of round 0 failed: not acknowledged" in h.ports.last.message
    assert h.worker.stopped


def test_unexpected_frame_is_a_protocol_error(root: Path) -> None:
    """An update nobody asked for fails the worker instead of uploading it."""
    h = started(root)
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    assert h.ports.last.state is WorkerState.FAILED
    assert [u.kind for u in h.ports.uploads] == ["init"]


def test_deleted_job_stops_the_script_and_publishes_nothing_more(root: Path) -> None:
    """After delete, the script is stopped and later events change nothing."""
    h = started(root)
    count = len(h.ports.statuses)
    h.job.delete()
    h.job.on_exit(-15)
    h.job.on_global(*global_model(0))
    assert h.worker.stopped
    assert len(h.ports.statuses) == count
    assert h.worker.sent == []


def test_update_pending_in_the_broker_stays_uploading_until_the_aggregator_confirms(root: Path) -> None:
    """An upload the broker has not fully acknowledged (link down) is no failure; the ack moves the worker on."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "update", 1, transfer="ab" * 8, pending=True))
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.UPLOADING, 1)
    assert "kept in the outbox" in h.ports.last.message
    h.job.on_acked("update", 1)
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.WAITING, 1)
    assert "stored by the aggregator" in h.ports.last.message


def test_refused_update_is_said_and_the_next_global_trains_on(root: Path) -> None:
    """A final refusal (e.g. the round closed) shows in the status; the next global model is trained from."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    h.job.on_refused("update", 1, "round 1 is closed")
    assert h.ports.state() is WorkerState.WAITING
    assert "refused the update of round 1: round 1 is closed" in h.ports.last.message
    h.job.on_global(*global_model(1))
    assert h.worker.types() == [("train", 1), ("train", 2)]


def test_acks_of_another_round_change_nothing(root: Path) -> None:
    """A late ack of the init while training round 1 does not move the worker."""
    h = started(root)
    h.job.on_global(*global_model(0))
    count = len(h.ports.statuses)
    h.job.on_acked("init", 0)
    h.job.on_refused("init", 0, "x")
    assert len(h.ports.statuses) == count and h.ports.state() is WorkerState.TRAINING


def test_restart_skips_the_init_when_a_global_model_is_known(root: Path) -> None:
    """A restarted script's hello uploads nothing when the retained global model came first; it trains from it."""
    h = make_job(root)
    assert h.job.start()
    h.job.on_global(*global_model(2))
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert h.ports.uploads == []
    assert h.worker.types() == [("train", 3)]


def test_restart_skips_the_init_when_the_outbox_holds_an_update(root: Path) -> None:
    """An update pending in the outbox implies a round-0 model: no init upload after the restart."""
    h = make_job(root)
    h.ports.outbox = {2}
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert h.ports.uploads == []
    assert h.ports.state() is WorkerState.READY


def test_restart_does_not_retrain_a_round_whose_update_is_in_the_outbox(root: Path) -> None:
    """Global 1 with the round-2 update still in the outbox: no training; it waits for the confirmation,
    and global 2 then trains round 3."""
    h = make_job(root)
    h.ports.outbox = {2}
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    h.job.on_global(*global_model(1))
    assert h.worker.sent == []
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.WAITING, 2)
    assert "in the outbox" in h.ports.last.message
    h.ports.outbox = set()
    h.job.on_acked("update", 2)
    assert "stored by the aggregator" in h.ports.last.message
    h.job.on_global(*global_model(1))  # the same global again: still nothing to train
    assert h.worker.sent == []
    h.job.on_global(*global_model(2))
    assert h.worker.types() == [("train", 3)]


def test_restart_catches_up_when_the_outbox_is_empty(root: Path) -> None:
    """Global 1 after a restart with nothing in the outbox: round 2 is trained (catch-up)."""
    h = make_job(root)
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    h.job.on_global(*global_model(1))
    assert h.worker.types() == [("train", 2)]


def test_restart_after_a_confirmed_update_waits_for_its_round_instead_of_training_it_again(root: Path) -> None:
    """Issue 7: the aggregator confirmed the round-2 update (the outbox is empty) before the restart. No init,
    Waiting for round 2 says so, global 1 trains nothing, global 2 trains round 3."""
    h = make_job(root)
    h.ports.delivered = 2
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert h.ports.uploads == []
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.WAITING, 2)
    assert "round 2 stored by the aggregator before a restart; waiting for the global model of round 2" in (
        h.ports.last.message
    )
    h.job.on_global(*global_model(1))
    assert h.worker.sent == [] and h.ports.uploads == []
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.WAITING, 2)
    h.job.on_global(*global_model(2))
    assert h.worker.types() == [("train", 3)]


def test_restart_with_a_retained_global_older_than_the_confirmed_round_trains_nothing(root: Path) -> None:
    """The retained global model of round 1 arrives before the script's hello; round 2 was confirmed."""
    h = make_job(root)
    h.ports.delivered = 2
    assert h.job.start()
    h.job.on_global(*global_model(1))
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert h.worker.sent == [] and h.ports.uploads == []
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.WAITING, 2)
    h.job.on_global(*global_model(2))
    assert h.worker.types() == [("train", 3)]


def test_restart_after_a_confirmed_init_uploads_no_init(root: Path) -> None:
    """Only the init was confirmed: no second init; the first global model trains round 1."""
    h = make_job(root)
    h.ports.delivered = 0
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert h.ports.uploads == [] and h.ports.state() is WorkerState.READY
    h.job.on_global(*global_model(0))
    assert h.worker.types() == [("train", 1)]


def test_resume_completed_starts_nothing_and_publishes_nothing(root: Path) -> None:
    """A job run this node already completed takes over that state; no script, no status."""
    h = make_job(root)
    done = WorkerStatus(
        job=JOB,
        uid=UID,
        node=NODE,
        state=WorkerState.COMPLETED,
        round=3,
        model_path="/model/model.ckpt",
        model_digest="ab" * 32,
    )
    h.job.resume_completed(done)
    assert h.job.finished and h.job.model_digest == "ab" * 32
    assert h.launches == [] and h.ports.statuses == []
    h.job.on_global(*global_model(3, final=True))
    assert h.worker.sent == []


def test_evaluations_are_reported_with_the_next_status_apart_from_training_metrics(root: Path) -> None:
    """The script scores global model 1 when it starts round 2: the evaluation adds no status of its own, it
    travels with the round-2 upload (training metrics of round 2, evaluation of round 1), and the final
    model's evaluation with Completed."""
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(
        WorkerFrame(type="update", round=1, num_samples=8, metrics={"loss": 0.7}, has_body=True),
        weights_blob("update", 1),
    )
    h.job.on_global(*global_model(1))
    published = len(h.ports.statuses)
    scored = Evaluation.of(1, [[3, 1], [0, 2]], loss=0.4)

    h.job.on_frame(WorkerFrame(type="evaluated", round=1, evaluation=scored), None)

    assert len(h.ports.statuses) == published, "said with the next status"
    h.job.on_frame(
        WorkerFrame(type="update", round=2, num_samples=8, metrics={"loss": 0.6}, has_body=True),
        weights_blob("update", 2),
    )
    uploading = h.ports.last
    assert (uploading.state, uploading.round, uploading.metrics_round) == (WorkerState.UPLOADING, 2, 2)
    assert uploading.metrics == {"loss": 0.6} and uploading.evaluation == scored
    h.job.on_global(*global_model(2, final=True))
    final = Evaluation.of(2, [[4, 0], [0, 2]], loss=0.1)
    h.job.on_frame(WorkerFrame(type="evaluated", round=2, evaluation=final), None)
    h.job.on_frame(WorkerFrame(type="saved", round=2, model_path=str(root / "model"), model_digest="cd" * 32), None)
    assert h.ports.last.state is WorkerState.COMPLETED and h.ports.last.evaluation == final


def test_an_evaluation_of_a_model_never_sent_is_a_protocol_error(root: Path) -> None:
    """An evaluated frame for a round whose global model the script was not given fails the worker."""
    h = started(root)
    h.job.on_global(*global_model(0))

    h.job.on_frame(WorkerFrame(type="evaluated", round=3, evaluation=Evaluation.of(3, [[1]], loss=None)), None)

    assert h.ports.state() is WorkerState.FAILED and "never sent" in h.ports.last.message


def test_test_dataset_url_is_resolved_under_the_node_root(root: Path) -> None:
    """TEST_DATASET_URL (Sedna's held-out label file; the worker evaluates on it) is a spec path like the
    Dataset url: resolved under the root, and refused when missing or outside it."""
    (root / "data" / "test.txt").write_text("b.jpg,1\n")
    plan = make_plan()
    worker = plan.workers[0].model_copy(update={"parameters": {"TEST_DATASET_URL": "/data/test.txt"}})
    h = make_job(root, plan.model_copy(update={"workers": [worker]}))
    assert h.job.start()
    assert h.launches[0].env["TEST_DATASET_URL"] == str(root.resolve() / "data" / "test.txt")
    for url, problem in (("/data/none.txt", "not found"), ("/../outside.txt", "")):
        bad = worker.model_copy(update={"parameters": {"TEST_DATASET_URL": url}})
        h = make_job(root, plan.model_copy(update={"workers": [bad]}))
        assert not h.job.start()
        assert h.ports.state() is WorkerState.FAILED and "TEST_DATASET_URL" in h.ports.last.message
        assert problem in h.ports.last.message


def test_a_compressing_job_encodes_the_update_against_the_global_it_trained_from(root: Path) -> None:
    """compression=int8: the update's upload asks for int8 over its delta from global model 1 (what the script
    trained round 2 from, as the script got it); the init and a job without the parameter upload raw."""
    plan = make_plan()
    plan.workers[0].parameters["compression"] = "int8"
    h = make_job(root, plan)
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    arrays = [np.full((2, 3), 0.5, dtype=np.float32), np.ones(3, dtype=np.float32)]
    blob = encode_weights(arrays, kind="global", job=JOB, round_=1, sender="cloud0", num_samples=16, float16=True)
    manifest = global_transfer(arrays, job=JOB, uid=UID, round_=1, num_samples=16, transfer="1" * 16)[0]
    h.job.on_global(manifest, blob)  # a float16 global model: the script and the base get it decoded
    h.job.on_frame(WorkerFrame(type="update", round=2, num_samples=8, has_body=True), weights_blob("update", 2, 1.0))
    init, update = h.ports.uploads
    assert init.compression is None
    assert update.compression is not None and update.compression.codec == "int8"
    assert [a.tolist() for a in update.compression.base] == [a.tolist() for a in arrays]
    header, sent = decode_weights(update.blob)  # the uploader encodes it (before the outbox)
    assert not header.encoded and sent[0].tolist() == [[1.0] * 3] * 2


def test_a_job_without_the_parameter_uploads_raw(root: Path) -> None:
    h = started(root)
    h.job.on_global(*global_model(0))
    h.job.on_frame(WorkerFrame(type="update", round=1, num_samples=8, has_body=True), weights_blob("update", 1))
    assert [u.compression for u in h.ports.uploads] == [None, None]
