"""Start-up time of a job, cold vs warm worker: the demo's seed job (the example's train.py, its model, the
synthetic magnetic-tile data, 2 edges), through a real Mosquitto and the real services as processes.

For each repeat and mode a fresh deployment is laid out (run_demo's `prepare`) and started; with
``--warm-worker`` the edges' warm workers are ready before the job is created, as on a node that was up
before its job (the realistic case: a node service runs for days, jobs come and go). Times, all from the
moment before ``flctl create`` publishes the spec, read from the edges' service logs (UTC timestamps of
the same clock):

- cloud script: the aggregator started its aggregation script (always cold: the warm worker is the edge's);
- script: the first edge started its training script (cold interpreter or warm worker);
- first upload: the first weights left an edge (the example uploads its initial weights first, kind
  ``init``);
- first update: the first round-1 update left an edge (after round 1's local training);
- job: the job's status said Succeeded.

Run: ``.venv/bin/python benchmarks/startup.py --repeats 3`` (about 1 min per repeat and mode). Medians
and the cold/warm ratios are printed; the machine has 2 cores shared with other work, so the ratios
within one run are what count.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flctl import cli as flctl_cli  # noqa: E402
from flctl.cluster import LocalCluster  # noqa: E402
from schemas import Phase, Topics  # noqa: E402
from tests.helpers.mqtt import wait_until  # noqa: E402
from tests.helpers.status import JobWatcher  # noqa: E402

WAIT = 600.0


def _demo() -> ModuleType:
    path = REPO / "examples" / "surface_defect_detection" / "run_demo.py"
    spec = importlib.util.spec_from_file_location("run_demo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _at(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def run_once(demo: ModuleType, workdir: Path, *, warm: bool, scale: float) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        demo.prepare(workdir, scale, 0)
        spec = demo.job_with_held_out_data(
            demo.HERE / "surface-defect-detection.yaml", workdir / "surface-defect-detection.yaml"
        )
    edges = list(demo.EDGES)
    with LocalCluster(workdir) as cluster:
        cluster.start_broker()
        cluster.start_node(demo.AGGREGATOR, "aggregator")
        for edge in edges:
            cluster.start_node(edge, "edge", extra_args=["--warm-worker"] if warm else [])
        logs = [workdir / e / "service.log" for e in edges]
        # Both modes: every service is up and connected before the job; warm: the edges' workers are ready.
        wanted = [(workdir / n / "service.log", '"event": "mqtt connected"') for n in (demo.AGGREGATOR, *edges)]
        wanted += [(log, "warm worker ready") for log in logs] if warm else []
        for log, line in wanted:
            wait_until(lambda log=log, line=line: log.exists() and line in log.read_text(), 120, f"{log}: {line}")
        with JobWatcher(cluster.settings("bench-startup"), Topics(), demo.JOB) as watcher:
            with contextlib.redirect_stdout(io.StringIO()):
                t0 = time.time()
                assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
            status = watcher.wait_finished(WAIT)
            t_end = time.time()
    assert status.phase is Phase.SUCCEEDED, watcher.describe()
    events = [e for log in logs for e in _events(log)]
    started = [e for e in events if e.get("event") == "script started"]
    assert all(e.get("start") == ("warm" if warm else "cold") for e in started), started
    uploads = [e for e in events if e.get("event") == "weights uploaded"]
    updates = [e for e in uploads if e.get("kind") == "update" and e.get("round") == 1]
    cloud = [e for e in _events(workdir / demo.AGGREGATOR / "service.log") if e.get("event") == "script started"]
    return {
        "cloud script": min(map(_at, cloud)) - t0,
        "script": min(map(_at, started)) - t0,
        "first upload": min(map(_at, uploads)) - t0,
        "first update": min(map(_at, updates)) - t0,
        "job": t_end - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.25, help="dataset size relative to the real one")
    args = parser.parse_args(argv)
    demo = _demo()
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for i in range(args.repeats):
            for mode in ("cold", "warm"):  # interleaved: drifting machine load hits both alike
                r = run_once(demo, Path(tmp) / f"{mode}{i}", warm=mode == "warm", scale=args.scale)
                results[mode].append(r)
                print(f"repeat {i + 1} {mode}: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.items()), flush=True)
    print(f"\nmedians over {args.repeats} repeats (seconds from `flctl create`):")
    print(f"{'':14} {'cold':>8} {'warm':>8} {'cold/warm':>10}")
    for key in results["cold"][0]:
        cold = statistics.median(r[key] for r in results["cold"])
        warm = statistics.median(r[key] for r in results["warm"])
        print(f"{key:14} {cold:8.2f} {warm:8.2f} {cold / warm:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
