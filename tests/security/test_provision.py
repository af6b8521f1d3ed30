"""`flctl broker init` as a user runs it: the layout, permissions, no secret on the terminal, no overwrite,
and a Mosquitto started with exactly the written config (`mosquitto -c DIR/broker/mosquitto.conf`)."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Inbound, MqttSettings, Session, load_node_config
from broker.mosquitto import find_mosquitto, port_open
from tests.helpers.mqtt import free_port, wait_until

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]


def flctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flctl", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_broker_init_writes_the_planned_layout_with_private_secrets(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    done = flctl(
        "broker", "init", "--nodes", "cloud0,edge1", "--nodes", "edge2", "--out", str(out),
        "--hostname", "broker.example.com", "--client-certs", "--viewer", "viewer,ops",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    expected = {
        "broker/mosquitto.conf", "broker/passwd", "broker/acl", "broker/ca.crt", "broker/server.crt",
        "broker/server.key", "ca/ca.key", "admin/flctl.yaml", "admin/ca.crt",
        "viewer/viewer.yaml", "viewer/ops.yaml", "viewer/ca.crt",
        "monitor/monitor/monitor.yaml", "monitor/monitor/mosquitto_sub", "monitor/monitor/ca.crt",
        *(f"nodes/{n}/{f}" for n in ("cloud0", "edge1", "edge2") for f in ("node.yaml", "ca.crt", f"{n}.crt", f"{n}.key")),
    }  # fmt: skip
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert expected <= written, expected - written
    secrets = [
        p
        for p in out.rglob("*")
        if p.is_file() and (p.suffix in (".key", ".yaml") or p.name in ("passwd", "mosquitto_sub"))
    ]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    configs = {n: load_node_config(out / "nodes" / n / "node.yaml") for n in ("cloud0", "edge1", "edge2")}
    admin = load_node_config(out / "admin" / "flctl.yaml")
    assert {n: c.role for n, c in configs.items()} == {"cloud0": "aggregator", "edge1": "edge", "edge2": "edge"}
    assert admin.role == "admin" and admin.node == "admin"
    assert load_node_config(out / "viewer" / "ops.yaml").role == "viewer"
    monitor = load_node_config(out / "monitor" / "monitor" / "monitor.yaml")
    assert monitor.role == "monitor" and f"-P {monitor.password}" in (out / "monitor/monitor/mosquitto_sub").read_text()
    assert configs["edge1"].broker.host == "broker.example.com" and configs["edge1"].broker.port == 8883
    assert configs["edge1"].tls is not None and configs["edge1"].tls.cert == str(out / "nodes/edge1/edge1.crt")
    passwords = [c.password for c in (*configs.values(), admin)]
    assert all(p and len(p) >= 24 for p in passwords) and len(set(passwords)) == 4
    assert "ops" in done.stdout and "viewer" in done.stdout
    # never on the terminal, never hashed by us in clear
    for password in passwords:
        assert password is not None
        assert password not in done.stdout + done.stderr
        assert password not in (out / "broker" / "passwd").read_text()
    assert "$7$" in (out / "broker" / "passwd").read_text()  # mosquitto's pbkdf2 hashes, written by us
    conf = (out / "broker" / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", "use_username_as_clientid true", "tls_version tlsv1.2",
                 "require_certificate true", "use_identity_as_username true", "listener 1883 127.0.0.1", "listener 8883"):  # fmt: skip
        assert line in conf.splitlines(), line
    assert f"password_file {out}/broker/passwd" in conf

    again = flctl("broker", "init", "--nodes", "edge1", "--out", str(out))
    assert again.returncode != 0 and "--force" in again.stderr
    assert load_node_config(out / "nodes" / "edge2" / "node.yaml").password == configs["edge2"].password
    forced = flctl("broker", "init", "--nodes", "edge1", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "nodes" / "edge2").exists()


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    for args in (
        ["--nodes", "Edge_1"],
        ["--nodes", "edge1,edge1"],
        ["--nodes", "edge1", "--aggregators", "cloud9"],
        ["--nodes", "admin"],
        ["--nodes", "edge1", "--viewer", "admin"],
        ["--nodes", "edge1", "--monitor", "edge1"],
        ["--nodes", "edge1", "--viewer", "ops", "--monitor", "ops"],
        ["--nodes", "edge1", "--port", "1883"],
    ):
        done = flctl("broker", "init", *args, "--out", str(tmp_path / "x"))
        assert done.returncode == 2, (args, done.stderr)
        assert not (tmp_path / "x").exists()


def test_mosquitto_runs_the_written_config_as_is(tmp_path: Path) -> None:
    """`mosquitto -c DIR/broker/mosquitto.conf`, untouched: the admin connects over TLS with its config,
    anonymous does not get in on the plain loopback listener."""
    binary = find_mosquitto()
    assert binary is not None
    out, tls_port, plain_port = tmp_path / "s", free_port(), free_port()
    done = flctl("broker", "init", "--nodes", "cloud0,edge1", "--out", str(out), "--port", str(tls_port),
                 "--plain-port", str(plain_port), "--bind", "127.0.0.1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(out / "broker" / "mosquitto.conf")], stdout=log, stderr=log)
    sessions: list[Session] = []
    try:
        wait_until(lambda: port_open("127.0.0.1", tls_port) and port_open("127.0.0.1", plain_port), 10.0, "listening")
        admin = load_node_config(out / "admin" / "flctl.yaml")
        values = {**admin.mqtt_values(), "host": "127.0.0.1", "port": tls_port}
        inbox: queue.Queue[Inbound] = queue.Queue()
        ok = Session(MqttSettings(client_id="admin", **values), inbox=inbox)
        anon = Session(
            MqttSettings(client_id="anon", port=plain_port, reconnect_min=0.1, reconnect_max=0.5), inbox=inbox
        )
        sessions += [ok, anon]
        ok.start()
        anon.start()
        assert ok.wait_connected(10.0)
        ok.barrier(10.0)  # its own sync topic is allowed
        wait_until(lambda: anon.connect_error is not None, 10.0, "anonymous refused")
        # the flctl command line with the admin config reads the (empty) job list
        got = flctl(
            "--config", str(out / "admin" / "flctl.yaml"), "--host", "127.0.0.1", "--port", str(tls_port), "get", "fl"
        )
        assert got.returncode == 0, got.stderr
    finally:
        for s in sessions:
            s.stop(timeout=2.0)
        proc.terminate()
        proc.wait(10)
        log.close()
    assert os.path.exists(out / "broker" / "data" / "mosquitto.db")
