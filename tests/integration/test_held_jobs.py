"""Issue 8, across the wire: a real Mosquitto, `fl-cloud-aggregator` processes, `flctl create` in process.

A job held back by a missing Dataset or a node never seen fails after its (short) grace, says which
resource or node, and runs once that appears; a job whose aggregation node was never seen is reported by
the aggregator that is there, and run by the named one when it connects. The edges are only present
(their retained node status): running training is not the point here, the job reaching Running is.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from broker import MqttSettings
from flctl import cli as flctl_cli
from schemas import JobStatus, NodeState, NodeStatus, Phase, Topics, load_yaml_documents
from tests.helpers.mqtt import BrokerHandle, SessionFactory
from tests.helpers.status import JobWatcher

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "surface_defect_detection"
JOB = "surface-defect-detection"
DS2 = "edge2-surface-defect-detection-dataset"
TOPICS = Topics()
WAIT = 30.0

Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_aggregator(broker: BrokerHandle, tmp_path: Path) -> Iterator[Start]:
    """``start(node, *flags)``: an `fl-cloud-aggregator` process with the example's aggregation script."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(node: str, *flags: str) -> subprocess.Popen[bytes]:
        root = tmp_path / node
        (root / "code").mkdir(parents=True)
        shutil.copy2(EXAMPLE / "aggregation_worker" / "aggregate.py", root / "code" / "aggregate.py")
        log = root / "service.log"
        argv = [sys.executable, "-P", "-m", "cloud_aggregator", "--node", node, "--root", str(root)]
        argv += ["--host", broker.host, "--port", str(broker.port), *flags]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        procs.append((proc, log))
        return proc

    yield start
    for proc, log in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"the aggregator did not stop on SIGTERM; its log:\n{log.read_text()}") from None
        assert code == 0, log.read_text()


@pytest.fixture
def watch(mqtt_settings_factory: Callable[..., MqttSettings]) -> Iterator[JobWatcher]:
    with JobWatcher(mqtt_settings_factory("watch-held"), TOPICS, JOB) as watcher:
        yield watcher


@pytest.fixture
def present(session_factory: SessionFactory) -> Callable[[str], None]:
    """``present(node)``: publish `node`'s retained online status, as its edge service does on connect."""
    session, _ = session_factory("presence")

    def announce(node: str) -> None:
        status = NodeStatus(node=node, role="edge", state=NodeState.ONLINE)
        session.publish(TOPICS.node_status(node), status.to_json(), retain=True).wait(WAIT)

    return announce


def flctl_create(broker: BrokerHandle, path: Path) -> None:
    code = flctl_cli.main(
        ["--host", broker.host, "--port", str(broker.port), "--timeout", "5", "create", "-f", str(path)]
    )
    assert code == 0


def example_without(tmp_path: Path, name: str, **job_changes: str) -> Path:
    """The example's documents minus the one called `name`; `aggregation_node` renames the job's aggregation node."""
    docs = load_yaml_documents((EXAMPLE / "surface-defect-detection.yaml").read_text(), "example")
    kept = [d for d in docs if d["metadata"]["name"] != name]
    for d in kept:
        if d["kind"] == "FederatedLearningJob" and "aggregation_node" in job_changes:
            d["spec"]["aggregationWorker"]["nodeName"] = job_changes["aggregation_node"]
    path = tmp_path / f"without-{name or 'nothing'}.yaml"
    path.write_text(yaml.safe_dump_all(kept, sort_keys=False))
    return path


def phase(p: Phase) -> Callable[[JobWatcher], bool]:
    return lambda w: w.status is not None and w.status.phase is p


def last(watch: JobWatcher) -> JobStatus:
    assert watch.status is not None
    return watch.status


def test_job_failed_for_a_missing_dataset_runs_once_the_dataset_is_created(
    broker: BrokerHandle, start_aggregator: Start, watch: JobWatcher, present: Callable[[str], None], tmp_path: Path
) -> None:
    """Failed (InvalidReference naming the Dataset) after a 1 s grace; `flctl create -f` of the whole file
    then creates the Dataset (the job is `unchanged`) and the job runs."""
    present("edge1")
    present("edge2")
    start_aggregator("cloud0", "--reference-grace", "1")
    flctl_create(broker, example_without(tmp_path, DS2))

    watch.wait(phase(Phase.FAILED), WAIT, "Failed for the missing Dataset")
    failed = last(watch)
    assert failed.conditions[-1].reason == "InvalidReference" and f'Dataset "{DS2}" not found' in failed.message

    flctl_create(broker, EXAMPLE / "surface-defect-detection.yaml")

    watch.wait(phase(Phase.RUNNING), WAIT, "Running once the Dataset exists")
    events = [(e.reason, e.message) for e in last(watch).events]
    assert ("ReferencesResolved", f'Dataset "{DS2}" appeared: the job starts') in events
    assert not any(c.reason == "InvalidReference" for c in last(watch).conditions)
    # The edges' presence was retained before the aggregator started: read before any job was judged.
    assert not any("never seen" in s.message for s in watch.history), [s.message for s in watch.history]


def test_job_naming_a_node_never_seen_fails_naming_it_and_runs_when_it_appears(
    broker: BrokerHandle, start_aggregator: Start, watch: JobWatcher, present: Callable[[str], None], tmp_path: Path
) -> None:
    present("edge1")
    start_aggregator("cloud0", "--node-grace", "2")
    flctl_create(broker, EXAMPLE / "surface-defect-detection.yaml")

    watch.wait(
        lambda w: w.status is not None and "waiting for node edge2 (never seen" in w.status.message,
        WAIT,
        "Pending naming edge2",
    )
    watch.wait(phase(Phase.FAILED), WAIT, "Failed for the unknown node")
    failed = last(watch)
    assert failed.conditions[-1].reason == "UnknownNode"
    assert "node edge2 has never been seen" in failed.message

    present("edge2")

    watch.wait(phase(Phase.RUNNING), WAIT, "Running once edge2 is seen")
    assert ("ReferencesResolved", "node edge2 appeared: the job starts") in [
        (e.reason, e.message) for e in last(watch).events
    ]


def test_job_of_an_aggregation_node_never_seen_is_reported_then_run_by_that_node(
    broker: BrokerHandle, start_aggregator: Start, watch: JobWatcher, present: Callable[[str], None], tmp_path: Path
) -> None:
    """cloud0 runs; the job names cloud9: cloud0 reports it (Failed after 2 s, naming cloud9). When cloud9
    starts it takes the job over and runs it."""
    present("edge1")
    present("edge2")
    start_aggregator("cloud0", "--node-grace", "2")
    flctl_create(broker, example_without(tmp_path, "", aggregation_node="cloud9"))

    watch.wait(phase(Phase.FAILED), WAIT, "Failed: aggregation node never seen")
    failed = last(watch)
    assert (
        failed.conditions[-1].reason == "UnknownNode"
        and "aggregation node cloud9 has never been seen" in failed.message
    )
    assert failed.aggregation_node == "cloud9"

    start_aggregator("cloud9")

    watch.wait(phase(Phase.RUNNING), WAIT, "Running on cloud9")
    assert last(watch).aggregation_node == "cloud9" and last(watch).uid is not None
