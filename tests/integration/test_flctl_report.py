"""`flctl report` against a real Mosquitto: the page and the PNGs come from the retained job status and the
retained per-round records, as the aggregator leaves them (published here by a raw client), and hold every
round of a job longer than the status's 10 summaries."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path

import pytest

from schemas import MAX_STATUS_ROUNDS, Evaluation, JobStatus, Kind, Phase, RoundRecord, Topics, WorkerRound, now
from tests.helpers.flctl import FlctlRunner, publish_retained
from tests.helpers.mqtt import BrokerHandle

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
TOPICS = Topics()
ROUNDS = 12
PLOTS = ["accuracy", "loss", "workers", "durations", "bytes", "confusion"]
IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture
def flctl(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> FlctlRunner:
    runner = FlctlRunner(broker, capsys)
    assert runner("create", "-f", str(SEED)).code == 0
    return runner


def record(r: int) -> RoundRecord:
    workers = [
        WorkerRound(
            node=node,
            num_samples=samples,
            train={"loss": 1.0 / (r + 1), "accuracy": 0.5 + 0.03 * r},
            eval=Evaluation.of(r, [[20 + r, 4], [2, 6 + r]], loss=0.5),
            upload_bytes=50_000 + i,
            upload_seconds=0.2 + 0.1 * i,
        )
        for i, (node, samples) in enumerate((("edge1", 30), ("edge2", 22)))
    ]
    return RoundRecord(
        round=r,
        participants=["edge1", "edge2"],
        total_samples=52,
        closed_at=now() - timedelta(seconds=10 * (ROUNDS - r)),
        duration_seconds=9.5,
        bytes_in=100_001,
        bytes_out=50_000,
        train={"loss": 1.0 / (r + 1), "accuracy": 0.5 + 0.03 * r},
        eval=Evaluation.of(r, [[40 + r, 8], [4, 12 + r]], loss=0.45 - 0.01 * r),
        workers=workers,
    )


def publish_job(broker: BrokerHandle, records: list[RoundRecord]) -> None:
    """The status keeps the newest MAX_STATUS_ROUNDS summaries; each round's full record is on its own retained topic."""
    summaries = [r.summary() for r in records[-MAX_STATUS_ROUNDS:]]
    job = JobStatus(
        name=JOB, phase=Phase.SUCCEEDED, message="done", current_round=ROUNDS, exit_round=ROUNDS, rounds=summaries
    )
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), job.to_json())
    for r in records:
        publish_retained(broker, TOPICS.round_record(JOB, r.round), r.to_json())


def test_report_writes_the_page_and_pngs_from_the_retained_records(
    flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path
) -> None:
    records = [record(r) for r in range(1, ROUNDS + 1)]
    publish_job(broker, records)
    page, pngs = tmp_path / "report.html", tmp_path / "plots"

    run = flctl("report", "fl", JOB, "-o", str(page), "--png-dir", str(pngs))

    assert (run.code, run.err) == (0, "")
    lines = run.out.splitlines()
    assert re.fullmatch(rf"wrote {re.escape(str(page))}: 12 rounds, 6 plots \({', '.join(PLOTS)}\), \d+ kB", lines[0])
    assert lines[1:] == [f"wrote {pngs / name}.png" for name in PLOTS]
    text = page.read_text()
    embedded = [base64.b64decode(data) for data in IMG.findall(text)]
    assert len(embedded) == 6
    # The PNG files are the embedded images, byte for byte.
    assert embedded == [(pngs / f"{name}.png").read_bytes() for name in PLOTS]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in embedded)
    # Every round, also the two the status's summaries no longer hold, with its record's evaluation.
    table = text.split('<table class="rounds">', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr data-round="(\d+)">', table) == [str(r) for r in range(1, ROUNDS + 1)]
    for r in records[:2]:
        assert r.eval is not None
        row = re.search(rf'<tr data-round="{r.round}">(.*?)</tr>', table)
        assert row is not None and f"<td>{r.eval.accuracy:.3f}</td>" in row.group(1)
    assert text.count('<tr data-round="1" data-worker=') == 2


def test_report_by_default_to_stdout_and_only_pngs(
    flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_job(broker, [record(r) for r in range(1, ROUNDS + 1)])
    default, only_pngs = tmp_path / "default", tmp_path / "only-pngs"
    default.mkdir()
    only_pngs.mkdir()

    monkeypatch.chdir(default)
    by_default = flctl("report", "fl", JOB)
    to_stdout = flctl("report", "fl", JOB, "-o", "-")
    monkeypatch.chdir(only_pngs)
    pngs = flctl("report", "fl", JOB, "--png-dir", "plots")

    assert by_default.code == 0 and by_default.out.startswith(f"wrote {JOB}-report.html: 12 rounds")
    assert [p.name for p in default.iterdir()] == [f"{JOB}-report.html"]
    assert to_stdout.code == 0 and to_stdout.out.startswith("<!DOCTYPE html>")
    assert len(IMG.findall(to_stdout.out)) == 6
    # The same page as the file, but for the time it was written.
    written = re.compile(r"<dt>Report written</dt><dd>[^<]*</dd>")
    assert written.sub("", to_stdout.out) == written.sub("", (default / f"{JOB}-report.html").read_text())
    assert pngs.code == 0
    assert [p.name for p in only_pngs.iterdir()] == ["plots"]  # no page: only --png-dir was asked for
    assert sorted(p.stem for p in (only_pngs / "plots").iterdir()) == sorted(PLOTS)


def test_report_of_a_job_without_rounds_or_without_the_job_writes_nothing(
    flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path
) -> None:
    running = JobStatus(name=JOB, phase=Phase.RUNNING, message="round 1/3: waiting for updates", current_round=1)
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), running.to_json())
    page = tmp_path / "report.html"

    early = flctl("report", "fl", JOB, "-o", str(page))
    missing = flctl("report", "fl", "nope", "-o", str(page))

    assert early.code == 1
    assert "has no closed round yet (Running: round 1/3: waiting for updates)" in early.err
    assert missing.code == 1 and 'federatedlearningjobs "nope" not found' in missing.err
    assert not page.exists()
