"""A real Prometheus server for a test: Debian's `prometheus` binary on a free loopback port, with a
temporary config (scrape every second), data folder and the project's alert rules, queried over its HTTP
API. Prometheus offers no push notification of a new sample, so waits poll its API, bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.helpers.mqtt import free_port

POLL = 0.25
READY_TIMEOUT = 30.0


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusServer:
    """`with PrometheusServer(workdir, targets=[...], rule_files=[...]) as prom:` scrapes the targets
    (job `fl-cloud-aggregator`) every second; `query`, `wait_value` read what it scraped."""

    def __init__(self, workdir: Path, *, targets: Sequence[str], rule_files: Sequence[Path] = ()) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed")
        self.binary = binary
        self.workdir = workdir
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": "fl-cloud-aggregator", "static_configs": [{"targets": self.targets}]},
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        for _attempt in range(3):  # another process may take the free port before prometheus binds it
            self.port = free_port()
            log = (self.workdir / "prometheus.log").open("ab")
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{self.log_tail()}")

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(POLL)
        return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: {the series' labels, sorted "k=v" joined by ",": value}."""
        result = self.api("query", query=expr)["result"]
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in ("job", "instance")): float(
                r["value"][1]
            )
            for r in result
        }

    def wait_value(self, expr: str, ok: Callable[[float], bool], timeout: float, what: str = "") -> float:
        """Poll `expr` (one series) until `ok(value)`; fail with the last answer after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: dict[str, float] = {}
        while time.monotonic() < deadline:
            last = self.query(expr)
            if len(last) == 1:
                (value,) = last.values()
                if ok(value):
                    return value
            time.sleep(POLL)
        raise AssertionError(f"{what or expr}: not reached within {timeout} s; last answer {last}")
