"""`flctl report`'s plots and page, from constructed round records: every plot's data is the records' figures,
the page embeds each plot as a valid PNG and tables every round, and a record that lacks some figures
(the status's summaries, an older job) gives the plots it can and no empty ones."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from PIL import Image

from flctl import main
from flctl.report import Chart, RoundSeries, charts, render_html
from schemas import Evaluation, JobStatus, Phase, RoundRecord, WorkerRound, now

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START = now() - timedelta(minutes=10)
SAMPLES = {"edge1": 120, "edge2": 80}


def record(r: int, *, without: Sequence[str] = ()) -> RoundRecord:
    """Round `r` of a two-edge job with every figure a record can have; `without` left out of it."""
    nodes = [n for n in SAMPLES if n not in without]
    workers = [
        WorkerRound(
            node=n,
            num_samples=SAMPLES[n],
            train={"loss": 1.0 / (r + i + 1), "categorical_accuracy": 0.5 + 0.07 * r + 0.01 * i},
            eval=Evaluation.of(r, [[20 + r, 5], [3 + i, 7 + r]], loss=0.6 - 0.05 * r),
            upload_bytes=480_000 + 1_000 * i,
            upload_seconds=0.25 + 0.1 * i + 0.01 * r,
        )
        for i, n in enumerate(nodes)
    ]
    return RoundRecord(
        round=r,
        participants=nodes,
        total_samples=sum(SAMPLES[n] for n in nodes),
        closed_at=START + timedelta(seconds=10 * r),
        duration_seconds=8.0 + r,
        bytes_in=sum(w.upload_bytes or 0 for w in workers),
        bytes_out=481_000 + r,
        missing=list(without),
        # As Keras names them (the Sedna example's one-hot labels): val_* is the local fit's own validation.
        train={
            "loss": 0.9 - 0.1 * r,
            "categorical_accuracy": 0.55 + 0.06 * r,
            "val_loss": 0.8 - 0.1 * r,
            "val_categorical_accuracy": 0.6 + 0.05 * r,
        },
        eval=Evaluation.of(r, [[40 + r, 10 - r], [6, 14 + 2 * r]], loss=0.62 - 0.04 * r),
        workers=workers,
    )


RECORDS = [record(r, without=("edge2",) if r == 3 else ()) for r in range(1, 6)]


def by_name(plots: Sequence[Chart]) -> dict[str, Chart]:
    return {c.name: c for c in plots}


def line(ax: Axes, label_start: str) -> list[float]:
    (found,) = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith(label_start)]
    return [float(v) for v in found.get_ydata()]  # type: ignore[union-attr]


def bars(ax: Axes, label: str) -> list[float]:
    (found,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    return [p.get_height() for p in found.patches]


def same(values: Sequence[float], expected: Sequence[float | None]) -> bool:
    """Equal, a None expected where the plot has a gap (NaN)."""
    return len(values) == len(expected) and all(
        math.isnan(v) if e is None else v == pytest.approx(e) for v, e in zip(values, expected, strict=True)
    )


class Page(HTMLParser):
    """The page's images (src) and table rows (attributes and cell texts), per table class."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[tuple[dict[str, str | None], list[str]]]] = {}
        self.tags: set[str] = set()
        self._table = ""
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"] or "")
        elif tag == "table":
            self._table = attributes.get("class") or ""
            self.tables[self._table] = []
        elif tag == "tr":
            self.tables[self._table].append((attributes, []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1][1].append("".join(self._cell))
            self._cell = None

    def rows(self, table: str) -> list[tuple[dict[str, str | None], list[str]]]:
        return [row for row in self.tables[table] if "data-round" in row[0]]

    def column(self, table: str, header: str) -> list[str]:
        index = self.tables[table][0][1].index(header)
        return [cells[index] for _, cells in self.rows(table)]


def test_each_plot_shows_the_records_figures() -> None:
    plots = by_name(charts(RoundSeries.of(RECORDS)))

    assert list(plots) == ["accuracy", "loss", "workers", "durations", "bytes", "confusion"]
    (accuracy,) = plots["accuracy"].figure.axes
    assert same(line(accuracy, "training accuracy"), [r.train["categorical_accuracy"] for r in RECORDS])
    assert same(line(accuracy, "local validation"), [r.train["val_categorical_accuracy"] for r in RECORDS])
    assert same(line(accuracy, "evaluation accuracy"), [r.eval.accuracy for r in RECORDS if r.eval])
    assert same(line(accuracy, "evaluation balanced"), [r.eval.balanced_accuracy for r in RECORDS if r.eval])
    (loss,) = plots["loss"].figure.axes
    assert same(line(loss, "training loss"), [r.train["loss"] for r in RECORDS])
    assert same(line(loss, "local validation"), [r.train["val_loss"] for r in RECORDS])
    assert same(line(loss, "evaluation loss"), [r.eval.loss for r in RECORDS if r.eval])

    samples, upload_size, upload_time = plots["workers"].figure.axes
    # Stacked: edge2 has no bar in round 3, which it was left out of.
    assert same(bars(samples, "edge1"), [120.0] * 5)
    assert same(bars(samples, "edge2"), [80.0, 80.0, 0.0, 80.0, 80.0])
    shares = sorted(t.get_text() for t in samples.texts)
    assert shares == sorted(["60%", "40%"] * 4 + ["100%"])
    assert upload_size.get_ylabel() == "upload (kB)"
    edge2 = [next((w for w in r.workers or () if w.node == "edge2"), None) for r in RECORDS]
    assert same(bars(upload_size, "edge2"), [w.upload_bytes / 1e3 if w and w.upload_bytes else None for w in edge2])
    assert same(bars(upload_time, "edge2"), [w.upload_seconds if w else None for w in edge2])

    (durations,) = plots["durations"].figure.axes
    assert same(bars(durations, "round duration"), [r.duration_seconds for r in RECORDS])
    (wire,) = plots["bytes"].figure.axes
    assert wire.get_ylabel() == "kB"
    assert same(bars(wire, "in: updates folded"), [(r.bytes_in or 0) / 1e3 for r in RECORDS])
    assert same(bars(wire, "out: global model"), [(r.bytes_out or 0) / 1e3 for r in RECORDS])

    matrix, _colorbar = plots["confusion"].figure.axes
    final = RECORDS[-1].eval
    assert final is not None
    assert matrix.images[0].get_array().tolist() == final.confusion  # type: ignore[union-attr]
    assert "round 5" in plots["confusion"].title


def test_the_page_embeds_every_plot_as_a_png_and_tables_every_round(tmp_path: Path) -> None:
    series = RoundSeries.of(RECORDS)
    plots = charts(series)
    status = JobStatus(name="job", phase=Phase.SUCCEEDED, message="done", exit_round=5, rounds=RECORDS[-3:])

    text = render_html("job", status, series, plots, now())
    page = Page(text)

    assert len(page.images) == len(plots) == 6
    for src, chart in zip(page.images, plots, strict=True):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE) and data == chart.png
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # raises on a truncated or corrupt PNG
        with Image.open(io.BytesIO(data)) as image:
            width, height = chart.figure.get_size_inches() * 100
            assert image.size == (round(width), round(height))
    # Self-contained: nothing to fetch, nothing to run.
    assert not {"script", "link", "iframe"} & page.tags
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)

    assert [attrs["data-round"] for attrs, _ in page.rows("rounds")] == ["1", "2", "3", "4", "5"]
    assert page.column("rounds", "EVAL ACC") == [f"{r.eval.accuracy:.3f}" for r in RECORDS if r.eval]
    assert page.column("rounds", "TRAIN LOSS") == [f"{r.train['loss']:.3f}" for r in RECORDS]
    assert page.column("rounds", "LEFT OUT") == ["-", "-", "edge2", "-", "-"]
    assert page.column("rounds", "EVAL SAMPLES") == [str(r.eval.num_samples) for r in RECORDS if r.eval]
    # One row per worker per round it took part in: edge2 not in round 3.
    assert [(a["data-round"], a["data-worker"]) for a, _ in page.rows("workers")] == [
        (str(r), n) for r in range(1, 6) for n in SAMPLES if (r, n) != (3, "edge2")
    ]
    assert page.column("workers", "SHARE")[:3] == ["60.0%", "40.0%", "60.0%"]
    assert page.column("workers", "TRAIN ACC")[:2] == [
        f"{w.train['categorical_accuracy']:.3f}" for w in RECORDS[0].workers or ()
    ]
    final = RECORDS[-1].eval
    assert final is not None
    header, *matrix = page.tables["confusion"]
    assert header[1] == ["true \\ predicted", "0", "1"]
    assert [cells for _, cells in matrix] == [[str(i), *map(str, row)] for i, row in enumerate(final.confusion)]
    assert "<dt>Phase</dt><dd>Succeeded</dd>" in text


def test_summaries_without_per_worker_figures_give_only_the_plots_they_can() -> None:
    """The job status's summaries have no per-worker figures, bytes nor (here) evaluation: three plots, the
    durations from the rounds' closing times, no workers table."""
    summaries = [
        RoundRecord(
            round=r,
            participants=["edge1"],
            total_samples=52,
            closed_at=START + timedelta(seconds=7 * r),
            metrics={"loss": 0.7 - 0.1 * r, "accuracy": 0.5 + 0.1 * r},  # an older record's flat map
        )
        for r in range(1, 4)
    ]
    series = RoundSeries.of(summaries)

    plots = by_name(charts(series))

    assert list(plots) == ["accuracy", "loss", "durations"]
    (accuracy,) = plots["accuracy"].figure.axes
    assert [str(ln.get_label()) for ln in accuracy.get_lines()] == ["training accuracy (local fit, before aggregation)"]
    assert same(line(accuracy, "training accuracy"), [0.6, 0.7, 0.8])
    (durations,) = plots["durations"].figure.axes
    assert same(bars(durations, "round duration"), [None, 7.0, 7.0])
    page = Page(render_html("job", None, series, list(plots.values()), now()))
    assert len(page.images) == 3 and "workers" not in page.tables and "confusion" not in page.tables
    assert len(page.rows("rounds")) == 3


def test_a_png_output_or_another_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before connecting: no broker is needed to be told."""
    assert main(["report", "fl", "job", "-o", "report.png"]) == 2
    assert "use --png-dir DIR" in capsys.readouterr().err
    assert main(["report", "ds", "job"]) == 2
    assert "federatedlearningjobs (fl), not 'ds'" in capsys.readouterr().err
