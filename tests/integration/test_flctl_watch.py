"""`flctl get -w` row per change, its live line on a terminal, `wait` on a terminal, and `flctl top`, against
a real Mosquitto. Statuses are published retained by a raw client, as the controller would.

The watchers are real `flctl` processes whose output is read as it comes: a pipe (no terminal: plain rows)
or a pseudo-terminal (rich's live line). Each step waits for the output the previous publish must cause, so
no test sleeps and every wait is bounded.
"""

from __future__ import annotations

import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from schemas import (
    MAX_STATUS_ROUNDS,
    Evaluation,
    JobStatus,
    Kind,
    Phase,
    RoundRecord,
    Topics,
    WorkerState,
    WorkerStatus,
    now,
)
from tests.helpers.flctl import FlctlRunner, publish_retained
from tests.helpers.mqtt import BrokerHandle

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
TOPICS = Topics()
WAIT = 20.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def flctl(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> FlctlRunner:
    runner = FlctlRunner(broker, capsys)
    assert runner("create", "-f", str(SEED)).code == 0
    return runner


def status(round_: int, phase: Phase = Phase.RUNNING, *, closed: int = 0, message: str = "") -> bytes:
    """The job in round `round_` of 3 with `closed` rounds closed, 10 s apart, each evaluated."""
    start = now() - timedelta(minutes=5)
    rounds = [
        RoundRecord(
            round=r,
            participants=["edge1", "edge2"],
            total_samples=52,
            closed_at=start + timedelta(seconds=10 * r),
            metrics={"loss": 0.7 - 0.1 * r, "accuracy": 0.5 + 0.1 * r, "eval_accuracy": 0.55 + 0.1 * r},
        )
        for r in range(1, closed + 1)
    ]
    workers = [WorkerStatus(job=JOB, node=n, state=WorkerState.TRAINING, round=round_) for n in ("edge1", "edge2")]
    text = message or f"round {round_}/3: waiting for updates from edge1, edge2 (0/2 in)"
    return JobStatus(
        name=JOB,
        phase=phase,
        message=text,
        current_round=round_,
        exit_round=3,
        start_time=start,
        workers=workers,
        rounds=rounds,
    ).to_json()


class Flctl:
    """A `flctl` process whose output (a pipe, or a pseudo-terminal) is read as it comes."""

    def __init__(self, broker: BrokerHandle, *argv: str, terminal: bool = False) -> None:
        command = [sys.executable, "-m", "flctl", "--host", broker.host, "--port", str(broker.port), *argv]
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
        self.chunks: queue.Queue[str | None] = queue.Queue()
        self.text = ""
        if terminal:
            main, child = pty.openpty()
            env.update(TERM="xterm", COLUMNS="160", LINES="40")
            self.proc = subprocess.Popen(command, stdout=child, stderr=subprocess.PIPE, env=env, cwd=REPO)
            os.close(child)
            self._reader = threading.Thread(target=self._read_fd, args=(main,), daemon=True)
        else:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
            assert self.proc.stdout is not None
            self._reader = threading.Thread(target=self._read_fd, args=(self.proc.stdout.fileno(),), daemon=True)
        self._reader.start()

    def _read_fd(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the pseudo-terminal's other end closed
                data = b""
            if not data:
                self.chunks.put(None)
                return
            self.chunks.put(data.decode(errors="replace"))

    def wait_for(self, pattern: str) -> str:
        """Read until the output (escape codes removed) matches `pattern`; the text so far."""
        while not re.search(pattern, self.plain, re.MULTILINE):
            try:
                chunk = self.chunks.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {WAIT:g} s in:\n{self.plain}") from None
            if chunk is None:
                raise AssertionError(f"flctl ended without {pattern!r}:\n{self.plain}")
            self.text += chunk
        return self.plain

    @property
    def plain(self) -> str:
        return ANSI.sub("", self.text).replace("\r\n", "\n")

    def finish(self) -> int:
        """The exit code, once the output is read to its end (killed, and the test failed, if it lingers)."""
        try:
            code = self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never left running into the next test
            self.proc.wait(WAIT)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            raise AssertionError(f"flctl did not exit within {WAIT:g} s:\n{self.plain}") from None
        self._reader.join(WAIT)
        while (chunk := self.chunks.get_nowait() if not self.chunks.empty() else None) is not None:
            self.text += chunk
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.finish()


def rows(text: str) -> list[list[str]]:
    return [re.split(r" {3,}", line.strip()) for line in text.splitlines() if line.strip()]


def test_watch_prints_the_header_once_then_one_row_per_change(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(1))
    watch = Flctl(broker, "get", "fl", JOB, "-w", "--watch-timeout", str(WAIT))
    watch.wait_for(r"^surface-defect-detection +Running +1/3")

    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(2, closed=1))
    watch.wait_for(r"Running +2/3")
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(3, Phase.SUCCEEDED, closed=3, message="done"))

    assert watch.finish() == 0
    lines = rows(watch.plain)
    assert lines[0] == ["NAME", "PHASE", "ROUND", "WORKERS", "EVAL ACC", "ROUND TIME", "AGE"]
    assert [line[:6] for line in lines[1:]] == [
        [JOB, "Running", "1/3", "2/2", "-", "-"],
        [JOB, "Running", "2/3", "2/2", "0.650", "-"],  # round 1 evaluated; its duration is not known
        [JOB, "Succeeded", "3/3", "2/2", "0.850", "10s"],
    ]
    assert "\x1b" not in watch.text  # a pipe: no live line, no escape codes


def test_a_list_watch_says_added_modified_deleted_with_output_watch_events(
    flctl: FlctlRunner, broker: BrokerHandle
) -> None:
    watch = Flctl(broker, "get", "fl", "-w", "--output-watch-events", "--watch-timeout", str(3 * WAIT))
    watch.wait_for(r"^ADDED +surface-defect-detection +Pending")

    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(1))
    watch.wait_for(r"^MODIFIED +surface-defect-detection +Running +1/3")
    assert flctl("delete", "fl", JOB).code == 0
    watch.wait_for(r"^DELETED +surface-defect-detection")

    assert watch.interrupt() == 0
    assert [line[0] for line in rows(watch.plain)] == ["EVENT", "ADDED", "MODIFIED", "DELETED"]


def test_on_a_terminal_the_watched_job_has_a_live_line_and_the_rows_stay(
    flctl: FlctlRunner, broker: BrokerHandle
) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(1))
    watch = Flctl(broker, "get", "fl", JOB, "-w", "--watch-timeout", str(WAIT), terminal=True)
    watch.wait_for(r"surface-defect-detection  Running  round 1/3  round 1/3: waiting for updates")

    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(2, closed=1))
    watch.wait_for(r"surface-defect-detection  Running  round 2/3  round 2/3: waiting")
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(3, Phase.SUCCEEDED, closed=3, message="done"))

    assert watch.finish() == 0
    assert "\x1b[" in watch.text  # the live line is drawn and redrawn in place
    table = [line for line in rows(watch.plain) if line[0] in ("NAME", JOB)]
    assert [line[1:3] for line in table[1:]] == [["Running", "1/3"], ["Running", "2/3"], ["Succeeded", "3/3"]]


def test_wait_on_a_terminal_shows_the_job_until_the_condition_holds(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(2, closed=1))
    waiting = Flctl(broker, "wait", "fl", JOB, "--for=condition=Succeeded", "--timeout=20s", terminal=True)
    waiting.wait_for(r"surface-defect-detection  Running  round 2/3")

    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(3, Phase.SUCCEEDED, closed=3, message="done"))

    assert waiting.finish() == 0
    assert f"federatedlearningjob.sedna.io/{JOB} condition met\n" in waiting.plain.replace("\r", "\n")


def test_wait_without_a_terminal_prints_only_the_verdict(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(3, Phase.SUCCEEDED, closed=3))

    waiting = Flctl(broker, "wait", "fl", JOB, "--for=condition=Succeeded", "--timeout=20s")

    assert waiting.finish() == 0
    assert waiting.text == f"federatedlearningjob.sedna.io/{JOB} condition met\n"


def test_top_prints_the_rounds_and_get_metrics_is_the_same(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(3, Phase.SUCCEEDED, closed=3, message="done"))

    top = flctl("top", "fl", JOB)

    assert (top.code, top.err) == (0, "")
    assert rows(top.out) == [
        ["ROUND", "WORKERS", "SAMPLES", "DURATION", "TRAIN LOSS", "TRAIN ACC", "EVAL ACC"],
        ["1", "2", "52", "-", "0.600", "0.600", "0.650"],
        ["2", "2", "52", "10s", "0.500", "0.700", "0.750"],
        ["3", "2", "52", "10s", "0.400", "0.800", "0.850"],
    ]
    assert flctl("get", "fl", JOB, "--metrics").out == top.out


def test_top_of_a_job_without_rounds_or_without_the_job(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(1))

    early, missing, usage = flctl("top", "fl", JOB), flctl("top", "fl", "nope"), flctl("top", "fl")

    assert (early.code, early.out) == (0, "")
    assert early.err.startswith("No rounds closed yet (Running: round 1/3: waiting")
    assert missing.code == 1 and 'federatedlearningjobs "nope" not found' in missing.err
    assert usage.code == 2 and "one job name" in usage.err


def test_watch_with_o_name_prints_the_name_again_on_each_change(flctl: FlctlRunner, broker: BrokerHandle) -> None:
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(1))
    watch = Flctl(broker, "get", "fl", JOB, "-w", "-o", "name", "--output-watch-events", "--watch-timeout", str(WAIT))
    watch.wait_for(rf"^ADDED federatedlearningjob.sedna.io/{JOB}$")

    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(2, closed=1))
    watch.wait_for(rf"^MODIFIED federatedlearningjob.sedna.io/{JOB}$")
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), status(3, Phase.SUCCEEDED, closed=3, message="done"))

    assert watch.finish() == 0
    assert watch.text.splitlines() == [f"{e} federatedlearningjob.sedna.io/{JOB}" for e in ("ADDED", *["MODIFIED"] * 2)]


def test_top_shows_every_round_of_a_long_job_from_the_retained_records(
    flctl: FlctlRunner, broker: BrokerHandle
) -> None:
    """The status keeps the newest MAX_STATUS_ROUNDS round summaries; the full record of every round is retained on its own
    topic, so `flctl top` of a 14-round job shows 14 rows, with the records' evaluation where the summaries
    have none."""
    start = now() - timedelta(minutes=10)
    records = [
        RoundRecord(
            round=r,
            participants=["edge1", "edge2"],
            total_samples=52,
            closed_at=start + timedelta(seconds=10 * r),
            duration_seconds=10.0,
            train={"loss": 1.0 - 0.05 * r},
            eval=Evaluation.of(r, [[10 + r, 10 - r // 2], [1, 5]], loss=0.5),
        )
        for r in range(1, 15)
    ]
    summaries = [r.model_copy(update={"eval": None}) for r in records[-MAX_STATUS_ROUNDS:]]
    job = JobStatus(name=JOB, phase=Phase.SUCCEEDED, message="done", current_round=14, exit_round=14, rounds=summaries)
    publish_retained(broker, TOPICS.status(Kind.JOB, JOB), job.to_json())
    for record in records:
        publish_retained(broker, TOPICS.round_record(JOB, record.round), record.to_json())

    top = flctl("top", "fl", JOB)

    assert (top.code, top.err) == (0, "")
    table = rows(top.out)
    assert [r[0] for r in table[1:]] == [str(r) for r in range(1, 15)]
    assert "EVAL ACC" in table[0]
    accuracy = table[0].index("EVAL ACC")
    assert [row[accuracy] for row in table[1:]] == [f"{r.eval.accuracy:.3f}" for r in records if r.eval]
