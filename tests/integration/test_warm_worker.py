"""Warm starts (`runtime.WarmPool`): a script run by a warm worker sees exactly what a cold start shows it.

Tiny scripts and a pool that preloads only `json` keep this fast; the edge service test with TensorFlow
preloaded is in test_edge_warm_worker.py.
"""

from __future__ import annotations

import json
import os
import queue
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import ScriptEvent, ScriptExited, ScriptLaunch, ScriptSupervisor, WarmPool

TIMEOUT = 30.0

RECORDER = """
import json, os, sys
fd = int(os.environ["FL_WORKER_FD"])
os.fstat(fd)  # the worker channel is open in this process
record = {
    "env": {k: v for k, v in os.environ.items() if k != "FL_WORKER_FD"},
    "cwd": os.getcwd(),
    "argv": sys.argv,
    "path0": sys.path[0],
    "main": __name__,
    "fd_inheritable": os.get_inheritable(fd),
}
with open("result.json", "w") as f:
    json.dump(record, f)
print("hello from the script")
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


class Runner:
    def __init__(self, tmp_path: Path, warm: WarmPool | None) -> None:
        self.tmp = tmp_path
        self.events: queue.Queue[ScriptEvent] = queue.Queue()
        self.pool = warm
        self.supervisor = ScriptSupervisor(self.events.put, stop_grace=0.2, term_grace=2.0, warm=warm)

    def launch(self, name: str, body: str, variables: dict[str, str] | None = None) -> ScriptLaunch:
        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / "script.py"
        script.write_text(body)
        return ScriptLaunch(
            job=name,
            run_id="r1",
            script=script,
            cwd=folder,
            variables={"JOB_NAME": name, **(variables or {})},
            log_path=self.tmp / "logs" / name / "worker.log",
        )

    def exited(self, job: str) -> ScriptExited:
        while True:
            event = self.events.get(timeout=TIMEOUT)
            if isinstance(event, ScriptExited) and event.job == job:
                return event


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[WarmPool]:
    warm = WarmPool(("json",), log_path=tmp_path / "warm.log")
    warm.start()
    assert warm.wait_ready(TIMEOUT)
    yield warm
    warm.close()


def _run(runner: Runner, name: str) -> tuple[dict[str, object], ScriptExited, str, bool]:
    launch = runner.launch(name, RECORDER)
    script = runner.supervisor.start(launch)
    exited = runner.exited(name)
    record = json.loads((launch.cwd / "result.json").read_text())
    log = launch.log_path.read_text()
    body = log[log.index("===\n") + 4 :]  # after the header line, which says warm or cold
    return record, exited, body, script.warm


def test_warm_start_is_indistinguishable_from_cold(tmp_path: Path, pool: WarmPool) -> None:
    cold_record, cold_exit, cold_log, cold_warm = _run(Runner(tmp_path / "cold", None), "job")
    warm_record, warm_exit, warm_log, warm_warm = _run(Runner(tmp_path / "warm", pool), "job")
    assert (cold_warm, warm_warm) == (False, True)
    assert cold_exit.code == warm_exit.code == 3
    assert cold_log == warm_log == "hello from the script\nto stderr\n"
    # Same variables, cwd, argv, sys.path[0] modulo the two roots, and the same channel fd treatment.
    cold_text = json.dumps(cold_record, sort_keys=True).replace(str(tmp_path / "cold"), "ROOT")
    warm_text = json.dumps(warm_record, sort_keys=True).replace(str(tmp_path / "warm"), "ROOT")
    assert json.loads(cold_text) == json.loads(warm_text)
    assert warm_record["main"] == "__main__" and warm_record["fd_inheritable"] is True
    assert warm_record["path0"] == str(tmp_path / "warm" / "job")


CRASHES = {
    "raises": ("raise RuntimeError('boom')\n", 1, "RuntimeError: boom"),
    "os_exit": ("import os\nos._exit(7)\n", 7, None),
    "sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", -signal.SIGKILL, None),
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_a_crash_ends_only_its_run_and_the_next_job_is_warm(tmp_path: Path, pool: WarmPool, crash: str) -> None:
    body, code, in_log = CRASHES[crash]
    cold = Runner(tmp_path / "cold", None)
    cold.supervisor.start(cold.launch("crash", body))
    cold_exit = cold.exited("crash")
    runner = Runner(tmp_path / "warm", pool)
    first = runner.supervisor.start(runner.launch("crash", body))
    exited = runner.exited("crash")
    assert first.warm
    assert exited.code == cold_exit.code == code
    if in_log is not None:
        assert in_log in exited.tail and in_log in cold_exit.tail
    assert pool.wait_ready(TIMEOUT)  # a fresh worker was spawned when the crashed run exited
    second = runner.supervisor.start(runner.launch("next", "print('fine')\n"))
    assert second.warm and second.pid != first.pid
    assert runner.exited("next").code == 0


def test_a_warm_started_script_is_stopped_by_pid(tmp_path: Path, pool: WarmPool) -> None:
    runner = Runner(tmp_path, pool)
    loop = "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)\n"
    script = runner.supervisor.start(runner.launch("forever", loop))
    assert script.warm
    assert not pool.wait_ready(0.0)  # no successor importing while the run has the cores
    runner.supervisor.end("forever", "r1")  # the script ignores the stop frame: SIGTERM after the grace
    assert runner.exited("forever").code == -signal.SIGTERM
    assert runner.supervisor.running() == []
    assert pool.wait_ready(TIMEOUT)  # spawned when the run exited


def test_an_import_time_variable_that_differs_starts_cold(tmp_path: Path, pool: WarmPool) -> None:
    runner = Runner(tmp_path, pool)
    launch = runner.launch("omp", "import os\nprint(os.environ['OMP_NUM_THREADS'])\n", {"OMP_NUM_THREADS": "1"})
    script = runner.supervisor.start(launch)
    assert runner.exited("omp").code == 0
    assert not script.warm
    header = launch.log_path.read_text().splitlines()[1]
    assert "cold start: variables read at import time differ from the warm worker's: OMP_NUM_THREADS" in header
    assert launch.log_path.read_text().splitlines()[-1] == "1"
    # The warm worker was not used up: the next ordinary launch takes it.
    assert runner.supervisor.start(runner.launch("plain", "pass\n")).warm
    assert runner.exited("plain").code == 0


def test_a_dead_warm_worker_gives_a_cold_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "dies_on_import.py").write_text("import os\nos._exit(5)\n")
    monkeypatch.setenv("PYTHONPATH", f"{modules}:{os.environ.get('PYTHONPATH', '')}")
    warm = WarmPool(("dies_on_import",))
    warm.start()
    try:
        assert not warm.wait_ready(TIMEOUT)  # returns as soon as the worker died
        runner = Runner(tmp_path, warm)
        launch = runner.launch("a", "print('ran cold')\n")
        assert not runner.supervisor.start(launch).warm
        assert runner.exited("a").code == 0
        assert "(cold start: the warm worker died (exit code 5)) ===" in launch.log_path.read_text()
    finally:
        warm.close()
    runner = Runner(tmp_path, warm)
    launch = runner.launch("closed", "pass\n")
    assert not runner.supervisor.start(launch).warm  # a closed pool: cold, and the log says why
    assert "(cold start: no warm worker)" in launch.log_path.read_text()
    assert runner.exited("closed").code == 0
