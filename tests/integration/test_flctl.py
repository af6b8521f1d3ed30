"""flctl against a real Mosquitto: create, get, describe, delete, run in process through `flctl.cli.main`.

What reaches the broker is checked with a raw paho subscriber, independent of flctl's own client.
"""

from __future__ import annotations

import io
import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from flctl.cli import main
from schemas import (
    FederatedLearningJob,
    JobStatus,
    Kind,
    Phase,
    ResourceStatus,
    Topics,
    WorkerState,
    WorkerStatus,
    now,
    parse_for_topic,
)
from tests.helpers.flctl import FlctlRunner, Run, publish_retained, retained
from tests.helpers.mqtt import BrokerHandle, free_port

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
DATASETS = ("edge1-surface-defect-detection-dataset", "edge2-surface-defect-detection-dataset")
MODEL = "surface-defect-detection-model"
TOPICS = Topics()

VALID_DATASET = """\
apiVersion: sedna.io/v1alpha1
kind: Dataset
metadata:
  name: ds1
spec:
  url: /data/1.txt
  format: txt
  nodeName: edge1
"""


@pytest.fixture
def flctl(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> FlctlRunner:
    return FlctlRunner(broker, capsys)


def seed_created_lines() -> list[str]:
    return [
        f"dataset.sedna.io/{DATASETS[0]} created",
        f"dataset.sedna.io/{DATASETS[1]} created",
        f"model.sedna.io/{MODEL} created",
        f"federatedlearningjob.sedna.io/{JOB} created",
    ]


def running_status() -> JobStatus:
    workers = [
        WorkerStatus(job=JOB, node="edge1", state=WorkerState.TRAINING, round=2),
        WorkerStatus(job=JOB, node="edge2", state=WorkerState.WAITING, round=2),
    ]
    return JobStatus(
        name=JOB,
        phase=Phase.RUNNING,
        current_round=2,
        exit_round=3,
        start_time=now() - timedelta(minutes=30),
        aggregation_node="cloud0",
        workers=workers,
    )


# -- create ----------------------------------------------------------------------------------------


def test_create_publishes_every_document_retained(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """The seed YAML gives four `created` lines and four retained specs, each one valid document."""
    run = flctl("create", "-f", str(SEED))

    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == seed_created_lines()
    specs = retained(broker, TOPICS.all_specs())
    expected = {TOPICS.spec(Kind.DATASET, d) for d in DATASETS} | {
        TOPICS.spec(Kind.MODEL, MODEL),
        TOPICS.spec(Kind.JOB, JOB),
    }
    assert set(specs) == expected
    for topic, payload in specs.items():
        parsed = TOPICS.parse(topic)
        assert parsed.kind is not None and parsed.name is not None
        assert parse_for_topic(payload, topic, parsed.kind, parsed.name).metadata.name == parsed.name
    job_text = specs[TOPICS.spec(Kind.JOB, JOB)].decode()
    assert job_text.startswith("apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\n")  # readable YAML


def test_create_publishes_datasets_and_models_before_jobs(flctl: FlctlRunner, tmp_path: Path) -> None:
    """Whatever the file order, Datasets, then Models, then jobs are published (file order within a kind)."""
    docs = SEED.read_text().split("\n---\n")
    reordered = tmp_path / "job-first.yaml"
    reordered.write_text("\n---\n".join([docs[3], docs[2], docs[0], docs[1]]))

    run = flctl("create", "-f", str(reordered))

    assert run.code == 0
    assert run.out.splitlines() == seed_created_lines()


def test_create_reads_standard_input(flctl: FlctlRunner, broker: BrokerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-f -` reads the documents from stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO(VALID_DATASET))

    run = flctl("create", "-f", "-")

    assert (run.code, run.out) == (0, "dataset.sedna.io/ds1 created\n")
    assert set(retained(broker, TOPICS.all_specs())) == {TOPICS.spec(Kind.DATASET, "ds1")}


def test_create_again_reports_unchanged(flctl: FlctlRunner) -> None:
    """Creating identical documents a second time changes nothing and says so."""
    assert flctl("create", "-f", str(SEED)).code == 0

    run = flctl("create", "-f", str(SEED))

    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [line.replace(" created", " unchanged") for line in seed_created_lines()]


def test_create_refuses_a_changed_job(flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path) -> None:
    """A job whose retained spec differs is AlreadyExists (exit 1) and the retained spec stays as it was."""
    assert flctl("create", "-f", str(SEED)).code == 0
    changed = tmp_path / "changed.yaml"
    changed.write_text(SEED.read_text().replace('value: "3"', 'value: "5"'))

    run = flctl("create", "-f", str(changed))

    assert run.code == 1
    assert f'Error from server (AlreadyExists): federatedlearningjobs "{JOB}" already exists' in run.err.splitlines()
    assert f"dataset.sedna.io/{DATASETS[0]} unchanged" in run.out.splitlines()
    spec = retained(broker, TOPICS.spec(Kind.JOB, JOB))[TOPICS.spec(Kind.JOB, JOB)]
    job = parse_for_topic(spec, TOPICS.spec(Kind.JOB, JOB), Kind.JOB, JOB)
    assert isinstance(job, FederatedLearningJob)
    assert job.spec.aggregation_worker.effective().parameters["exit_round"] == "3"


BAD_DOCUMENTS = {
    "bad-yaml": (
        "apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: m\nspec: {}\n",
        ["bad.yaml document 2", "invalid YAML at line 13"],
    ),
    "unknown-kind": (
        "apiVersion: sedna.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\nspec: {}\n",
        ['bad.yaml document 2/2 (Pipeline "p")', "kind: expected one of Dataset, Model, FederatedLearningJob"],
    ),
    "wrong-api-version": (
        "apiVersion: sedna.io/v1\nkind: Model\nmetadata: {name: m}\nspec: {url: /model, format: ckpt}\n",
        ['bad.yaml document 2/2 (Model "m")', "apiVersion: expected 'sedna.io/v1alpha1', got 'sedna.io/v1'"],
    ),
    "missing-field": (
        "apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {name: ds2}\nspec: {format: txt, nodeName: edge2}\n",
        ['bad.yaml document 2/2 (Dataset "ds2")', "spec.url: required field is missing"],
    ),
    "wrong-type": (
        "apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {name: ds2}\nspec: {url: /d, format: txt, nodeName: [edge2]}\n",
        ['bad.yaml document 2/2 (Dataset "ds2")', "spec.nodeName: Input should be a valid string"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_create_with_a_bad_document_publishes_nothing(
    flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path, case: str
) -> None:
    """A bad second document fails the whole create (exit 1) naming document and field; not even the valid first one is published."""
    bad_doc, expected = BAD_DOCUMENTS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(VALID_DATASET + "---\n" + bad_doc)

    run = flctl("create", "-f", str(path))

    assert (run.code, run.out) == (1, "")
    assert run.err.startswith(f"error: {path}")
    for fragment in expected:
        assert fragment.replace("bad.yaml", str(path)) in run.err
    assert run.err.rstrip().endswith("nothing was published")
    assert retained(broker, TOPICS.everything()) == {}


def test_create_with_a_missing_file_publishes_nothing(flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path) -> None:
    """A missing file among good ones is reported in kubectl's words and nothing is published."""
    run = flctl("create", "-f", str(SEED), "-f", str(tmp_path / "nope.yaml"))

    assert run.code == 1
    assert f'the path "{tmp_path / "nope.yaml"}" does not exist' in run.err
    assert retained(broker, TOPICS.everything()) == {}


# -- get / describe --------------------------------------------------------------------------------


def test_get_fl_renders_the_published_status(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """A JobStatus retained on the status topic shows as PHASE, ROUND, WORKERS, EVAL ACC, ROUND TIME and AGE."""
    assert flctl("create", "-f", str(SEED)).code == 0
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), running_status().to_json())

    run = flctl("get", "fl")

    assert (run.code, run.err) == (0, "")
    header, row = run.out.splitlines()
    assert header == "NAME                       PHASE     ROUND   WORKERS   EVAL ACC   ROUND TIME   AGE"
    assert re.split(r" {3,}", row) == [JOB, "Running", "2/3", "2/2", "-", "-", "30m"]


def test_get_fl_wide_shows_a_job_without_status_as_pending(flctl: FlctlRunner) -> None:
    """Before the controller answers, a job is Pending with a message saying so."""
    assert flctl("create", "-f", str(SEED)).code == 0

    run = flctl("get", "federatedlearningjobs", JOB, "-o", "wide")

    assert run.code == 0
    row = re.split(r" {3,}", run.out.splitlines()[1])
    assert row[:6] == [JOB, "Pending", "-", "0/2", "-", "-"]
    assert re.fullmatch(r"\d+s", row[6])  # created moments ago (flctl stamps the spec)
    assert row[7:] == ["cloud0", "<none>", "no status from the controller yet"]


def test_get_datasets_models_and_nodes(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """Datasets, models and nodes render their own columns, with the controller's verdict in VALID."""
    assert flctl("create", "-f", str(SEED)).code == 0
    verdict = ResourceStatus(kind="Dataset", name=DATASETS[0], valid=True)
    publish_retained(broker, TOPICS.status(Kind.DATASET, DATASETS[0]), verdict.to_json())
    publish_retained(broker, TOPICS.node_status("edge1"), b'{"node": "edge1", "role": "edge", "state": "online"}')

    datasets, models, nodes = flctl("get", "ds"), flctl("get", "models"), flctl("get", "nodes")

    assert [re.split(r" {3,}", line)[:5] for line in datasets.out.splitlines()] == [
        ["NAME", "NODE", "URL", "FORMAT", "VALID"],
        [DATASETS[0], "edge1", "/data/1.txt", "txt", "True"],
        [DATASETS[1], "edge2", "/data/2.txt", "txt", "Unknown"],
    ]
    assert [re.split(r" {3,}", line) for line in models.out.splitlines()] == [
        ["NAME", "URL", "FORMAT", "VALID"],
        [MODEL, "/model", "ckpt", "Unknown"],
    ]
    assert re.split(r" {3,}", nodes.out.splitlines()[1])[:3] == ["edge1", "edge", "online"]


def test_get_one_job_as_yaml_has_spec_and_status(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """`-o yaml` prints the job document as published plus its status."""
    assert flctl("create", "-f", str(SEED)).code == 0
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), running_status().to_json())

    run = flctl("get", "fl", JOB, "-o", "yaml")

    doc = yaml.safe_load(run.out)
    assert run.code == 0
    assert (doc["kind"], doc["metadata"]["name"], doc["status"]["phase"]) == ("FederatedLearningJob", JOB, "Running")
    assert doc["spec"]["aggregationWorker"]["nodeName"] == "cloud0"


def test_describe_fl_shows_status_and_spec(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """describe prints the job's phase, round, workers and spec summary."""
    assert flctl("create", "-f", str(SEED)).code == 0
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), running_status().to_json())

    run = flctl("describe", "fl", JOB)

    lines = run.out.splitlines()
    assert run.code == 0
    assert f"Name:              {JOB}" in lines
    assert "Round:             2/3" in lines
    assert any(line.split()[:3] == ["edge2", "training", "Waiting"] for line in lines)
    assert any(line.split()[:2] == ["edge1", DATASETS[0]] for line in lines)


def test_watch_a_named_job_ends_when_it_finishes(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """`get fl NAME -w` prints again on each change and returns once the job Succeeded."""
    assert flctl("create", "-f", str(SEED)).code == 0
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), running_status().to_json())
    result: list[Run] = []
    watcher = threading.Thread(target=lambda: result.append(flctl("get", "fl", JOB, "-w", "--watch-timeout", "20")))
    watcher.start()
    done = running_status().model_copy(update={"phase": Phase.SUCCEEDED, "current_round": 3})
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), done.to_json())
    watcher.join(30)

    assert not watcher.is_alive()
    assert result[0].code == 0
    assert re.split(r" {3,}", result[0].out.splitlines()[-1])[1:3] == ["Succeeded", "3/3"]


def test_not_found_uses_kubectl_wording(flctl: FlctlRunner) -> None:
    """get, describe and delete of an unknown name exit 1 with `Error from server (NotFound)`."""
    expected = 'Error from server (NotFound): federatedlearningjobs "nope" not found\n'
    for verb in ("get", "describe", "delete"):
        run = flctl(verb, "fl", "nope")
        assert (run.code, run.out, run.err) == (1, "", expected), verb


# -- delete ----------------------------------------------------------------------------------------


def test_delete_clears_the_retained_spec(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    """delete publishes an empty retained payload: the job's spec is gone, the datasets stay."""
    assert flctl("create", "-f", str(SEED)).code == 0

    run = flctl("delete", "fl", JOB)

    assert (run.code, run.out) == (0, f'federatedlearningjob.sedna.io "{JOB}" deleted\n')
    specs = retained(broker, TOPICS.all_specs())
    assert TOPICS.spec(Kind.JOB, JOB) not in specs
    assert TOPICS.spec(Kind.DATASET, DATASETS[0]) in specs
    assert flctl("get", "fl", JOB).code == 1


# -- the broker ------------------------------------------------------------------------------------


def test_unreachable_broker_exits_3_quickly(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing listening, flctl says where it tried and why, exit 3, well within --timeout."""
    port = free_port()
    started = time.monotonic()

    code = main(["--port", str(port), "--timeout", "5", "get", "fl"])

    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith(f"error: cannot reach the MQTT broker at 127.0.0.1:{port}: ")
    assert "refused" in err.lower()
    assert elapsed < 3.0


def test_global_options_work_after_the_command_and_from_the_environment(
    broker: BrokerHandle, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--port after the command and FLCTL_HOST/FLCTL_PREFIX from the environment reach the broker."""
    monkeypatch.setenv("FLCTL_HOST", broker.host)
    monkeypatch.setenv("FLCTL_PREFIX", "site-a/fl")
    monkeypatch.setattr("sys.stdin", io.StringIO(VALID_DATASET))

    code = main(["create", "-f", "-", "--port", str(broker.port)])

    assert (code, capsys.readouterr().out) == (0, "dataset.sedna.io/ds1 created\n")
    assert set(retained(broker, "site-a/#")) == {Topics("site-a/fl").spec(Kind.DATASET, "ds1")}


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown resource type or a bad option is a usage error (exit 2), before any connection."""
    assert main(["get", "pipelines"]) == 2
    assert 'the server doesn\'t have a resource type "pipelines"' in capsys.readouterr().err
    assert main(["--port", "none", "get", "fl"]) == 2
    assert main([]) == 2
