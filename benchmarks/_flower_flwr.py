"""Flower's side of benchmarks/flower.py: the same job as a Flower app in Flower's deployment engine.

Before the clock starts: a SuperLink (``--insecure``, in-memory state, runtime dependency installation
off: the app's dependencies are already installed, as ours are, and ``uv sync`` would need the network)
and two SuperNodes (``--insecure``, default ``subprocess`` isolation: each message runs in a fresh
``flwr-clientapp`` process), both registered (``flwr supernode ls`` shows them online). Timed: ``flwr run
<app> bench --stream`` (a subprocess, as a user types it) until it returns, after the ServerApp wrote the
final model. The ServerApp's and ClientApps' own timestamps tell where the time went.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from benchmarks._flower_common import EDGES, EXAMPLE, Run, edge_data, score

APP_SOURCE = Path(__file__).resolve().parent / "_flower_app" / "sdd_flower.py"

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "sddbench"
version = "1.0.0"
description = "The surface defect detection seed job (benchmarks/flower.py)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "mqttfledge"

[tool.flwr.app.components]
serverapp = "sdd_flower:server"
clientapp = "sdd_flower:client"

[tool.flwr.app.config]
num-server-rounds = {rounds}
epochs = {epochs}
batch-size = {batch_size}
learning-rate = {learning_rate}
validation-split = {validation_split}
out-dir = "{out_dir}"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def write_app(
    app: Path,
    out_dir: Path,
    *,
    rounds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    validation_split: float,
) -> None:
    """The Flower app folder: our module, the example's interface.py (the same model code) and its pyproject."""
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy2(APP_SOURCE, app / "sdd_flower.py")
    shutil.copy2(EXAMPLE / "training_worker" / "interface.py", app / "interface.py")
    (app / "pyproject.toml").write_text(
        _PYPROJECT.format(
            rounds=rounds,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            validation_split=validation_split,
            out_dir=out_dir,
        )
    )


@contextmanager
def _processes() -> Iterator[list[tuple[subprocess.Popen[bytes], IO[bytes]]]]:
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    try:
        yield procs
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


def _start(
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]], argv: list[str], log_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    procs.append((proc, log))
    return proc


def _wait_nodes(
    env: dict[str, str], count: int, procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]], timeout: float
) -> None:
    """Until the SuperLink lists `count` SuperNodes online (each `flwr supernode ls` is one CLI call)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc, log in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a Flower process exited ({proc.args}); see {log.name}")
        done = subprocess.run(
            [_bin("flwr"), "supernode", "ls", "bench", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        last = done.stdout + done.stderr
        if done.returncode == 0:
            try:
                nodes = json.loads(done.stdout).get("nodes", [])
            except json.JSONDecodeError:
                nodes = []
            if sum(1 for n in nodes if str(n.get("status", "")).lower() == "online") >= count:
                return
        time.sleep(0.5)  # nothing to await: the SuperLink has no registration event a CLI could wait on
    raise RuntimeError(f"{count} SuperNodes not online within {timeout:.0f} s; last `flwr supernode ls`: {last[-800:]}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # polling a port: the SuperLink signals readiness no other way
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def phases(out_dir: Path, timings_files: list[Path], submitted: float, ended: float) -> dict[str, Any]:
    """Where Flower's time went: submit to the ServerApp's main (SuperLink starts flwr-serverapp, which
    imports Flower and installs the app), the ServerApp's TensorFlow import and model build, each round's
    training and evaluation phase, and main's end to `flwr run` returning; per ClientApp message the median
    process start-up and TensorFlow import."""
    server = json.loads((out_dir / "server-timings.json").read_text())
    out: dict[str, Any] = {
        "submit_to_serverapp_s": server["main_start"] - submitted,
        "serverapp_model_s": server["initial_ready"] - server["main_start"],
    }
    marks = server["marks"]
    for mark in marks:
        if mark["phase"] == "train_sent":
            r = mark["round"]
            replies = next(m["t"] for m in marks if m["round"] == r and m["phase"] == "train_replies")
            evaluated = next((m["t"] for m in marks if m["round"] == r and m["phase"] == "evaluate_replies"), replies)
            out[f"round{r}_train_s"] = replies - mark["t"]
            out[f"round{r}_eval_s"] = evaluated - replies
    out["finish_s"] = ended - server["end"]
    records = [json.loads(line) for path in timings_files if path.is_file() for line in path.read_text().splitlines()]
    if records:
        spawn = sorted(r["handler_start"] - r["process_start"] for r in records)
        tf = sorted(r["tf_import_s"] for r in records)
        out["clientapp_spawn_to_handler_s"] = spawn[len(spawn) // 2]
        out["clientapp_tf_import_s"] = tf[len(tf) // 2]
        out["clientapp_messages"] = len(records)
    return out


def run_flower(
    workdir: Path,
    root: Path,
    test_labels: Path,
    *,
    rounds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    validation_split: float,
    timeout: float,
) -> list[Run]:
    """One timed run on a fresh SuperLink and SuperNodes under `root`."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out_dir = root / "out"
    app = root / "app"
    write_app(
        app,
        out_dir,
        rounds=rounds,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_split=validation_split,
    )
    port = _free_port()
    home = root / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    # FLWR_HOME keeps Flower's state, installed apps and CLI config inside this run's folder.
    # PATH: the SuperLink and SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp by name.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    timings = []
    with _processes() as procs:
        link = _start(
            procs,
            [_bin("flower-superlink"), "--insecure", "--port", str(port), "--disable-runtime-dependency-installation"],
            root / "superlink.log",
            env,
        )
        _wait_port(port, link, timeout=60)
        for i, edge in enumerate(EDGES):
            labels = edge_data(workdir, edge) / EDGES[edge]
            timing = root / f"{edge}-timings.jsonl"
            timings.append(timing)
            node_config = f'data="{labels}" timings="{timing}" partition-id={i} num-partitions={len(EDGES)}'
            _start(
                procs,
                [
                    _bin("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    node_config,
                ],
                root / f"{edge}.log",
                env,
            )
        _wait_nodes(env, len(EDGES), procs, timeout=90)
        submitted = time.time()
        t0 = time.perf_counter()
        done = subprocess.run(
            [_bin("flwr"), "run", str(app), "bench", "--stream"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        wall = time.perf_counter() - t0
        ended = time.time()
        (root / "flwr-run.log").write_text(done.stdout + done.stderr)
    final = out_dir / "final.npz"
    if done.returncode != 0 or not final.is_file():
        raise RuntimeError(f"flwr run failed (exit {done.returncode}); see {root / 'flwr-run.log'}")
    scores = score(final, test_labels)
    return [
        Run(
            "flower-deployment",
            wall,
            scores["accuracy"],
            scores["balanced_accuracy"],
            phases(out_dir, timings, submitted, ended),
        )
    ]


def legacy_phases(out_dir: Path, go: float, ended: float) -> dict[str, Any]:
    """The legacy run's rounds (training, evaluation) from its server's marks, and go to round 1 (the
    initial weights fetched from a client) and the last evaluation to the server's exit."""
    server = json.loads((out_dir / "server-timings.json").read_text())
    marks = server["marks"]
    out: dict[str, Any] = {}
    sent = [m for m in marks if m["phase"] == "train_sent"]
    if sent:
        out["go_to_round1_s"] = sent[0]["t"] - go
    for mark in sent:
        r = mark["round"]
        replies = next(m["t"] for m in marks if m["round"] == r and m["phase"] == "train_replies")
        evaluated = next((m["t"] for m in marks if m["round"] == r and m["phase"] == "evaluate_replies"), replies)
        out[f"round{r}_train_s"] = replies - mark["t"]
        out[f"round{r}_eval_s"] = evaluated - replies
    out["finish_s"] = ended - server["end"]
    return out


def run_flower_legacy(
    workdir: Path,
    root: Path,
    test_labels: Path,
    *,
    rounds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    validation_split: float,
    timeout: float,
) -> list[Run]:
    """One run of Flower's older server/client API (sdd_legacy.py), timed two ways.

    ``flower-legacy-warm``: from ``go`` (server and clients up and connected, TensorFlow imported, data
    loaded) to the server's exit, Flower's best case. ``flower-legacy-cold``: from launching the server and
    the two clients to the server's exit, which is what a job costs with this API: a client serves one run
    (``start_client`` returns when the server ends it) and holds that job's model code and data, so its
    processes start per job. ``go`` is sent as soon as the server says ready, so cold = start-up + warm."""
    shutil.rmtree(root, ignore_errors=True)
    app = root / "app"
    app.mkdir(parents=True)
    shutil.copy2(APP_SOURCE.with_name("sdd_legacy.py"), app / "sdd_legacy.py")
    shutil.copy2(EXAMPLE / "training_worker" / "interface.py", app / "interface.py")
    out_dir = root / "out"
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    script = str(app / "sdd_legacy.py")
    args = [str(rounds), str(epochs), str(batch_size), str(learning_rate), str(validation_split)]
    launched = time.perf_counter()
    with _processes() as procs:
        log = (root / "server.log").open("ab")
        server = subprocess.Popen(
            [sys.executable, script, "server", address, str(out_dir), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        procs.append((server, log))
        for edge in EDGES:
            labels = edge_data(workdir, edge) / EDGES[edge]
            _start(procs, [sys.executable, script, "client", address, str(labels)], root / f"{edge}.log", env)
        assert server.stdin is not None and server.stdout is not None
        _await_ready(server, timeout=300)  # both clients connected
        go = time.time()
        t0 = time.perf_counter()
        startup = t0 - launched
        server.stdin.write(b"go\n")
        server.stdin.flush()
        server.wait(timeout=timeout)
        wall = time.perf_counter() - t0
        ended = time.time()
    final = out_dir / "final.npz"
    if server.returncode != 0 or not final.is_file():
        raise RuntimeError(f"the legacy Flower server failed (exit {server.returncode}); see {root / 'server.log'}")
    scores = score(final, test_labels)
    phases_ = legacy_phases(out_dir, go, ended)
    return [
        Run(
            "flower-legacy-cold",
            startup + wall,
            scores["accuracy"],
            scores["balanced_accuracy"],
            {"startup_s": startup, **phases_},
        ),
        Run("flower-legacy-warm", wall, scores["accuracy"], scores["balanced_accuracy"], phases_),
    ]


def _await_ready(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until `proc` prints ``ready`` on its stdout (RuntimeError after `timeout` or when it exits first)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                break
            line = proc.stdout.readline().decode()
            if line.strip() == "ready":
                return
            if not line:  # end of file: the server exited
                raise RuntimeError(f"{proc.args[1]} exited before it was ready ({proc.wait(timeout=10)})")
    raise RuntimeError(f"{proc.args[1]} not ready within {timeout:.0f} s")
