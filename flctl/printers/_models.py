"""`flctl get models -o wide`: each Model with its versions, and which node holds which (issue 9).

Nodes report the versions they hold per Model url on their retained node status
(`schemas.NodeStatus.models`); a Model's holdings are those reported under its url (the url as the
spec writes it: every node resolves it under its own root). The wide view is the models table with
VERSIONS (distinct versions the nodes report) and LATEST (the newest version a node's ``latest`` names),
then one row per version: its job, uid, round and digest, and the nodes holding it, ``*`` marking a
node whose ``latest`` is that version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from flctl.printers._tables import NONE, age, cell, table
from flctl.printers._views import ResourceView, Retained, collect_nodes, collect_resources
from schemas import HeldModel, HeldVersion, Kind, Model, Topics

MODEL_WIDE_HEADERS = ("NAME", "URL", "FORMAT", "VALID", "AGE", "VERSIONS", "LATEST", "MESSAGE")
VERSION_HEADERS = ("MODEL", "VERSION", "JOB", "UID", "ROUND", "DIGEST", "NODES")
_UID_CHARS = 8
_EPOCH = datetime.min.replace(tzinfo=UTC)


def collect_models(topics: Topics, retained: Mapping[str, Retained]) -> list[ResourceView]:
    """Every Model with a retained spec, each with what the nodes report holding under its url."""
    holdings: list[tuple[str, HeldModel]] = []
    for node in collect_nodes(topics, retained):
        if node.status is not None:
            holdings += [(node.name, held) for held in node.status.models or ()]
    views = []
    for view in collect_resources(topics, Kind.MODEL, retained):
        url = _url(view)
        views.append(replace(view, holders=tuple((n, h) for n, h in holdings if url is not None and h.url == url)))
    return views


def _url(view: ResourceView) -> str | None:
    res = view.spec.resource
    if isinstance(res, Model):
        return res.spec.url
    data = view.spec.data
    spec = data.get("spec") if isinstance(data, dict) else None
    url = spec.get("url") if isinstance(spec, dict) else None
    return url if isinstance(url, str) else None


def _versions(view: ResourceView) -> dict[str, tuple[HeldVersion, list[str]]]:
    """version -> (what a node says of it, the nodes holding it, ``*`` where it is the node's latest)."""
    found: dict[str, tuple[HeldVersion, list[str]]] = {}
    for node, held in sorted(view.holders, key=lambda item: item[0]):
        for version in held.versions:
            entry = found.setdefault(version.version, (version, []))
            entry[1].append(f"{node}*" if held.latest == version.version else node)
    return dict(sorted(found.items(), key=lambda item: (item[1][0].created or _EPOCH, item[0]), reverse=True))


def _latest(view: ResourceView, versions: Mapping[str, tuple[HeldVersion, list[str]]]) -> str:
    """The newest version any node's ``latest`` names."""
    pointed = {held.latest for _, held in view.holders if held.latest}
    return next((name for name in versions if name in pointed), NONE)


def models_wide_table(views: Sequence[ResourceView], now: datetime) -> str:
    """The models table with VERSIONS and LATEST, then the versions table (when any node reports one)."""
    rows, version_rows = [], []
    for view in views:
        res = view.spec.resource
        url, fmt = (res.spec.url, res.spec.format) if isinstance(res, Model) else (_url(view), None)
        versions = _versions(view)
        rows.append(
            [
                view.name,
                cell(url),
                cell(fmt),
                view.valid,
                age(view.spec.created, now),
                str(len(versions)),
                _latest(view, versions),
                cell(view.message),
            ]
        )
        for name, (held, nodes) in versions.items():
            uid = held.uid[:_UID_CHARS] if held.uid else None
            version_rows.append(
                [view.name, name, held.job, cell(uid), str(held.round), cell(held.digest), ",".join(nodes)]
            )
    text = table(MODEL_WIDE_HEADERS, rows)
    return f"{text}\n\n{table(VERSION_HEADERS, version_rows)}" if version_rows else text
