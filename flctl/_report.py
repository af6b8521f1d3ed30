"""`flctl report fl NAME [-o FILE.html] [--png-dir DIR]`: a job's rounds as plots.

It reads what `flctl top` reads (`_top.read_rounds`: the job status's round summaries and every closed
round's retained record) and writes one self-contained HTML page (default ``NAME-report.html``; ``-o -``
writes it to stdout) and, with ``--png-dir``, each plot as ``DIR/<plot>.png``. Given only ``--png-dir``,
it writes only the PNGs. A job with no closed round has nothing to plot: exit 1, nothing written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flctl._context import Context
from flctl._errors import FlctlError, InputError, UsageError
from flctl._kinds import JOBS, resolve
from flctl._top import read_rounds
from runtime import write_atomic

__all__ = ["add_arguments", "report"]

STDOUT = "-"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("type", metavar="TYPE", help="federatedlearningjobs (fl)")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the HTML page (default NAME-report.html; - for stdout); plots embedded, no network needed to view it",
    )
    p.add_argument(
        "--png-dir",
        type=Path,
        metavar="DIR",
        help="also write each plot as DIR/<plot>.png (only the PNGs when -o is not given)",
    )


def _size(count: int) -> str:
    return f"{count / 1000:.0f} kB" if count >= 1000 else f"{count} B"


def _write(path: Path, data: bytes) -> None:
    try:
        # Atomic: a browser reloading the page, or a CI step picking the file up, never sees half of it.
        write_atomic(path, data, sync_dir=False)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def report(ctx: Context, args: argparse.Namespace) -> int:
    if resolve(args.type) is not JOBS:
        raise UsageError(f"reports are of federatedlearningjobs (fl), not {args.type!r}")
    output: str | None = args.output
    if output is not None and output.lower().endswith(".png"):
        raise UsageError("-o writes the HTML page; use --png-dir DIR for the plots as PNG files")
    if output is None and args.png_dir is None:
        output = f"{args.name}-report.html"

    # matplotlib is imported only by this verb: every other flctl command starts without it.
    from flctl.report import RoundSeries, charts, render_html

    view, records = read_rounds(ctx, args.name)
    if not records:
        raise FlctlError(f"{JOBS.plural} {args.name!r} has no closed round yet ({view.phase.value}: {view.message})")
    series = RoundSeries.of(records)
    plots = charts(series)
    names = ", ".join(c.name for c in plots) or "none"

    if output is not None:
        page = render_html(args.name, view.status, series, plots, ctx.clock()).encode()
        if output == STDOUT:
            ctx.out.write(page.decode())
            ctx.out.flush()
        else:
            _write(Path(output), page)
            ctx.say(f"wrote {output}: {len(records)} rounds, {len(plots)} plots ({names}), {_size(len(page))}")
    if args.png_dir is not None:
        for chart in plots:
            path = args.png_dir / f"{chart.name}.png"
            _write(path, chart.png)
            # With the page on stdout, the file list goes to stderr so that stdout is the page alone.
            (ctx.note if output == STDOUT else ctx.say)(f"wrote {path}")
    return 0
