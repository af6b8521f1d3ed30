"""Text primitives of every printer: kubectl's ages and timestamps, one-line cells, aligned tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

GAP = "   "
NONE = "<none>"
UNKNOWN = "<unknown>"

# -- primitives ------------------------------------------------------------------------------------


def _two_units(big: int, big_unit: str, small: int, small_unit: str) -> str:
    """`3m10s`, or `3m` when the smaller unit is zero (kubectl drops a zero remainder)."""
    return f"{big}{big_unit}{small}{small_unit}" if small else f"{big}{big_unit}"


def human_duration(delta: timedelta) -> str:  # noqa: PLR0911 - one return per kubectl age band
    """kubectl's age format (apimachinery ``duration.HumanDuration``): 45s, 3m10s, 12m, 2h5m, 30h, 4d, 2y."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return _two_units(minutes, "m", seconds % 60, "s")
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _two_units(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _two_units(hours // 24, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return _two_units(days // 365, "y", days % 365, "d")
    return f"{hours // 24 // 365}y"


def age(since: datetime | None, now: datetime) -> str:
    """Age of a timestamp, or ``<unknown>`` when there is none."""
    return UNKNOWN if since is None else human_duration(now - since)


def timestamp(value: datetime | None) -> str:
    """RFC 3339 UTC, as kubectl describe prints times; ``<none>`` when unset."""
    if value is None:
        return NONE
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def cell(value: object) -> str:
    """One table cell: a single line, ``<none>`` when empty."""
    text = " ".join(str(value).split()) if value is not None else ""
    return text or NONE


def column_widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """The width of each column: its widest cell, header included."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row!r}")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    return widths


def row_line(row: Sequence[str], widths: Sequence[int], indent: str = "") -> str:
    """One table line: cells padded to `widths`, three spaces apart, the last one unpadded. A cell wider
    than its column (a watch's later row) pushes the rest of its line right, as kubectl's does."""
    padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
    return (indent + GAP.join([*padded, row[-1]])).rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Left-aligned columns, three spaces apart, last column unpadded; one line per row, no final newline."""
    widths = column_widths(headers, rows)
    return "\n".join(row_line(row, widths, indent) for row in (headers, *rows))
