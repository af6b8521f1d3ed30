"""Factory sites in the printers: which site each worker is behind, and which sites are unreachable (their
bridge to the cloud broker is down: `JobStatus.sites`, kept by the aggregator; docs/operations.md).

A worker behind an unreachable site keeps the last state it sent (its messages wait on the site broker), so
the printers show that state marked ``(unreachable)`` rather than a state the worker never reported.
"""

from __future__ import annotations

from datetime import datetime

from flctl.printers._text import NONE, age, timestamp
from schemas import JobStatus, SiteStatus

__all__ = ["UNREACHABLE", "site_of", "site_rows", "sites_line", "unreachable"]

UNREACHABLE = "(unreachable)"


def site_of(status: JobStatus | None) -> dict[str, str]:
    """node -> the site it is behind (nodes on the cloud broker are not listed)."""
    return {node: site.name for site in (status.sites or [] if status else []) for node in site.nodes}


def unreachable(status: JobStatus | None) -> dict[str, SiteStatus]:
    """node -> its site, for the nodes behind a site whose bridge is down."""
    return {n: s for s in (status.sites or [] if status else []) if not s.reachable for n in s.nodes}


def sites_line(status: JobStatus | None) -> str | None:
    """``site site-a unreachable since 10:04:05 UTC (edge1, edge2)``; None when every site is reachable."""
    down = [s for s in (status.sites or [] if status else []) if not s.reachable]
    if not down:
        return None
    return "; ".join(
        f"site {s.name} unreachable"
        + (f" since {s.since:%H:%M:%S} UTC" if s.since else "")
        + f" ({', '.join(s.nodes)})"
        for s in down
    )


def site_rows(status: JobStatus | None, now: datetime) -> list[list[str]]:
    """describe's Sites section: NAME, REACHABLE, SINCE, NODES."""
    return [
        [
            s.name,
            "True" if s.reachable else "False",
            NONE if s.since is None else f"{timestamp(s.since)} ({age(s.since, now)} ago)",
            ", ".join(s.nodes),
        ]
        for s in (status.sites or [] if status else [])
    ]
