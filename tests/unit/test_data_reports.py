"""What the edge and the job status make of the data loader's reports (issue 8): a data error is the
worker's whole failure message (no log tail), other errors keep the tail, and skipped label lines are
carried in the worker status and become one SamplesSkipped event of the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_aggregator.testing import MemoryPort
from schemas import WorkerFrame, WorkerState
from tests.helpers.nodes import edge_node_root
from tests.unit.test_edge_job import NODE, make_job, weights_blob
from tests.unit.test_job_rounds import JOB, report, training

DATA_ERROR = "1.txt line 3: image MT_Free/Imgs/x.jpg not found under /data"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node root with the Dataset's label file and the script the plan names (as test_edge_job's)."""
    return edge_node_root(tmp_path, NODE)


SKIPPED = ["2.txt line 469: Magnetic-tile-defect-datasets/dataset.jpg: 1888x1272 px is larger than a tile"]


def test_a_data_error_is_the_whole_failure_message(root: Path) -> None:
    h = make_job(root)
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="error", message=DATA_ERROR, error_kind="data"), None)
    h.job.on_exit(1)
    assert h.ports.last.state is WorkerState.FAILED
    assert h.ports.last.message == DATA_ERROR


def test_other_errors_keep_the_log_tail(root: Path) -> None:
    h = make_job(root)
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="error", message="ValueError: boom"), None)
    h.job.on_exit(1)
    assert h.ports.last.message.startswith("ValueError: boom\nlast lines of ")
    assert "Traceback" in h.ports.last.message


def test_skipped_lines_of_the_hello_stay_in_every_worker_status(root: Path) -> None:
    h = make_job(root)
    assert h.job.start()
    hello = WorkerFrame(type="hello", num_samples=522, skipped=1, skipped_lines=SKIPPED, has_body=True)
    h.job.on_frame(hello, weights_blob("init", 0))
    assert (h.ports.last.skipped, h.ports.last.skipped_lines) == (1, SKIPPED)
    assert h.ports.last.state is WorkerState.UPLOADING
    assert b'"skippedLines"' in h.ports.last.to_json()


def test_a_worker_without_skips_publishes_no_skip_fields(root: Path) -> None:
    h = make_job(root)
    assert h.job.start()
    h.job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert b"skipped" not in h.ports.last.to_json(), "statuses stay as they were when nothing is skipped"


def test_skipped_lines_become_one_warning_event_of_the_job() -> None:
    port = MemoryPort()
    job = training(port)
    report(job, "edge2", WorkerState.READY, skipped=1, skipped_lines=SKIPPED)
    report(job, "edge2", WorkerState.TRAINING, round=1, skipped=1, skipped_lines=SKIPPED)

    status = port.job_status(JOB)
    events = [e for e in status.events if e.reason == "SamplesSkipped"]
    assert len(events) == 1, "said once, not on every status"
    assert events[0].type == "Warning" and events[0].node == "edge2"
    assert events[0].message == f"worker edge2 skipped 1 label line(s) that are not samples: {SKIPPED[0]}"
    edge2 = status.worker("edge2")
    assert edge2 is not None and edge2.skipped == 1
