"""What a node reports of the model versions it holds (issue 9), and how `flctl get models -o wide` shows it.

`runtime.held_models` reads versions written by the real writers (`edge_trainer.save_model`, the cloud's
`write_model`); the printer is fed the retained messages a broker would deliver (spec, status, node statuses).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cloud_aggregator.service import write_model
from edge_trainer import save_model
from flctl.printers import Retained, collect_models, models_wide_table
from runtime import ModelUrlBook, held_models
from schemas import MAX_HELD_VERSIONS, HeldModel, HeldVersion, Kind, NodeRoot, NodeState, NodeStatus, Topics

TOPICS = Topics()
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Estimator:
    def save(self, path: str) -> str:
        Path(path).write_text("weights")
        return path


def save(root: Path, url: str, job: str, uid: str, round_: int = 2) -> str:
    saved = save_model(
        Estimator(), root / url.lstrip("/"), "ckpt", job=job, round_=round_, digest="f" * 64, num_tensors=1, run=uid
    )
    return saved.version


def test_held_models_lists_the_versions_of_each_url_newest_first(tmp_path: Path) -> None:
    root = NodeRoot(tmp_path)
    first = save(tmp_path, "/model", "job", "0123456789")
    second = save(tmp_path, "/model", "job", "abcdef0123")
    other = save(tmp_path, "/other/final.ckpt", "job2", "u2")

    held = held_models(root, ["/model", "/other/final.ckpt", "/never-written", "/model"])

    assert [h.url for h in held] == ["/model", "/other/final.ckpt"], "a url with no version is left out"
    model = held[0]
    assert (model.latest, model.count) == (second, 2)
    assert [v.version for v in model.versions] == [second, first]
    assert model.versions[0] == HeldVersion(
        version="job-abcdef01-r2",
        job="job",
        uid="abcdef0123",
        round=2,
        digest="f" * 16,
        created=model.versions[0].created,
    )
    assert held[1].latest == other
    assert len(held_models(root, ["/model"], per_url=1)[0].versions) == 1


def test_the_cloud_version_is_read_from_its_own_json(tmp_path: Path) -> None:
    meta = {"job": "j", "uid": "cafe0000", "round": 4, "digest": "e" * 64, "savedAt": NOW.isoformat()}
    write_model(tmp_path, url="/model", model_name="m", arrays=[np.zeros(2)], names=["w"], meta=meta)
    [held] = held_models(NodeRoot(tmp_path), ["/model"])
    assert held.latest == "j-cafe0000-r4"
    assert held.versions[0].model_dump(exclude_none=True) == {
        "version": "j-cafe0000-r4",
        "job": "j",
        "uid": "cafe0000",
        "round": 4,
        "digest": "e" * 16,
        "created": NOW,
    }


def test_the_url_book_survives_a_restart_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "_model_urls.json"
    book = ModelUrlBook(path)
    assert book.add("/model") and not book.add("/model")
    assert ModelUrlBook(path).urls == ("/model",)
    path.write_text("not json")
    assert ModelUrlBook(path).urls == (), "an unreadable book is started again, not fatal"


def test_node_status_bounds_what_it_carries() -> None:
    version = HeldVersion(version="v", job="j", round=1)
    with pytest.raises(ValidationError, match="at most 8 items"):
        HeldModel(url="/m", versions=[version] * (MAX_HELD_VERSIONS + 1))
    with pytest.raises(ValidationError, match="digest"):
        HeldVersion(version="v", job="j", round=1, digest="a" * 64)
    status = NodeStatus(node="e", role="edge", state=NodeState.ONLINE, models=[HeldModel(url="/m", versions=[version])])
    again = NodeStatus.model_validate_json(status.to_json())
    assert again == status
    assert "models" not in json.loads(NodeStatus(node="e", role="edge", state=NodeState.OFFLINE).to_json())


def retained_for(tmp_path: Path) -> dict[str, Retained]:
    """A Model spec and status, and three nodes' statuses as the services publish them."""
    spec = b"apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {url: /model, format: ckpt}\n"
    status = json.dumps({"kind": "Model", "name": "m", "valid": True, "message": "ok"}).encode()

    def node(name: str, *versions: tuple[str, int], latest: str | None) -> Retained:
        held = HeldModel(
            url="/model",
            latest=latest,
            count=len(versions),
            versions=[
                HeldVersion(
                    version=v, job="job", uid=f"{v[-6:]}ffff", round=2, digest="a" * 16, created=NOW.replace(hour=h)
                )
                for v, h in versions
            ],
        )
        other = HeldModel(url="/elsewhere", latest="x", count=1, versions=[HeldVersion(version="x", job="x", round=1)])
        return Retained(NodeStatus(node=name, role="edge", state=NodeState.ONLINE, models=[held, other]).to_json())

    return {
        TOPICS.spec(Kind.MODEL, "m"): Retained(spec),
        TOPICS.status(Kind.MODEL, "m"): Retained(status),
        TOPICS.node_status("edge1"): node("edge1", ("job-new-r2", 11), ("job-old-r2", 10), latest="job-new-r2"),
        TOPICS.node_status("edge2"): node("edge2", ("job-old-r2", 10), latest="job-old-r2"),
        TOPICS.node_status("cloud0"): Retained(
            NodeStatus(node="cloud0", role="aggregator", state=NodeState.ONLINE).to_json()
        ),
    }


def test_get_models_wide_shows_versions_and_which_node_holds_which(tmp_path: Path) -> None:
    views = collect_models(TOPICS, retained_for(tmp_path))
    text = models_wide_table(views, NOW)
    rows = [re.split(r" {3,}", line) for line in text.splitlines()]
    assert rows[0] == ["NAME", "URL", "FORMAT", "VALID", "AGE", "VERSIONS", "LATEST", "MESSAGE"]
    assert rows[1][:4] == ["m", "/model", "ckpt", "True"] and rows[1][5:] == ["2", "job-new-r2", "ok"]
    assert rows[2] == [""]
    assert rows[3:] == [
        ["MODEL", "VERSION", "JOB", "UID", "ROUND", "DIGEST", "NODES"],
        ["m", "job-new-r2", "job", "new-r2ff", "2", "a" * 16, "edge1*"],
        ["m", "job-old-r2", "job", "old-r2ff", "2", "a" * 16, "edge1,edge2*"],
    ]
