"""The printers with edges behind site brokers: describe's SITE column and Sites section, the WORKERS and
STATE columns, and top's note, while a site is unreachable (its workers keep the last state they sent)."""

from __future__ import annotations

from datetime import timedelta

from flctl.printers import describe_job, sites_line, worker_states, workers_column
from schemas import SiteStatus, WorkerState
from tests.unit.test_render import NOW, job_view, running_status, worker


def sited(reachable: bool) -> SiteStatus:
    since = NOW - timedelta(seconds=90)
    return SiteStatus(name="site-a", reachable=reachable, since=since, nodes=["edge1"])


def test_a_site_down_marks_its_workers_in_every_view() -> None:
    status = running_status(worker("edge1", WorkerState.TRAINING), worker("edge2", WorkerState.WAITING))
    status.sites = [sited(False)]

    assert workers_column(status, 2) == "1/2"
    assert worker_states(status) == "edge1=Training(unreachable),edge2=Waiting"
    since = f"{NOW - timedelta(seconds=90):%H:%M:%S}"
    assert sites_line(status) == f"site site-a unreachable since {since} UTC (edge1)"
    lines = describe_job(job_view(status), NOW).splitlines()
    assert "  NODE    ROLE       STATE                    ROUND   SAMPLES   SITE     MESSAGE" in lines
    assert "  edge1   training   Training (unreachable)   2       120       site-a   <none>" in lines
    assert "  edge2   training   Waiting                  2       120       <none>   <none>" in lines
    assert "Sites:" in lines
    [row] = [line for line in lines if line.startswith("  site-a ")]
    assert row.split()[:2] == ["site-a", "False"] and row.endswith("(90s ago)   edge1")


def test_a_site_back_is_shown_reachable() -> None:
    status = running_status(worker("edge1", WorkerState.TRAINING), worker("edge2", WorkerState.WAITING))
    status.sites = [sited(True)]
    assert workers_column(status, 2) == "2/2"
    assert worker_states(status) == "edge1=Training,edge2=Waiting"
    assert sites_line(status) is None
    assert "  edge1   training   Training   2       120       site-a   <none>" in describe_job(job_view(status), NOW)


def test_without_sites_describe_is_unchanged() -> None:
    status = running_status(worker("edge1", WorkerState.TRAINING))
    text = describe_job(job_view(status), NOW)
    assert "SITE" not in text and "Sites:" not in text
