"""The report as one self-contained HTML page: the plots as base64 PNG data URIs, inline CSS, no script,
nothing fetched (it opens offline, from a mail attachment or a CI artifact), then the per-round and
per-worker figures as tables.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from html import escape

from flctl.printers import METRIC_COLUMNS, timestamp
from flctl.report._charts import Chart
from flctl.report._series import RoundSeries, WorkerSeries
from schemas import JobStatus

NO_VALUE = "-"  # as in `flctl top`

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .9em; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
"""


def _number(value: float | None, spec: str = ".3f") -> str:
    return NO_VALUE if value is None else format(value, spec)


def _size(value: int | None) -> str:
    if value is None:
        return NO_VALUE
    for divisor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= divisor:
            return f"{value / divisor:.1f} {unit}"
    return f"{value} B"


def _row(cells: Sequence[str], *, header: bool = False, attrs: str = "", text_columns: Sequence[int] = ()) -> str:
    tag = "th" if header else "td"
    parts = [
        f'<{tag} class="text">{escape(c)}</{tag}>' if i in text_columns else f"<{tag}>{escape(c)}</{tag}>"
        for i, c in enumerate(cells)
    ]
    return f"<tr{attrs}>{''.join(parts)}</tr>"


def rounds_table(series: RoundSeries) -> str:
    """One row per round (``data-round``): participants, samples, duration, bytes, the training and evaluation
    figures some round has (as `flctl top` names them), evaluated samples, who was left out."""
    metrics = [(h, g, m) for h, g, m in METRIC_COLUMNS if series.has(g, m)]
    evaluated = any(r.eval is not None for r in series.records)
    headers = ["ROUND", "WORKERS", "SAMPLES", "DURATION (s)", "BYTES IN", "BYTES OUT", *(h for h, _, _ in metrics)]
    headers += ["EVAL SAMPLES"] if evaluated else []
    headers.append("LEFT OUT")
    lines = [_row(headers, header=True, text_columns=[len(headers) - 1])]
    for record, row in zip(series.records, series.rows, strict=True):
        cells = [
            str(row.round),
            str(row.participants),
            str(row.samples),
            _number(row.duration, ".1f"),
            _size(record.bytes_in),
            _size(record.bytes_out),
        ]
        cells += [_number(getattr(row, g).get(m)) for _, g, m in metrics]
        if evaluated:
            cells.append(str(record.eval.num_samples) if record.eval is not None else NO_VALUE)
        cells.append(", ".join(row.missing) or NO_VALUE)
        lines.append(_row(cells, attrs=f' data-round="{row.round}"', text_columns=[len(cells) - 1]))
    return '<table class="rounds">\n' + "\n".join(lines) + "\n</table>"


def workers_table(series: RoundSeries) -> str:
    """One row per worker per round it took part in."""
    headers = ["ROUND", "WORKER", "SAMPLES", "SHARE", "UPLOAD", "UPLOAD (s)", "TRAIN ACC", "EVAL ACC"]
    lines = [_row(headers, header=True, text_columns=[1])]
    for index, round_ in enumerate(series.rounds):
        for worker in series.workers:
            lines.extend(_worker_row(worker, index, round_))
    return '<table class="workers">\n' + "\n".join(lines) + "\n</table>"


def _worker_row(worker: WorkerSeries, index: int, round_: int) -> list[str]:
    samples = worker.samples[index]
    if samples is None:
        return []
    share = worker.share[index]
    cells = [
        str(round_),
        worker.node,
        str(samples),
        NO_VALUE if share is None else f"{share:.1%}",
        _size(worker.upload_bytes[index]),
        _number(worker.upload_seconds[index]),
        _number(worker.train_accuracy[index]),
        _number(worker.eval_accuracy[index]),
    ]
    return [_row(cells, attrs=f' data-round="{round_}" data-worker="{escape(worker.node)}"', text_columns=[1])]


def confusion_table(series: RoundSeries) -> str:
    """The final evaluation's confusion matrix as counts (rows: true class, columns: predicted), or ""."""
    final = series.final_evaluation
    if final is None or not final.confusion:
        return ""
    classes = range(len(final.confusion))
    lines = [_row(["true \\ predicted", *(str(c) for c in classes)], header=True, text_columns=[0])]
    lines += [
        _row([str(i), *(str(v) for v in row)], text_columns=[0])
        for i, row in zip(classes, final.confusion, strict=True)
    ]
    return (
        f"<h2>Confusion matrix of round {final.round} (federated evaluation, counts)</h2>\n"
        f'<table class="confusion">\n' + "\n".join(lines) + "\n</table>"
    )


def _figure(chart: Chart) -> str:
    data = base64.b64encode(chart.png).decode("ascii")
    return (
        f'<figure id="{escape(chart.name)}">\n<h2>{escape(chart.title)}</h2>\n'
        f'<img alt="{escape(chart.title)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption>{escape(chart.caption)}</figcaption>\n</figure>"
    )


def render_html(
    job: str, status: JobStatus | None, series: RoundSeries, plots: Sequence[Chart], generated: datetime
) -> str:
    """The whole page: the job's summary, every plot, the per-round table, the per-worker table (when the
    records have per-worker figures), the final evaluation's confusion matrix as counts."""
    facts = [("Job", job)]
    if status is not None:
        facts += [("Phase", status.phase.value), ("Status", status.message or NO_VALUE)]
    facts.append(("Rounds closed", str(len(series.records))))
    if status is not None:
        if status.exit_round:
            facts.append(("Rounds planned", str(status.exit_round)))
        facts += [("Started", timestamp(status.start_time)), ("Completed", timestamp(status.completion_time))]
    facts.append(("Report written", timestamp(generated)))
    summary = "\n".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(job)}: federated learning report</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>FederatedLearningJob {escape(job)}</h1>",
        f"<dl>\n{summary}\n</dl>",
        *(_figure(chart) for chart in plots),
        "<h2>Rounds</h2>",
        rounds_table(series),
    ]
    if series.workers:
        parts += ["<h2>Workers per round</h2>", workers_table(series)]
    if confusion := confusion_table(series):
        parts.append(confusion)
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
