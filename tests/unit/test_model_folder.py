"""Two jobs, one Model (issue 8): staging and recovery per job run, and no job replaces another job's model.

The edge's writer (`edge_trainer.save_model`, what `FederatedLearning` calls at the end) runs here with an estimator that saves itself
(no TensorFlow) and can be held inside its save, so the races of the issue are replayed exactly: a
save that recovers while another job's save is in its staging folder, and two saves at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cloud_aggregator.service import write_model
from edge_trainer import save_model
from runtime import MODEL_JOBS_FOLDER, job_model_folder, model_lock

WAIT = 30.0


class Estimator:
    """Saves one file naming its job; optionally waits in the middle of the save until released."""

    def __init__(self, job: str, hold: threading.Event | None = None) -> None:
        self.job = job
        self.hold = hold
        self.in_save = threading.Event()

    def save(self, path: str) -> str:
        Path(path).write_text(self.job)
        self.in_save.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT), "the test never released the save"
        return path


def save(url: Path, job: str, run: str = "uid-1", estimator: Estimator | None = None) -> Path:
    saved = save_model(
        estimator or Estimator(job), url, "ckpt", job=job, round_=3, digest="ab" * 32, num_tensors=1, run=run
    )
    return saved.path


CRASHING_SAVE = """
import os, signal, sys
from edge_trainer import save_model

class Estimator:
    def save(self, path):
        open(path, "w").write("half")
        os.kill(os.getpid(), signal.SIGKILL)  # the crash, in the middle of the save

save_model(Estimator(), sys.argv[1], "ckpt", job="crashed", round_=1, digest="x", num_tensors=1, run="uid-9")
"""


def test_a_job_writes_at_the_url_unless_another_jobs_model_is_there(tmp_path: Path) -> None:
    assert job_model_folder(tmp_path, "a", None) == tmp_path
    assert job_model_folder(tmp_path, "a", "a") == tmp_path
    assert job_model_folder(tmp_path, "b", "a") == tmp_path / MODEL_JOBS_FOLDER / "b"
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="a job name is needed"):
            job_model_folder(tmp_path, bad, "a")


def test_recovery_keeps_the_staging_of_another_jobs_save_in_progress(tmp_path: Path) -> None:
    """The issue's failure: job b's save removed job a's in-progress staging as stale; a's save then failed."""
    url = tmp_path / "model"
    hold = threading.Event()
    slow = Estimator("a", hold)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(save, url, "a", "uid-a", slow)
        assert slow.in_save.wait(WAIT)
        second = save(url, "b", "uid-b")  # recovers while a's staging holds a's model half written
        hold.set()
        first_path = first.result(WAIT)
    assert second == url / "model.ckpt"
    assert first_path == url / MODEL_JOBS_FOLDER / "a" / "model.ckpt"
    assert first_path.read_text() == "a" and second.read_text() == "b"
    assert not list(tmp_path.glob(".model.*")), "no staging, old or lock file left beside the model"


def test_two_jobs_saving_at_once_never_fail_and_never_clobber(tmp_path: Path) -> None:
    """Many rounds of two jobs saving to one url at the same moment: both saves succeed, both models stay whole."""
    for attempt in range(20):
        url = tmp_path / f"model{attempt}"
        start = threading.Barrier(2, timeout=WAIT)

        def run(job: str, url: Path = url, start: threading.Barrier = start) -> Path:
            start.wait()
            return save(url, job, f"uid-{job}")

        with ThreadPoolExecutor(2) as pool:
            paths = dict(zip(("a", "b"), pool.map(run, ("a", "b")), strict=True))
        owner = json.loads((url / "model.json").read_text())["job"]
        other = "b" if owner == "a" else "a"
        assert paths[owner] == url / "model.ckpt"
        assert paths[other] == url / MODEL_JOBS_FOLDER / other / "model.ckpt"
        for job, path in paths.items():
            assert path.read_text() == job
            assert json.loads((path.parent / "model.json").read_text())["job"] == job


def test_a_rerun_replaces_its_own_model_and_keeps_the_other_jobs(tmp_path: Path) -> None:
    url = tmp_path / "model"
    save(url, "a", "uid-1")
    assert save(url, "b", "uid-1") == url / "jobs" / "b" / "model.ckpt"
    assert save(url, "a", "uid-2", Estimator("a-again")) == url / "model.ckpt"  # a new run of job a
    assert (url / "model.ckpt").read_text() == "a-again"
    assert json.loads((url / "model.json").read_text())["uid"] == "uid-2"
    assert (url / "jobs" / "b" / "model.ckpt").read_text() == "b", "job b's model survived a's replacement"
    assert save(url, "b", "uid-2", Estimator("b-again")) == url / "jobs" / "b" / "model.ckpt"
    assert (url / "jobs" / "b" / "model.ckpt").read_text() == "b-again"


def test_a_url_naming_a_file_keeps_the_other_jobs_file_too(tmp_path: Path) -> None:
    url = tmp_path / "model" / "final.ckpt"
    assert save(url, "a") == url
    assert save(url, "b") == tmp_path / "model" / "jobs" / "b" / "final.ckpt"
    assert url.read_text() == "a"


def test_crash_recovery_removes_a_dead_writers_staging_and_keeps_a_live_ones(tmp_path: Path) -> None:
    """A save killed mid-way leaves its staging; the next save removes it, but not a live process's (another job)."""
    url = tmp_path / "model"
    save(url, "a", "uid-1")
    crashed = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(url)], timeout=WAIT, check=False)
    assert crashed.returncode == -9
    [leftover] = tmp_path.glob(".model.staging-crashed.*")
    legacy = tmp_path / ".model.staging-0123456789ab"  # named before issue 8: no pid, a crash's leftover
    live = tmp_path / f".model.staging-b.0123456789ab.{os.getppid()}.cafecafe"
    for folder in (legacy, live):
        folder.mkdir()
        (folder / "model.ckpt").write_text("half")

    save(url, "a", "uid-1")

    assert not leftover.exists() and not legacy.exists()
    assert live.exists(), "a live writer's staging was removed"


def test_crash_between_the_two_renames_puts_the_old_model_back(tmp_path: Path) -> None:
    url = tmp_path / "model"
    save(url, "a", "uid-1")
    url.rename(tmp_path / ".model.old-0123456789ab")  # the crash: the model moved aside, the new one not in
    save(url, "b", "uid-1")
    assert (url / "model.ckpt").read_text() == "a", "a's model is back at the url"
    assert (url / "jobs" / "b" / "model.ckpt").read_text() == "b"


def test_model_lock_is_bounded_and_leaves_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    with model_lock(folder):
        assert (tmp_path / ".model.lock").exists()
        with pytest.raises(TimeoutError, match="another save has held"):  # noqa: SIM117 - the nesting is the point
            with model_lock(folder, timeout=0.05):
                pass
    assert not (tmp_path / ".model.lock").exists()
    with model_lock(folder, timeout=0.05):  # free again
        pass


def test_the_cloud_writes_a_second_jobs_model_beside_the_first(tmp_path: Path) -> None:
    """The aggregator's final model: job b's goes to <url>/jobs/b/ when job a's is at the url, both whole."""
    start = threading.Barrier(2, timeout=WAIT)

    def write(job: str) -> Path:
        arrays = [np.full((64, 64), ord(job[0]), np.float32)]
        start.wait()
        return write_model(tmp_path, url="/model", model_name="m", arrays=arrays, names=["w"], meta={"job": job})

    with ThreadPoolExecutor(2) as pool:
        paths = dict(zip(("a", "b"), pool.map(write, ("a", "b")), strict=True))
    model = (tmp_path / "model").resolve()
    assert sorted(str(p.relative_to(model)) for p in paths.values()) in (
        ["jobs/b/m.npz", "m.npz"],
        ["jobs/a/m.npz", "m.npz"],
    )
    for job, path in paths.items():
        with np.load(path) as archive:
            assert float(archive["w"][0, 0]) == ord(job[0])
        assert json.loads(path.with_suffix(".json").read_text())["job"] == job
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")], "no temporary file left"


def test_the_cloud_removes_what_a_crashed_writer_left_and_nothing_else(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(WAIT)
    crashed = model / f".m.npz.tmp-a.{child.pid}.deadbeef"
    live = model / f".m.npz.tmp-b.{os.getppid()}.cafecafe"
    crashed.write_bytes(b"half")
    live.write_bytes(b"being written")
    write_model(tmp_path, url="/model", model_name="m", arrays=[np.zeros(2)], names=["w"], meta={"job": "a"})
    assert not crashed.exists() and live.exists()
