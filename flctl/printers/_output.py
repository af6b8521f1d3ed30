"""What `flctl get` prints for each `-o`: a table (plain or wide), the names, or JSON/YAML documents."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import yaml

from flctl._kinds import DATASETS, JOBS, MODELS, NODES, ResourceType
from flctl.printers._models import models_wide_table
from flctl.printers._tables import (
    dataset_headers,
    dataset_row,
    job_headers,
    job_row,
    model_headers,
    model_row,
    node_headers,
    node_row,
)
from flctl.printers._text import table
from flctl.printers._views import JobView, NodeView, ResourceView, SpecView, View
from schemas import API_VERSION, JobStatus, NodeStatus, ResourceStatus

OUTPUTS = ("wide", "json", "yaml", "name")


# -- documents for -o json / -o yaml ----------------------------------------------------------------


def _spec_document(spec: SpecView) -> dict[str, Any]:
    if isinstance(spec.data, dict):
        doc: dict[str, Any] = json.loads(json.dumps(spec.data, default=str))  # deep copy, JSON-safe
    else:
        doc = {"apiVersion": API_VERSION, "kind": spec.kind.kind, "metadata": {"name": spec.name}}
    metadata = doc.setdefault("metadata", {})
    if isinstance(metadata, dict) and spec.created is not None:
        metadata.setdefault("creationTimestamp", spec.created.isoformat().replace("+00:00", "Z"))
    if spec.error is not None:
        doc.setdefault("x-flctl", {})["specError"] = spec.error
    return doc


def _status_json(status: JobStatus | ResourceStatus | NodeStatus) -> dict[str, Any]:
    dumped: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def document(view: View) -> dict[str, Any]:
    """The resource as kubectl's -o json/yaml shows an object: the spec as written, plus its status."""
    doc = {"kind": "Node", "metadata": {"name": view.name}} if isinstance(view, NodeView) else _spec_document(view.spec)
    if view.status is not None:
        doc["status"] = _status_json(view.status)
    return doc


def list_document(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def dump(document: Any, output: str) -> str:
    """`-o json` (indented, like kubectl) or `-o yaml` (block style, keys in document order)."""
    if output == "json":
        return json.dumps(document, indent=4, ensure_ascii=False)
    text: str = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text.rstrip("\n")


# -- the printer per -o -----------------------------------------------------------------------------


def render_views(
    rtype: ResourceType, views: Sequence[View], output: str | None, now: datetime, *, single: bool = False
) -> str:
    """The text `get` prints for these views (`single`: one named resource, printed without a List)."""
    if output in ("json", "yaml"):
        docs = [document(v) for v in views]
        return dump(docs[0] if single and len(docs) == 1 else list_document(docs), output)
    if output == "name":
        return "\n".join(f"{rtype.qualified}/{v.name}" for v in views)
    if rtype is MODELS and output == "wide":  # the models, then one row per version the nodes hold
        return models_wide_table([v for v in views if isinstance(v, ResourceView)], now)
    headers, rows = table_rows(rtype, views, now, wide=output == "wide")
    return table(headers, [cells for _, cells in rows])


def table_rows(
    rtype: ResourceType, views: Sequence[View], now: datetime, *, wide: bool = False
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The table of `get` (plain or wide) as its headers and one (name, cells) per view: what a watch
    prints row by row."""
    if rtype is JOBS:
        jobs = [v for v in views if isinstance(v, JobView)]
        return list(job_headers(wide=wide)), [(v.name, job_row(v, now, wide=wide)) for v in jobs]
    if rtype is NODES:
        nodes = [v for v in views if isinstance(v, NodeView)]
        return node_headers(wide=wide), [(v.name, node_row(v, now, wide=wide)) for v in nodes]
    resources = [v for v in views if isinstance(v, ResourceView)]
    if rtype is DATASETS:
        return dataset_headers(wide=wide), [(v.name, dataset_row(v, now, wide=wide)) for v in resources]
    return model_headers(wide=wide), [(v.name, model_row(v, now, wide=wide)) for v in resources]
