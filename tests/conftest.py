"""Shared fixtures. Broker-specific machinery lives in tests/helpers/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import MqttSettings
from broker.mosquitto import find_mosquitto
from tests.helpers.mqtt import TEST_RECONNECT_MAX, TEST_RECONNECT_MIN, BrokerHandle, SessionFactory, start_local_broker


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerHandle]:
    """A real Mosquitto for this test on a free 127.0.0.1 port, data and log in tmp_path.

    Parametrize indirectly with a dict of BrokerConfig overrides, e.g.
    ``@pytest.mark.parametrize("broker", [{"max_packet_size": 16384}], indirect=True)``.
    """
    overrides: dict[str, Any] = getattr(request, "param", None) or {}
    workdir = tmp_path / "mosquitto"
    if find_mosquitto() is not None:
        local = start_local_broker(workdir, **overrides)
        try:
            yield BrokerHandle(local.host, local.port, workdir, local=local)
        finally:
            local.stop(hard=True)
        return
    yield from _container_broker(workdir, overrides)


def _container_broker(workdir: Path, overrides: dict[str, Any]) -> Iterator[BrokerHandle]:
    """Fallback when no mosquitto binary exists: testcontainers, only if a Docker engine answers."""
    try:
        import docker.errors
        from testcontainers.community.mqtt import MosquittoContainer
    except ImportError:
        pytest.fail("no mosquitto binary (apt-get install mosquitto, or set MOSQUITTO_BIN) and no testcontainers")
    from broker.mosquitto import BrokerConfig, render_config

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = BrokerConfig(1883, bind="0.0.0.0", data_dir=Path("/mosquitto/data"), run_as_root=False, **overrides)
    conf = workdir / "mosquitto.conf"
    conf.write_text(render_config(cfg))
    try:
        container = MosquittoContainer(image="eclipse-mosquitto:2.0.18")  # 2.0 line, like Debian's 2.0.11
    except docker.errors.DockerException:
        pytest.fail("no mosquitto binary and no Docker engine: apt-get install mosquitto (or set MOSQUITTO_BIN)")
    container.start(configfile=str(conf))
    try:
        yield BrokerHandle(
            container.get_container_host_ip(), int(container.get_exposed_port(1883)), workdir, container=container
        )
    finally:
        container.stop()


@pytest.fixture
def mqtt_settings_factory(broker: BrokerHandle) -> Callable[..., MqttSettings]:
    """``factory(client_id, **overrides)``: MqttSettings for the test broker, with fast reconnects."""

    def factory(client_id: str, **overrides: Any) -> MqttSettings:
        values: dict[str, Any] = {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min": TEST_RECONNECT_MIN,
            "reconnect_max": TEST_RECONNECT_MAX,
            "keepalive": 5,
        }
        values.update(overrides)
        return MqttSettings(client_id=client_id, **values)

    return factory


@pytest.fixture
def session_factory(mqtt_settings_factory: Callable[..., MqttSettings]) -> Iterator[SessionFactory]:
    """``factory(client_id, will=None, connect=True, **settings)`` -> (started Session, inbox); all stopped at teardown."""
    factory = SessionFactory(mqtt_settings_factory)
    try:
        yield factory
    finally:
        factory.close()
