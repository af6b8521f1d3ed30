"""`runtime.write_version`: the one version-write sequence both model writers run (the edge's `save_model`, the
cloud's `write_model`), with the url-replacement step each passes in.

The steps here are small functions that record what they see on disk, so the order is checked where it
matters for crash safety: everything under the lock, a crashed writer's leftovers gone before the version
is built, the version whole before the url changes, ``latest`` moved only after the url's files, pruning
last; and a step that fails leaves ``latest`` on the previous version and the lock free.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime import MODEL_LATEST, latest_version, list_versions, model_lock, set_latest, write_version


def lock_held(folder: Path) -> bool:
    """Whether someone holds `folder`'s model lock (flock excludes another open file of this process too)."""
    try:
        with model_lock(folder, timeout=0.01):
            return False
    except TimeoutError:
        return True


def fill_with(text: str) -> Callable[[Path], None]:
    def fill(building: Path) -> None:
        (building / "model.ckpt").write_text(text)

    return fill


def replace_with(folder: Path, text: str) -> Callable[[], None]:
    def replace_url() -> None:
        (folder / "model.ckpt").write_text(text)

    return replace_url


def write(folder: Path, version: str, *, keep: int = 5) -> Path:
    """A plain write: the version holds `version` as its model, and so does the url."""
    return write_version(folder, version, fill=fill_with(version), replace_url=replace_with(folder, version), keep=keep)


def test_the_steps_run_in_order_under_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    write(folder, "v1")
    leftover = folder / "versions" / ".tmp-99999999.deadbeef"  # a version a dead writer was building
    leftover.mkdir()
    seen: list[tuple[str, bool, str | None]] = []

    def recover() -> None:
        assert leftover.exists(), "recover runs before the stale versions are removed"
        seen.append(("recover", lock_held(folder), latest_version(folder)))

    def fill(building: Path) -> None:
        assert not leftover.exists(), "a dead writer's version folder is removed before building"
        assert building.parent == folder / "versions" and building.name.startswith(".tmp-")
        assert not list(building.iterdir()), "the version is built in an empty folder"
        assert not (folder / "versions" / "v2").exists()
        (building / "model.ckpt").write_text("v2")
        seen.append(("fill", lock_held(folder), latest_version(folder)))

    def replace_url() -> None:
        version = folder / "versions" / "v2"
        assert (version / "model.ckpt").read_text() == "v2", "the version is committed whole before the url changes"
        assert not list((folder / "versions").glob(".tmp-*")), "the built folder was renamed, not copied"
        assert (folder / "versions" / "v1").exists(), "nothing is pruned before the url holds the new version"
        assert (folder / "model.ckpt").read_text() == "v1"
        (folder / "model.ckpt").write_text("v2")
        seen.append(("replace_url", lock_held(folder), latest_version(folder)))

    committed = write_version(folder, "v2", fill=fill, replace_url=replace_url, keep=1, recover=recover)

    assert seen == [("recover", True, "v1"), ("fill", True, "v1"), ("replace_url", True, "v1")]
    assert committed == folder / "versions" / "v2"
    assert latest_version(folder) == "v2" and (folder / MODEL_LATEST / "model.ckpt").read_text() == "v2"
    assert [p.name for p in list_versions(folder)] == ["v2"], "pruned to keep=1 after latest moved"
    assert not lock_held(folder) and not (tmp_path / ".model.lock").exists()


@pytest.mark.parametrize("failing", ["recover", "fill", "replace_url"])
def test_a_failing_step_leaves_latest_on_the_previous_version_and_frees_the_lock(tmp_path: Path, failing: str) -> None:
    folder = tmp_path / "model"
    write(folder, "v1", keep=1)

    def fail(*_: object) -> None:
        raise OSError(f"{failing} failed")

    steps: dict[str, Callable[..., None]] = {
        "recover": lambda: None,
        "fill": fill_with("v2"),
        "replace_url": replace_with(folder, "v2"),
        failing: fail,
    }
    with pytest.raises(OSError, match=f"{failing} failed"):
        write_version(
            folder, "v2", fill=steps["fill"], replace_url=steps["replace_url"], recover=steps["recover"], keep=1
        )

    assert latest_version(folder) == "v1"
    assert (folder / "model.ckpt").read_text() == "v1" and (folder / MODEL_LATEST / "model.ckpt").read_text() == "v1"
    committed = failing == "replace_url"  # the version is whole once committed; nothing is pruned after a failure
    assert sorted(p.name for p in list_versions(folder)) == (["v1", "v2"] if committed else ["v1"])
    assert not lock_held(folder) and not (tmp_path / ".model.lock").exists()

    write(folder, "v3", keep=1)  # the next write goes on, and clears what the failed one left
    assert latest_version(folder) == "v3" and (folder / "model.ckpt").read_text() == "v3"
    assert [p.name for p in (folder / "versions").iterdir()] == ["v3"]


def test_a_step_that_moves_latest_with_the_url_keeps_its_link(tmp_path: Path) -> None:
    """`replaces_latest`: the edge's folder swap brings ``latest`` in with the url's files, so the sequence
    leaves that link alone; without it, the sequence swaps in a new link after the step."""
    folder = tmp_path / "model"
    write(folder, "v1")
    links: list[int] = []

    def swap() -> None:
        set_latest(folder, "v2")  # stands for the link arriving with the url's folder
        links.append(os.lstat(folder / MODEL_LATEST).st_ino)

    write_version(folder, "v2", fill=fill_with("v2"), replace_url=swap, replaces_latest=True, keep=5)
    assert latest_version(folder) == "v2" and os.lstat(folder / MODEL_LATEST).st_ino == links[-1]

    def files_only() -> None:
        links.append(os.lstat(folder / MODEL_LATEST).st_ino)

    write_version(folder, "v3", fill=fill_with("v3"), replace_url=files_only, keep=5)
    assert latest_version(folder) == "v3" and os.lstat(folder / MODEL_LATEST).st_ino != links[-1]
