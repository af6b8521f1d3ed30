"""`flctl report`'s content: a job's closed rounds as plots (matplotlib, Agg) and one self-contained HTML page.

Pure functions of `RoundRecord`s (and the job status for the page's summary); reading the broker is the
verb's part (flctl/_report.py, through the same round sources as `flctl top`).

_series.py   the records as per-round columns (`RoundSeries`, `WorkerSeries`), named as `flctl top` names them
_charts.py   the plots (`Chart`, `charts`): accuracy, loss, per-worker contribution, round durations, bytes
             on the wire, the final evaluation's confusion matrix
_html.py     the page (`render_html`): the plots as base64 PNG data URIs, the per-round and per-worker tables,
             the final confusion matrix as counts
"""

from __future__ import annotations

from flctl.report._charts import Chart, charts
from flctl.report._html import render_html
from flctl.report._series import RoundSeries, WorkerSeries

__all__ = ["Chart", "RoundSeries", "WorkerSeries", "charts", "render_html"]
