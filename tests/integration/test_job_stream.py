"""Watching a small real job: a real Mosquitto, the real `fl-cloud-aggregator` and two `fl-edge-trainer`
processes (LocalCluster) running the fault tests' numpy training script (no TensorFlow: the point here is
what a user watching sees, not the model).

- the job's event stream, read line by line with `mosquitto_sub` as a user would: each line one JSON
  object, the rounds opened and closed in order, each closed round with its record;
- `flctl get fl NAME -w`: the header once, then one row per change, ROUND never going back, ending at
  Succeeded 3/3;
- `flctl top fl NAME`: one row per round with its workers and samples.

Nothing sleeps: `mosquitto_sub` is known to be subscribed when a probe line published after it started
comes out of it (probes are sent until one does); everything else waits on the job's status with a bound.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Session
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import JobEvent, Phase, Topics
from tests.helpers.flctl import Run
from tests.helpers.nodes import lay_out_nodes

JOB = "watched"
EDGES = ("edge1", "edge2")
SAMPLES = {"edge1": 24, "edge2": 28}
EXIT_ROUND = 3
PROBE_JOB = "probe"
WAIT = 90.0
TOPICS = Topics()

pytestmark = pytest.mark.timeout(240)


def job_yaml() -> str:
    docs = [
        "apiVersion: sedna.io/v1alpha1\nkind: Dataset\n"
        f"metadata: {{name: {edge}-data}}\nspec: {{url: /data/train.txt, format: txt, nodeName: {edge}}}\n"
        for edge in EDGES
    ]
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: watched-model}\nspec: {url: /model, format: ckpt}\n"
    )
    workers = "".join(
        f"    - nodeName: {edge}\n      dataset: {{name: {edge}-data}}\n"
        "      workerSpec: {scriptDir: /code, scriptBootFile: train_numpy.py, frameworkType: tensorflow, "
        "parameters: [{key: features, value: '8'}, {key: hidden, value: '4'}]}\n"
        for edge in EDGES
    )
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\n"
        f"metadata: {{name: {JOB}}}\nspec:\n  aggregationWorker:\n    model: {{name: watched-model}}\n"
        "    nodeName: cloud0\n    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py, "
        f"frameworkType: tensorflow, parameters: [{{key: exit_round, value: '{EXIT_ROUND}'}}, "
        "{key: participants_count, value: '2'}]}\n"
        f"  trainingWorkers:\n{workers}"
    )
    return "---\n".join(docs)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    lay_out_nodes(tmp_path, {edge: [f"sample-{edge}-{i},{i % 2}" for i in range(SAMPLES[edge])] for edge in EDGES})
    (tmp_path / "job.yaml").write_text(job_yaml())
    with LocalCluster(tmp_path) as running:
        running.start_broker()
        running.start_node("cloud0", "aggregator")
        for edge in EDGES:
            running.start_node(edge, "edge")
        yield running


class Subscriber:
    """`mosquitto_sub` on the event streams, its stdout read line by line into a queue."""

    def __init__(self, cluster: LocalCluster) -> None:
        mosquitto_sub = shutil.which("mosquitto_sub")
        if mosquitto_sub is None:
            pytest.fail("mosquitto_sub is needed (apt-get install mosquitto-clients)")
        argv = [mosquitto_sub, "-h", "127.0.0.1", "-p", str(cluster.port), "-q", "1", "-t", TOPICS.all_events()]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_line(self) -> str:
        try:
            return self.lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no event line within {WAIT:g} s") from None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(10)  # it reads to the end of the pipe, then the pipe can be closed
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_a_small_job_as_a_user_watches_it(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = Subscriber(cluster)
    try:
        await_subscribed(cluster, sub)

        def runner(*argv: str) -> Run:
            capsys.readouterr()
            code = flctl_cli.main([*cluster.flctl_args(), *argv])
            captured = capsys.readouterr()
            return Run(code, captured.out, captured.err)

        assert runner("create", "-f", str(tmp_path / "job.yaml")).code == 0
        watch: list[Run] = []
        watcher = threading.Thread(
            target=lambda: watch.append(runner("get", "fl", JOB, "-w", "--watch-timeout", str(WAIT)))
        )
        watcher.start()
        watcher.join(WAIT)  # get -w returns when the job has finished
        assert not watcher.is_alive(), "get -w did not end with the job"
        done = json.loads(runner("get", "fl", JOB, "-o", "json").out)
        assert done["status"]["phase"] == Phase.SUCCEEDED.value, done["status"]["message"]

        lines: list[dict[str, object]] = []
        # The last line of a job: its aggregation script exited after the job Succeeded.
        while not lines or lines[-1].get("data") != {"role": "aggregation", "from": "Ready", "to": "Completed"}:
            line = sub.next_line()
            assert line.endswith("\n") and line.count("\n") == 1  # one object per line
            if json.loads(line)["job"] != PROBE_JOB:  # a late copy of an earlier probe
                lines.append(json.loads(line))
    finally:
        sub.stop()

    events = [JobEvent.model_validate(e) for e in lines]
    assert {e.job for e in events} == {JOB}
    rounds = [(e.reason, e.round) for e in events if e.reason in ("RoundOpened", "RoundClosed")]
    assert rounds == [(reason, r) for r in range(1, EXIT_ROUND + 1) for reason in ("RoundOpened", "RoundClosed")]
    for closed in (e for e in events if e.reason == "RoundClosed"):
        assert closed.data is not None
        assert sorted(closed.data["participants"]) == list(EDGES)
        assert closed.data["totalSamples"] == sum(SAMPLES.values())
    states = [(e.node, e.data["to"]) for e in events if e.reason == "WorkerStateChanged" and e.data]
    assert ("edge1", "Training") in states and ("edge2", "Completed") in states, states
    times = [e.time for e in events]
    assert times == sorted(times)

    (run,) = watch
    assert run.code == 0, run.err
    out = run.out.splitlines()
    assert out[0].split()[:4] == ["NAME", "PHASE", "ROUND", "WORKERS"]
    assert all(not line.startswith("NAME") for line in out[1:])  # the header once
    rows = [re.split(r" {3,}", line) for line in out[1:]]
    assert all(row[0] == JOB for row in rows) and len(rows) == len({tuple(r[:-1]) for r in rows})
    rounds_shown = [int(row[2].split("/")[0]) for row in rows if row[2] != "-"]  # "-": no status yet
    assert rounds_shown == sorted(rounds_shown)  # ROUND never goes back
    assert rows[-1][1:3] == ["Succeeded", f"{EXIT_ROUND}/{EXIT_ROUND}"]
    assert "\x1b" not in run.out  # no terminal: no live line

    top = runner("top", "fl", JOB)
    table = [re.split(r" {3,}", line) for line in top.out.splitlines()]
    # The numpy workers report a training loss (no evaluation: they hold no data out).
    assert table[0] == ["ROUND", "WORKERS", "SAMPLES", "DURATION", "TRAIN LOSS"]
    assert [row[:3] for row in table[1:]] == [[str(r), "2", str(sum(SAMPLES.values()))] for r in (1, 2, 3)]
    assert runner("get", "fl", JOB, "--metrics").out == top.out


def await_subscribed(cluster: LocalCluster, sub: Subscriber) -> None:
    """Probe lines on a probe job's event stream until one comes out of `mosquitto_sub` (the open test
    broker lets anyone publish). A probe published before `mosquitto_sub` has subscribed is simply not
    delivered, and on a loaded machine its start-up can take longer than the probe's, so one probe is
    not enough: one per second, for at most WAIT seconds."""
    probe = JobEvent(job=PROBE_JOB, reason="Probe", message="mosquitto_sub is subscribed")
    session = Session(cluster.settings("probe"), inbox=queue.Queue())
    session.start()
    try:
        assert session.wait_connected(10.0)
        for _ in range(int(WAIT)):
            session.publish(TOPICS.events(probe.job), probe.to_json(), qos=1, retain=False).wait(10.0)
            try:
                line = sub.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            assert json.loads(line)["reason"] == "Probe"
            return
        raise AssertionError(f"mosquitto_sub printed no probe line within {WAIT:g} s")
    finally:
        session.stop()
