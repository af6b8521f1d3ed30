"""Model versions (issue 9; two jobs, one Model: issue 8): a version per job run, the url holds the latest,
retention, staging and recovery per job run, and no job replaces another job's model.

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
from runtime import (
    DEFAULT_KEEP_VERSIONS,
    MODEL_VERSIONS_FOLDER,
    commit_version,
    keep_versions,
    latest_version,
    model_lock,
    new_version_folder,
    prune_versions,
    version_name,
)

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


def save(url: Path, job: str, run: str = "uid-1", estimator: Estimator | None = None, keep: int = 5) -> Path:
    """Save job `job`'s run `run` at `url`; return the version's artifact (`SavedModel.path`)."""
    saved = save_model(
        estimator or Estimator(job),
        url,
        "ckpt",
        job=job,
        round_=3,
        digest="ab" * 32,
        num_tensors=1,
        run=run,
        metrics={"accuracy": 0.75},
        keep=keep,
    )
    assert saved.version == version_of(saved.path)
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


def version_of(path: Path) -> str:
    """The version a saved artifact's path names (``<url>/versions/<version>/<artifact>``)."""
    assert path.parent.parent.name == MODEL_VERSIONS_FOLDER, path
    return path.parent.name


def test_a_version_is_named_after_the_job_run_and_round(tmp_path: Path) -> None:
    assert version_name("a", "0123456789abcdef", 3) == "a-01234567-r3"
    assert version_name("a", "", 0) == "a-r0"
    for bad in ("", "..", "a/b", "versions", "latest", ".hidden"):
        with pytest.raises(ValueError, match="a job name is needed"):
            version_name(bad, "u", 1)
    assert keep_versions({}) == DEFAULT_KEEP_VERSIONS
    assert keep_versions({"FL_MODEL_KEEP_VERSIONS": "2"}) == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="FL_MODEL_KEEP_VERSIONS"):
            keep_versions({"FL_MODEL_KEEP_VERSIONS": bad})


def test_each_run_is_a_version_and_the_url_holds_the_latest(tmp_path: Path) -> None:
    url = tmp_path / "model"
    first = save(url, "a", "uid-1", Estimator("first"))
    second = save(url, "a", "uid-2", Estimator("second"))
    assert (version_of(first), version_of(second)) == ("a-uid1-r3", "a-uid2-r3")
    assert first.read_text() == "first" and second.read_text() == "second", "the first run's model is kept"
    assert (url / "model.ckpt").read_text() == "second", "the url itself reads as the latest model"
    assert os.readlink(url / "latest") == "versions/a-uid2-r3"
    assert (url / "latest" / "model.ckpt").read_text() == "second"
    assert latest_version(url) == "a-uid2-r3"
    meta = json.loads((url / "model.json").read_text())
    assert {k: meta[k] for k in ("job", "uid", "round", "version", "digest")} == {
        "job": "a",
        "uid": "uid-2",
        "round": 3,
        "version": "a-uid2-r3",
        "digest": "ab" * 32,
    }
    assert meta["metrics"] == {"accuracy": 0.75}
    assert json.loads((first.parent / "model.json").read_text())["uid"] == "uid-1"
    assert (url / "model.ckpt").stat().st_ino == second.stat().st_ino, "the url's file is the version's (a hard link)"
    assert not list(tmp_path.glob(".model.*")), "no staging, old or lock file left beside the model"


def test_retention_keeps_the_newest_versions(tmp_path: Path) -> None:
    url = tmp_path / "model"
    paths = [save(url, "a", f"uid-{i}", Estimator(f"run{i}"), keep=2) for i in range(4)]
    assert sorted(p.name for p in (url / "versions").iterdir()) == ["a-uid2-r3", "a-uid3-r3"]
    assert not paths[0].exists() and paths[3].read_text() == "run3"
    assert (url / "model.ckpt").read_text() == "run3"
    # The version latest names is never pruned, even when older ones are newer by time.
    url2 = tmp_path / "other"
    save(url2, "a", "uid-1", keep=1)
    assert prune_versions(url2, 0) == [] and latest_version(url2) == "a-uid1-r3"


def test_two_jobs_saving_at_once_never_fail_and_both_versions_stay(tmp_path: Path) -> None:
    """Many rounds of two jobs saving to one url at the same moment: both saves succeed, both models stay whole,
    and the url holds whichever was saved last, whole."""
    for attempt in range(20):
        url = tmp_path / f"model{attempt}"
        start = threading.Barrier(2, timeout=WAIT)

        def run(job: str, url: Path = url, start: threading.Barrier = start) -> Path:
            start.wait()
            return save(url, job, f"uid-{job}")

        with ThreadPoolExecutor(2) as pool:
            paths = dict(zip(("a", "b"), pool.map(run, ("a", "b")), strict=True))
        for job, path in paths.items():
            assert path == url / "versions" / f"{job}-uid{job}-r3" / "model.ckpt"
            assert path.read_text() == job
            assert json.loads((path.parent / "model.json").read_text())["job"] == job
        latest = json.loads((url / "model.json").read_text())["job"]
        assert (url / "model.ckpt").read_text() == latest
        assert latest_version(url) == f"{latest}-uid{latest}-r3"


def test_recovery_keeps_the_staging_of_another_jobs_save_in_progress(tmp_path: Path) -> None:
    """Issue 8's failure: job b's save removed job a's in-progress staging as stale; a's save then failed."""
    url = tmp_path / "model"
    hold = threading.Event()
    slow = Estimator("a", hold)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(save, url, "a", "uid-a", slow)
        assert slow.in_save.wait(WAIT)
        second = save(url, "b", "uid-b")  # recovers while a's staging holds a's model half written
        hold.set()
        first_path = first.result(WAIT)
    assert first_path.read_text() == "a" and second.read_text() == "b"
    assert (url / "model.ckpt").read_text() == "a" and latest_version(url) == version_of(first_path)
    assert not list(tmp_path.glob(".model.*")), "no staging, old or lock file left beside the model"


def test_a_url_naming_a_file_keeps_its_versions_beside_it(tmp_path: Path) -> None:
    url = tmp_path / "model" / "final.ckpt"
    first = save(url, "a", "uid-1")
    second = save(url, "b", "uid-1")
    assert first == tmp_path / "model" / "versions" / "a-uid1-r3" / "final.ckpt"
    assert second == tmp_path / "model" / "versions" / "b-uid1-r3" / "final.ckpt"
    assert url.read_text() == "b" and first.read_text() == "a"
    assert latest_version(tmp_path / "model") == "b-uid1-r3"


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
    half_version = url / "versions" / ".tmp-99999999.deadbeef"  # a version being built when its writer died
    half_version.mkdir()
    (url / ".tmp-latest.99999999.deadbeef").symlink_to("versions/nowhere")

    save(url, "a", "uid-2")

    assert not leftover.exists() and not legacy.exists() and not half_version.exists()
    assert not list(url.glob(".tmp-*"))
    assert live.exists(), "a live writer's staging was removed"


def test_crash_between_the_two_renames_puts_the_old_model_back(tmp_path: Path) -> None:
    url = tmp_path / "model"
    save(url, "a", "uid-1")
    url.rename(tmp_path / ".model.old-0123456789ab")  # the crash: the model moved aside, the new one not in
    second = save(url, "b", "uid-1")
    assert (url / "versions" / "a-uid1-r3" / "model.ckpt").read_text() == "a", "a's version is back"
    assert (url / "model.ckpt").read_text() == "b" and second.read_text() == "b"


def test_crash_while_replacing_a_version_puts_the_old_one_back(tmp_path: Path) -> None:
    """A run saving the same version again dies after moving the old one aside: the next save finds it whole."""
    url = tmp_path / "model"
    first = save(url, "a", "uid-1", Estimator("kept"))
    other = save(url, "c", "uid-1", Estimator("c"))
    first.parent.rename(first.parent.parent / ".old-a-uid1-r3.0123abcd")  # the crash inside commit_version
    replaced = other.parent.parent / ".old-c-uid1-r3.0123abcd"  # died after the replacement, before the removal
    replaced.mkdir()
    (replaced / "model.ckpt").write_text("stale")
    save(url, "b", "uid-1")
    assert first.read_text() == "kept" and other.read_text() == "c"
    assert (url / "latest").resolve() == url / "versions" / "b-uid1-r3"
    assert sorted(p.name for p in (url / "versions").iterdir()) == ["a-uid1-r3", "b-uid1-r3", "c-uid1-r3"]


def test_crash_after_the_version_before_the_url_leaves_a_consistent_model(tmp_path: Path) -> None:
    """Killed between committing the version and replacing the url: the url still holds the previous latest,
    whole, its latest pointer leads to it, and the next save goes on."""
    url = tmp_path / "model"
    save(url, "a", "uid-1", Estimator("old"))
    # What the disk holds when a save dies right after `commit_version`: the new version whole, the url untouched.
    building = new_version_folder(url)
    (building / "model.ckpt").write_text("new")
    (building / "model.json").write_text(json.dumps({"job": "a", "uid": "uid-2", "round": 3}))
    commit_version(building, "a-uid2-r3")
    assert (url / "model.ckpt").read_text() == "old" and latest_version(url) == "a-uid1-r3"
    assert (url / "latest" / "model.ckpt").read_text() == "old"
    assert save(url, "a", "uid-3", Estimator("newer")).read_text() == "newer"
    assert (url / "model.ckpt").read_text() == "newer" and latest_version(url) == "a-uid3-r3"


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


def test_the_cloud_writes_each_jobs_model_as_a_version(tmp_path: Path) -> None:
    """The aggregator's final model: two jobs finishing at once each get a whole version; the url holds the
    latest; a second run of a job is a new version."""
    start = threading.Barrier(2, timeout=WAIT)

    def write(job: str, uid: str = "uid-1", value: float | None = None) -> Path:
        arrays = [np.full((64, 64), value if value is not None else ord(job[0]), np.float32)]
        meta = {"job": job, "uid": uid, "round": 2, "digest": "cd" * 32, "savedAt": "2026-01-01T00:00:00+00:00"}
        return write_model(tmp_path, url="/model", model_name="m", arrays=arrays, names=["w"], meta=meta)

    def together(job: str) -> Path:
        start.wait()
        return write(job)

    with ThreadPoolExecutor(2) as pool:
        paths = dict(zip(("a", "b"), pool.map(together, ("a", "b")), strict=True))
    model = (tmp_path / "model").resolve()
    assert {str(p.relative_to(model)) for p in paths.values()} == {
        "versions/a-uid1-r2/m.npz",
        "versions/b-uid1-r2/m.npz",
    }
    for job, path in paths.items():
        with np.load(path) as archive:
            assert float(archive["w"][0, 0]) == ord(job[0])
        assert json.loads(path.with_suffix(".json").read_text())["job"] == job
    latest = json.loads((model / "m.json").read_text())
    assert latest_version(model) == latest["version"]
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")], "no temporary file left"

    again = write("a", "uid-2", value=7.0)
    assert again == model / "versions" / "a-uid2-r2" / "m.npz"
    with np.load(model / "m.npz") as archive:
        assert float(archive["w"][0, 0]) == 7.0
    assert latest_version(model) == "a-uid2-r2" and paths["a"].exists()


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
