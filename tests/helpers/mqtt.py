"""Helpers for tests against a real broker: a local Mosquitto per test, sessions that stop themselves,
bounded waits on inboxes."""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import BrokerError, Inbound, MqttSettings, Session
from broker.mosquitto import BrokerConfig, LocalBroker

# Test timings: reconnect fast, detect dead links in a few seconds.
TEST_RECONNECT_MIN = 0.1
TEST_RECONNECT_MAX = 0.5


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_local_broker(workdir: Path, attempts: int = 3, **overrides: Any) -> LocalBroker:
    """A started LocalBroker on a free loopback port; retries when another process grabbed the port."""
    last: BrokerError | None = None
    for _ in range(attempts):
        cfg = BrokerConfig(free_port(), data_dir=workdir / "data", **{"autosave_interval": 1, **overrides})
        local = LocalBroker(cfg, workdir)
        try:
            return local.start(timeout=10.0)
        except BrokerError as exc:
            if "Address already in use" not in str(exc):
                raise
            last = exc
    raise BrokerError(f"no free port for mosquitto after {attempts} attempts") from last


@dataclass
class BrokerHandle:
    """What the `broker` fixture yields: where to connect, and control over the broker process."""

    host: str
    port: int
    workdir: Path
    local: LocalBroker | None = None
    container: Any = None

    def stop(self, hard: bool = False) -> None:
        if self.local is not None:
            self.local.stop(hard=hard)
        else:
            self.container.get_wrapped_container().stop()

    def start(self) -> None:
        if self.local is not None:
            self.local.start()
        else:
            self.container.get_wrapped_container().start()

    def restart(self, hard: bool = False) -> None:
        self.stop(hard=hard)
        self.start()

    def log_text(self) -> str:
        if self.local is not None:
            return self.local.log_text()
        logs: bytes = self.container.get_wrapped_container().logs()
        return logs.decode(errors="replace")


@dataclass
class SessionFactory:
    """Starts sessions on the test broker and stops every one of them at teardown."""

    settings: Callable[..., MqttSettings]
    sessions: list[Session] = field(default_factory=list)

    def __call__(
        self,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        connect: bool = True,
        **overrides: Any,
    ) -> tuple[Session, queue.Queue[Inbound]]:
        inbox: queue.Queue[Inbound] = queue.Queue()
        session = Session(self.settings(client_id, **overrides), inbox=inbox, will=will)
        self.sessions.append(session)
        session.start()
        if connect:
            assert session.wait_connected(10.0), f"{client_id} did not connect within 10 s"
        return session, inbox

    def close(self) -> None:
        for session in reversed(self.sessions):
            session.stop(timeout=2.0)


def take(inbox: queue.Queue[Inbound], count: int, timeout: float = 10.0) -> list[Inbound]:
    """Exactly `count` messages from `inbox` within `timeout` seconds (AssertionError otherwise)."""
    deadline = time.monotonic() + timeout
    got: list[Inbound] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        try:
            got.append(inbox.get(timeout=max(0.001, remaining)))
        except queue.Empty:
            raise AssertionError(
                f"got {len(got)} of {count} messages within {timeout} s: {[m.topic for m in got]}"
            ) from None
    return got


def take_all(inbox: queue.Queue[Inbound]) -> list[Inbound]:
    """Everything already in `inbox`, without waiting."""
    got: list[Inbound] = []
    with contextlib.suppress(queue.Empty):
        while True:
            got.append(inbox.get_nowait())
    return got


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` (for states that have no event to wait on) until true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(0.02)


@contextlib.contextmanager
def stopped(session: Session) -> Iterator[Session]:
    try:
        yield session
    finally:
        session.stop(timeout=2.0)
