"""The report's plots: matplotlib figures of a `RoundSeries`, rendered to PNG by the Agg canvas.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot: pyplot keeps global state
and picks an interactive backend from the environment, and flctl runs on headless hosts, in tests and
inside the demo's process. A `Figure` with no canvas draws on Agg, off-screen, with no display.

A chart is made only when some round has its data (records from the job status alone have no per-worker
figures; a job without federated evaluation has no evaluation curves nor confusion matrix), so the report
shows what the job recorded and says nothing about what it did not.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flctl.report._series import RoundSeries

_WIDTH, _HEIGHT, _DPI = 8.0, 4.0, 100
# Fixed PNG metadata: the same job gives the same bytes (no matplotlib version, no date in the file).
_PNG_METADATA = {"Software": None}


@dataclass(frozen=True)
class Chart:
    """One plot of the report: `name` is its file stem (``accuracy`` -> accuracy.png)."""

    name: str
    title: str
    caption: str
    figure: Figure

    @cached_property
    def png(self) -> bytes:
        """The plot as PNG bytes, drawn once (the page and --png-dir get the same file)."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=_DPI, metadata=_PNG_METADATA)
        return buffer.getvalue()


def _nan(values: Sequence[float | None]) -> list[float]:
    # NaN breaks a line where a round has no value instead of joining its neighbours across the gap.
    return [math.nan if v is None else float(v) for v in values]


def _figure(rows: int = 1, height: float = _HEIGHT) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(_WIDTH, height * rows), dpi=_DPI, layout="constrained")
    axes = figure.subplots(rows, 1, squeeze=False)
    return figure, [a for (a,) in axes]


def _rounds_axis(ax: Axes, rounds: Sequence[int]) -> None:
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if rounds:
        ax.set_xlim(min(rounds) - 0.6, max(rounds) + 0.6)
    ax.grid(True, alpha=0.3)


def _curves(series: RoundSeries, metric: str, ylabel: str, *, unit_range: bool) -> Figure:
    """Training (dashed: each edge's local fit, before aggregation; dotted: that fit scored on the edge's
    own validation split, Keras' val_*) against evaluation (solid: the round's global model on the edges'
    held-out data) of one metric family. One colour per kind, the same in both plots."""
    figure, (ax,) = _figure()
    rounds = list(series.rounds)
    for group, name, label, style, color in (
        ("train", metric, f"training {ylabel} (local fit, before aggregation)", "--o", "tab:blue"),
        ("train", f"val_{metric}", f"local validation {ylabel} (local fit, before aggregation)", ":^", "tab:cyan"),
        ("train", f"balanced_{metric}", f"training balanced {ylabel}", "--s", "tab:green"),
        ("eval", metric, f"evaluation {ylabel} (global model, held-out data)", "-o", "tab:orange"),
        ("eval", f"balanced_{metric}", f"evaluation balanced {ylabel} (global model)", "-s", "tab:red"),
    ):
        if series.has(group, name):
            ax.plot(rounds, _nan(series.metric(group, name)), style, color=color, label=label)
    if unit_range:
        ax.set_ylim(0.0, 1.02)
    ax.set_ylabel(ylabel)
    _rounds_axis(ax, rounds)
    _legend(ax, below=True)
    return figure


def _legend(ax: Axes, *, below: bool = False) -> None:
    # Outside the axes (constrained layout makes room): a legend inside would hide bars or points.
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small", frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _scale(values: Sequence[float]) -> tuple[float, str]:
    """A divisor and unit that keep byte counts readable (B, kB, MB, GB)."""
    top = max(values, default=0.0)
    for divisor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if top >= divisor:
            return divisor, unit
    return 1.0, "B"


def _grouped_bars(ax: Axes, rounds: Sequence[int], columns: Sequence[tuple[str, Sequence[float | None]]]) -> None:
    """One bar per column per round, side by side; a missing value leaves its slot empty."""
    width = 0.8 / max(len(columns), 1)
    for i, (label, values) in enumerate(columns):
        offset = (i - (len(columns) - 1) / 2) * width
        ax.bar([r + offset for r in rounds], _nan(values), width=width, label=label)


def _contribution(series: RoundSeries) -> Figure:
    """Samples per round stacked by worker (its share of the aggregate written on it), then each worker's
    upload size and time where the records have them."""
    rounds = list(series.rounds)
    uploads = [w for w in series.workers if any(v is not None for v in w.upload_bytes)]
    timed = [w for w in series.workers if any(v is not None for v in w.upload_seconds)]
    figure, axes = _figure(1 + bool(uploads) + bool(timed), height=3.2)
    ax = axes[0]
    bottom = [0.0] * len(rounds)
    for worker in series.workers:
        heights = [float(v or 0) for v in worker.samples]
        bars = ax.bar(rounds, heights, bottom=bottom, label=worker.node)
        for bar, share in zip(bars, worker.share, strict=True):
            if share is not None and bar.get_height() > 0:
                ax.text(
                    bar.get_x() + bar.get_width() / 2,
                    bar.get_y() + bar.get_height() / 2,
                    f"{share:.0%}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white",
                )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("samples (share)")
    ax.set_title("samples per worker per round", fontsize="medium")
    _rounds_axis(ax, rounds)
    _legend(ax)
    rest = iter(axes[1:])
    if uploads:
        ax = next(rest)
        divisor, unit = _scale([float(v) for w in uploads for v in w.upload_bytes if v is not None])
        _grouped_bars(
            ax, rounds, [(w.node, [None if v is None else v / divisor for v in w.upload_bytes]) for w in uploads]
        )
        ax.set_ylabel(f"upload ({unit})")
        ax.set_title("update upload size", fontsize="medium")
        _rounds_axis(ax, rounds)
        _legend(ax)
    if timed:
        ax = next(rest)
        _grouped_bars(ax, rounds, [(w.node, list(w.upload_seconds)) for w in timed])
        ax.set_ylabel("upload (s)")
        ax.set_title("update upload time (first chunk to stored)", fontsize="medium")
        _rounds_axis(ax, rounds)
        _legend(ax)
    return figure


def _durations(series: RoundSeries) -> Figure:
    figure, (ax,) = _figure()
    rounds = list(series.rounds)
    ax.bar(rounds, _nan(series.durations), width=0.6, label="round duration", color="tab:purple")
    ax.set_ylabel("seconds (opened to closed)")
    _rounds_axis(ax, rounds)
    return figure


def _wire(series: RoundSeries) -> Figure:
    figure, (ax,) = _figure()
    rounds = list(series.rounds)
    divisor, unit = _scale([float(v) for v in (*series.bytes_in, *series.bytes_out) if v is not None])
    _grouped_bars(
        ax,
        rounds,
        [
            ("in: updates folded", [None if v is None else v / divisor for v in series.bytes_in]),
            ("out: global model", [None if v is None else v / divisor for v in series.bytes_out]),
        ],
    )
    ax.set_ylabel(unit)
    _rounds_axis(ax, rounds)
    _legend(ax)
    return figure


def _confusion(series: RoundSeries) -> Figure:
    evaluation = series.final_evaluation
    assert evaluation is not None  # charts() asks first
    matrix = evaluation.confusion
    classes = len(matrix)
    side = max(classes, 2)
    figure = Figure(figsize=(max(2.6 + side, 5.0), 1.6 + side), dpi=_DPI, layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax, shrink=0.8)
    peak = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if peak and count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    ticks = list(range(classes))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return figure


def charts(series: RoundSeries) -> list[Chart]:
    """The report's plots, in page order; each only when some round has its data."""
    out = _charts(series)
    for chart in out:
        # The title in the image too: a PNG from --png-dir is read without the page around it.
        chart.figure.suptitle(chart.title, fontsize="medium")
    return out


def _charts(series: RoundSeries) -> list[Chart]:
    out: list[Chart] = []
    if any(series.has(g, m) for g in ("train", "eval") for m in ("accuracy", "val_accuracy", "balanced_accuracy")):
        out.append(
            Chart(
                "accuracy",
                "Accuracy per round",
                "Training: the participants' local fit, sample-weighted, before aggregation (local validation: "
                "that fit on each edge's own validation split). Evaluation: the round's global model scored on "
                "the edges' held-out data, summed over the edges.",
                _curves(series, "accuracy", "accuracy", unit_range=True),
            )
        )
    if any(series.has(g, m) for g, m in (("train", "loss"), ("train", "val_loss"), ("eval", "loss"))):
        out.append(
            Chart(
                "loss",
                "Loss per round",
                "Training loss of the local fit against the evaluation loss (mean cross-entropy) of the global model.",
                _curves(series, "loss", "loss", unit_range=False),
            )
        )
    if series.workers:
        out.append(
            Chart(
                "workers",
                "Per-worker contribution",
                "Samples each worker trained on per round and its share of the aggregate (its weight in the "
                "sample-weighted mean), then the size and time of its update upload.",
                _contribution(series),
            )
        )
    if any(d is not None for d in series.durations):
        out.append(Chart("durations", "Round durations", "From the round's opening to its close.", _durations(series)))
    if any(v is not None for v in (*series.bytes_in, *series.bytes_out)):
        out.append(
            Chart(
                "bytes",
                "Bytes on the wire per round",
                "In: the update blobs folded into the round. Out: the round's global model, published once (retained).",
                _wire(series),
            )
        )
    final = series.final_evaluation
    if final is not None and final.confusion:
        out.append(
            Chart(
                "confusion",
                f"Confusion matrix of round {final.round}'s global model",
                f"Federated evaluation on {final.num_samples} held-out samples: accuracy {final.accuracy:.3f}, "
                f"balanced accuracy {final.balanced_accuracy:.3f}. Rows: true class, columns: predicted class.",
                _confusion(series),
            )
        )
    return out
