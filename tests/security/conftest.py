"""The security tests' rig: a deployment provisioned the way `flctl broker init` does it, its Mosquitto
started with the generated config, and sessions that connect as any of its identities over TLS."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker import Inbound, MqttSettings, Session, load_node_config
from broker.mosquitto import LocalBroker
from flctl.provision import Provisioned, provision
from tests.helpers.mqtt import TEST_RECONNECT_MAX, TEST_RECONNECT_MIN, free_port

NODES = ["cloud0", "edge1", "edge2"]


@dataclass
class SecureBroker:
    """A running broker with the generated config, and a factory of sessions for its identities."""

    prov: Provisioned
    local: LocalBroker
    sessions: list[Session] = field(default_factory=list)

    def settings(self, identity: str, *, plain: bool = False, **overrides: Any) -> MqttSettings:
        """`identity`'s settings from its node.yaml, aimed at 127.0.0.1 (TLS port, or the plain one)."""
        values = load_node_config(self.prov.configs[identity]).mqtt_values()
        values.update(
            host="127.0.0.1",
            port=self.prov.plain_port if plain else self.prov.tls_port,
            reconnect_min=TEST_RECONNECT_MIN,
            reconnect_max=TEST_RECONNECT_MAX,
            keepalive=5,
        )
        if plain:
            for name in ("tls_ca", "tls_cert", "tls_key"):
                values.pop(name, None)
        values.setdefault("client_id", identity)
        values.update(overrides)
        return MqttSettings(**values)

    def session(
        self, settings: MqttSettings, *, connect: bool = True, subscribe: tuple[str, ...] = ()
    ) -> tuple[Session, queue.Queue[Inbound]]:
        inbox: queue.Queue[Inbound] = queue.Queue()
        session = Session(settings, inbox=inbox)
        self.sessions.append(session)
        for flt in subscribe:
            session.subscribe(flt)
        session.start()
        if connect:
            assert session.wait_connected(10.0), f"{settings.client_id} did not connect: {session.connect_error}"
        return session, inbox

    def close(self) -> None:
        for session in reversed(self.sessions):
            session.stop(timeout=2.0)
        self.local.stop(hard=True)


def provision_for_test(out: Path, **kwargs: Any) -> Provisioned:
    return provision(out, NODES, port=free_port(), plain_port=free_port(), bind="127.0.0.1", **kwargs)


@pytest.fixture
def secure(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SecureBroker]:
    """The provisioned deployment's broker. Parametrize indirectly with provision() keyword arguments."""
    kwargs: dict[str, Any] = getattr(request, "param", None) or {}
    prov = provision_for_test(tmp_path / "secrets", **kwargs)
    local = LocalBroker(prov.broker_config, prov.out / "broker").start(timeout=10.0)
    rig = SecureBroker(prov, local)
    try:
        yield rig
    finally:
        rig.close()
