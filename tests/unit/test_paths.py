"""The node root: plan paths resolve under it, and nothing escapes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import NodeRoot, PathEscapeError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    node = tmp_path / "edge1"
    (node / "data").mkdir(parents=True)
    (node / "data" / "1.txt").write_text("a.jpg,0\n")
    return node


def test_absolute_plan_path_resolves_under_the_root(root: Path) -> None:
    """/data/1.txt is ROOT/data/1.txt."""
    assert NodeRoot(root).resolve("/data/1.txt") == root.resolve() / "data" / "1.txt"


def test_path_that_does_not_exist_yet_resolves(root: Path) -> None:
    """A Model url may not exist before the model is saved."""
    assert NodeRoot(root).resolve("/model") == root.resolve() / "model"


def test_relative_and_file_urls_resolve_under_the_root(root: Path) -> None:
    """data/1.txt and file:///data/1.txt mean the same as /data/1.txt."""
    node = NodeRoot(root)
    assert node.resolve("data/1.txt") == node.resolve("/data/1.txt") == node.resolve("file:///data/1.txt")


def test_dotdot_that_stays_inside_is_accepted(root: Path) -> None:
    """/data/../data/1.txt never leaves the root, so it is fine."""
    assert NodeRoot(root).resolve("/data/../data/1.txt") == root.resolve() / "data" / "1.txt"


def test_dotdot_escape_is_refused_with_a_clear_message(root: Path) -> None:
    """/../../etc/passwd is refused, naming the url, the root and where it leads."""
    with pytest.raises(PathEscapeError) as info:
        NodeRoot(root).resolve("/../../etc/passwd", 'Dataset "d1" url')
    message = str(info.value)
    assert 'Dataset "d1" url' in message
    assert "'/../../etc/passwd' escapes the node root" in message
    assert str(root.resolve()) in message
    assert "'..' leaves the root" in message
    assert info.value.resolved is not None and not info.value.resolved.is_relative_to(root.resolve())


def test_symlink_pointing_out_is_refused(root: Path, tmp_path: Path) -> None:
    """A symlink under the root that points outside it cannot be used to read outside the root."""
    outside = tmp_path / "secrets"
    outside.mkdir()
    (outside / "key.txt").write_text("x")
    (root / "data" / "leak").symlink_to(outside)
    with pytest.raises(
        PathEscapeError, match=r"escapes the node root .*: a symlink under the root points to .*secrets"
    ):
        NodeRoot(root).resolve("/data/leak/key.txt", "scriptDir")


def test_symlink_inside_the_root_is_accepted(root: Path) -> None:
    """A symlink that stays under the root resolves to its target."""
    (root / "current").symlink_to(root / "data")
    assert NodeRoot(root).resolve("/current/1.txt") == root.resolve() / "data" / "1.txt"


def test_root_given_through_a_symlink_works(root: Path, tmp_path: Path) -> None:
    """The root itself may be a symlink; paths resolve under its real location."""
    link = tmp_path / "edge-link"
    link.symlink_to(root)
    assert NodeRoot(link).resolve("/data/1.txt") == root.resolve() / "data" / "1.txt"


def test_remote_url_is_refused(root: Path) -> None:
    """s3:// urls are not local paths: data never leaves (or enters) a node through the plan."""
    with pytest.raises(PathEscapeError, match="is not a local path"):
        NodeRoot(root).resolve("s3://bucket/1.txt", "Dataset url")


def test_empty_url_is_refused(root: Path) -> None:
    """An empty url is refused instead of meaning the root."""
    with pytest.raises(PathEscapeError, match="is empty"):
        NodeRoot(root).resolve("  ", "Model url")


def test_to_url_maps_back_to_the_plan_path(root: Path) -> None:
    """A location under the root is reported as the plan-style path."""
    node = NodeRoot(root)
    assert node.to_url(root / "model" / "model.ckpt") == "/model/model.ckpt"
    assert node.to_url(root) == "/"
