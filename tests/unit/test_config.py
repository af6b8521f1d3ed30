"""The rendered Mosquitto configuration, the launcher and the `fl-broker` command."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker import BrokerError, Inbound, MqttSettings, Session
from broker.mosquitto import BrokerConfig, LocalBroker, render_config
from broker.mosquitto.cli import main
from tests.helpers.mqtt import free_port, wait_until
from tests.helpers.mqtt import start_local_broker as start_broker

REPO = Path(__file__).resolve().parents[2]
LIMITS = (
    "max_packet_size",
    "max_inflight_messages",
    "max_inflight_bytes",
    "max_queued_messages",
    "max_queued_bytes",
    "queue_qos0_messages",
    "memory_limit",
    "autosave_interval",
    "persistent_client_expiration",
    "sys_interval",
)


def settings_of(text: str) -> dict[str, list[str]]:
    """Option name -> values, ignoring comments."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            found.setdefault(name, []).append(value)
    return found


def test_rendered_config_sets_every_limit_explicitly(tmp_path: Path) -> None:
    """Every size, queue and persistence limit is written with the configured value, with a comment."""
    cfg = BrokerConfig(
        1884, data_dir=tmp_path, max_packet_size=1_000_000, max_queued_messages=123, max_queued_bytes=456
    )

    text = render_config(cfg)

    opts = settings_of(text)
    assert all(name in opts for name in LIMITS), [n for n in LIMITS if n not in opts]
    assert opts["max_packet_size"] == ["1000000"]
    assert opts["max_queued_messages"] == ["123"] and opts["max_queued_bytes"] == ["456"]
    assert opts["max_inflight_messages"] == ["20"] and opts["queue_qos0_messages"] == ["false"]
    assert opts["listener"] == ["1884 127.0.0.1"] and opts["per_listener_settings"] == ["false"]
    assert opts["persistence"] == ["true"] and opts["persistence_location"] == [f"{tmp_path}/"]
    assert opts["log_dest"] == ["stderr"] and opts["connection_messages"] == ["true"] and opts["sys_interval"] == ["10"]
    assert "message_size_limit" not in opts
    lines = text.splitlines()
    for name in ("max_packet_size", "max_queued_messages", "max_queued_bytes", "autosave_interval"):
        index = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
        assert lines[index - 1].startswith("#"), f"{name} has no comment"


def test_rendered_config_names_auth_files_and_root_user(tmp_path: Path) -> None:
    """Password and ACL files appear when given; `user root` exactly when running as root."""
    cfg = BrokerConfig(
        1884, data_dir=tmp_path, allow_anonymous=False, password_file=tmp_path / "passwd", acl_file=tmp_path / "acl"
    )

    as_root = settings_of(render_config(BrokerConfig(**{**cfg.__dict__, "run_as_root": True})))
    as_user = settings_of(render_config(BrokerConfig(**{**cfg.__dict__, "run_as_root": False})))

    assert as_root["password_file"] == [str(tmp_path / "passwd")] and as_root["acl_file"] == [str(tmp_path / "acl")]
    assert as_root["allow_anonymous"] == ["false"] and as_root["user"] == ["root"]
    assert "user" not in as_user
    assert ("user" in settings_of(render_config(cfg))) == (os.geteuid() == 0)


def test_config_rejects_values_mosquitto_cannot_express(tmp_path: Path) -> None:
    """A path with whitespace or an out-of-range port is refused with ValueError naming it."""
    with pytest.raises(ValueError, match="data_dir"):
        BrokerConfig(1884, data_dir=tmp_path / "with space")
    with pytest.raises(ValueError, match="port 0"):
        BrokerConfig(0, data_dir=tmp_path)


@pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd (package mosquitto) is not installed"
)
def test_mosquitto_accepts_the_rendered_config_with_auth(tmp_path: Path) -> None:
    """Mosquitto starts with a rendered config that has limits, a password file and an ACL; it enforces the password."""
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge1", "s3cret"], check=True, capture_output=True)
    passwd.chmod(0o600)
    acl.write_text("pattern readwrite fl/%u/#\n")
    local = start_broker(tmp_path / "m", allow_anonymous=False, password_file=passwd, acl_file=acl)
    inbox: queue.Queue[Inbound] = queue.Queue()
    good = Session(MqttSettings(client_id="edge1", port=local.port, username="edge1", password="s3cret"), inbox=inbox)
    bad_settings = MqttSettings(
        client_id="edge2", port=local.port, username="edge1", password="wrong", reconnect_min=0.1
    )
    bad = Session(bad_settings, inbox=inbox)
    try:
        good.start()
        bad.start()

        assert good.wait_connected(5.0)
        wait_until(lambda: bad.connect_error is not None, 5.0, "refused")
        assert bad.connect_error is not None and bad.connect_error.reason_code == 0x87  # Not authorized
        log = local.log_text()
        assert "Error" not in log and "Unknown configuration" not in log
    finally:
        bad.stop(timeout=1.0)
        good.stop(timeout=1.0)
        local.stop()


def test_local_broker_restart_keeps_port_and_stop_frees_it(tmp_path: Path) -> None:
    """restart() comes back on the same port; stop() returns only once the port is free."""
    local = start_broker(tmp_path)
    port = local.port

    local.restart()
    assert local.running and local.port == port
    local.stop()

    assert not local.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()


def test_local_broker_reports_a_config_mosquitto_rejects(tmp_path: Path) -> None:
    """A config mosquitto refuses fails start() with BrokerError quoting the broker's log."""
    local = LocalBroker(BrokerConfig(free_port(), data_dir=tmp_path, extra="no_such_option 1"), tmp_path)

    with pytest.raises(BrokerError, match="no_such_option"):
        local.start(timeout=5.0)


def test_cli_config_prints_the_rendered_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fl-broker config` prints the same text render_config() produces."""
    code = main(["config", "--port", "1890", "--data-dir", str(tmp_path), "--max-packet-size", "2000000"])

    assert code == 0
    expected = render_config(BrokerConfig(1890, data_dir=tmp_path, max_packet_size=2_000_000))
    assert capsys.readouterr().out == expected


def test_cli_run_serves_until_sigterm(tmp_path: Path) -> None:
    """`fl-broker run` runs mosquitto in the foreground with the rendered config and exits cleanly on SIGTERM."""
    port = free_port()
    conf = tmp_path / "out" / "broker.conf"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "broker.mosquitto.cli",
        "run",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    proc = subprocess.Popen([*cmd, "--conf-out", str(conf)], env=env, stderr=subprocess.PIPE)
    try:
        inbox: queue.Queue[Inbound] = queue.Queue()
        session = Session(MqttSettings(client_id="probe", port=port, reconnect_min=0.1, reconnect_max=0.2), inbox=inbox)
        session.start()
        try:
            assert session.wait_connected(10.0)
        finally:
            session.stop(timeout=1.0)
        assert settings_of(conf.read_text())["listener"] == [f"{port} 127.0.0.1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10.0)
    assert proc.returncode == 0, err.decode()
    assert b"mosquitto version" in err and (tmp_path / "data" / "mosquitto.db").exists()
