"""How flctl shows resources (kubectl's printers): pure functions of the retained topics and the time.

_views.py      retained spec and status payloads decoded into views (through `schemas`' YAML limits)
_text.py       the primitives: kubectl's ages and timestamps, cells, aligned tables and single rows
_tables.py     kubectl-style tables per kind and the `created`/`deleted` result lines
_rounds.py     a job's rounds: the per-round table (`flctl top`), the EVAL ACC and ROUND TIME columns
_output.py     what `get` prints per `-o`: a table, the names, or JSON/YAML documents
_describe.py   `describe`'s text for a job, a Dataset or Model, a node
_models.py     Models with the versions the nodes hold (`get models -o wide`)
"""

from __future__ import annotations

from flctl.printers._describe import describe_job, describe_node, describe_resource
from flctl.printers._models import collect_models, models_wide_table
from flctl.printers._output import OUTPUTS, document, dump, render_views, table_rows
from flctl.printers._rounds import (
    METRIC_COLUMNS,
    RoundRow,
    eval_accuracy_column,
    named_figures,
    round_rows,
    round_time_column,
    rounds_table,
)
from flctl.printers._sites import sites_line
from flctl.printers._tables import (
    action_line,
    deleted_line,
    jobs_table,
    round_column,
    worker_states,
    workers_column,
)
from flctl.printers._text import GAP, age, column_widths, human_duration, row_line, table, timestamp
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
    "GAP",
    "METRIC_COLUMNS",
    "OUTPUTS",
    "JobView",
    "NodeView",
    "ResourceView",
    "Retained",
    "RoundRow",
    "SpecView",
    "View",
    "action_line",
    "age",
    "collect_jobs",
    "collect_models",
    "collect_nodes",
    "collect_resources",
    "column_widths",
    "decode_spec",
    "deleted_line",
    "describe_job",
    "describe_node",
    "describe_resource",
    "document",
    "dump",
    "eval_accuracy_column",
    "human_duration",
    "jobs_table",
    "models_wide_table",
    "named_figures",
    "render_views",
    "round_column",
    "round_rows",
    "round_time_column",
    "rounds_table",
    "row_line",
    "sites_line",
    "table",
    "table_rows",
    "timestamp",
    "worker_states",
    "workers_column",
]
