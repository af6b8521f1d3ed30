"""How flctl shows resources (kubectl's printers): pure functions of the retained topics and the time.

_views.py      retained spec and status payloads decoded into views (through `schemas`' YAML limits)
_tables.py     kubectl-style tables, ages, cells and the `created`/`deleted` result lines
_output.py     what `get` prints per `-o`: a table, the names, or JSON/YAML documents
_describe.py   `describe`'s text for a job, a Dataset or Model, a node
_models.py     Models with the versions the nodes hold (`get models -o wide`)
"""

from __future__ import annotations

from flctl.printers._describe import describe_job, describe_node, describe_resource
from flctl.printers._models import collect_models, models_wide_table
from flctl.printers._output import OUTPUTS, document, render_views
from flctl.printers._tables import (
    action_line,
    age,
    deleted_line,
    human_duration,
    jobs_table,
    round_column,
    table,
    timestamp,
    worker_states,
    workers_column,
)
from flctl.printers._views import (
    CREATED_AT,
    CREATED_BY,
    JobView,
    NodeView,
    ResourceView,
    Retained,
    SpecView,
    View,
    collect_jobs,
    collect_nodes,
    collect_resources,
    decode_spec,
)

__all__ = [
    "CREATED_AT",
    "CREATED_BY",
    "OUTPUTS",
    "JobView",
    "NodeView",
    "ResourceView",
    "Retained",
    "SpecView",
    "View",
    "action_line",
    "age",
    "collect_jobs",
    "collect_models",
    "collect_nodes",
    "collect_resources",
    "decode_spec",
    "deleted_line",
    "describe_job",
    "describe_node",
    "describe_resource",
    "document",
    "human_duration",
    "jobs_table",
    "models_wide_table",
    "render_views",
    "round_column",
    "table",
    "timestamp",
    "worker_states",
    "workers_column",
]
