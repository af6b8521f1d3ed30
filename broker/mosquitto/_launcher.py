"""Run a local Mosquitto from a `BrokerConfig`: tests, the demo and `fl-broker run`.

The binary comes from ``MOSQUITTO_BIN``, ``shutil.which("mosquitto")`` or ``/usr/sbin/mosquitto``
(Debian installs it in sbin, which a non-root PATH may lack). The rendered config and the broker's log
(``mosquitto.log``) live in the work directory. Readiness is "the process is alive, says it is running
and the port accepts connections", every wait bounded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from broker._errors import BrokerError
from broker.mosquitto._config import BrokerConfig, render_config

__all__ = ["LocalBroker", "find_mosquitto", "find_mosquitto_passwd", "port_open"]

_DEBIAN_PATH = "/usr/sbin/mosquitto"
_POLL = 0.02


def _find(program: str, env: str, debian_path: str) -> str | None:
    """A Mosquitto program: the path in `env`, then PATH, then where Debian installs it; None if none."""
    given = os.environ.get(env)
    if given:
        return given
    found = shutil.which(program)
    if found:
        return found
    return debian_path if os.access(debian_path, os.X_OK) else None


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (MOSQUITTO_BIN, PATH, /usr/sbin), or None if there is none."""
    return _find("mosquitto", "MOSQUITTO_BIN", _DEBIAN_PATH)


def find_mosquitto_passwd() -> str | None:
    """Path of mosquitto_passwd (MOSQUITTO_PASSWD_BIN, PATH, /usr/bin), or None if there is none."""
    return _find("mosquitto_passwd", "MOSQUITTO_PASSWD_BIN", "/usr/bin/mosquitto_passwd")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class LocalBroker:
    """One Mosquitto process for `cfg`, with its config and log in `workdir`."""

    def __init__(self, cfg: BrokerConfig, workdir: Path | str, *, binary: str | None = None) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def port(self) -> int:
        return self.cfg.port

    @property
    def host(self) -> str:
        """Where clients connect: the bind address (loopback when bound to all interfaces)."""
        return "127.0.0.1" if self.cfg.bind in ("0.0.0.0", "") else self.cfg.bind

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 10.0) -> LocalBroker:
        """Write the config, start mosquitto, wait until it accepts connections; BrokerError if it does not."""
        if self.running:
            return self
        binary = self._binary or find_mosquitto()
        if binary is None:
            raise BrokerError("no mosquitto binary: install it (apt-get install mosquitto) or set MOSQUITTO_BIN")
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path(self.cfg.data_dir).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render_config(self.cfg))
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        try:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot run {binary}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                self._close_log()
                raise BrokerError(f"mosquitto exited with code {code} at start: {self._log_since(log_start)}")
            if b" running" in self._log_bytes(log_start) and port_open(self.host, self.port):
                return self
            if time.monotonic() > deadline:
                self.stop(hard=True)
                raise BrokerError(
                    f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s: {self._log_since(log_start)}"
                )
            time.sleep(_POLL)

    def stop(self, hard: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (graceful: saves persistence) or SIGKILL (`hard`), wait, then wait until the port is free."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                if hard:
                    proc.kill()
                else:
                    proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._close_log()
        if proc is None:
            return
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port, timeout=0.1):
            if time.monotonic() > deadline:
                raise BrokerError(f"port {self.port} still accepts connections {timeout} s after stopping mosquitto")
            time.sleep(_POLL)

    def restart(self, hard: bool = False, timeout: float = 10.0) -> None:
        """Stop (gracefully unless `hard`) and start again on the same port with the same data."""
        self.stop(hard=hard, timeout=timeout)
        self.start(timeout=timeout)

    def log_text(self) -> str:
        """Everything the broker logged so far (all runs in this work directory)."""
        return self._log_bytes(0).decode(errors="replace")

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_bytes(self, start: int) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read()
        except OSError:
            return b""

    def _log_since(self, start: int) -> str:
        text = self._log_bytes(start).decode(errors="replace").strip()
        return text[-2000:] if text else "(no log output)"
