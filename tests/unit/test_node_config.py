"""node.yaml: loading, relative paths, and where each connection setting comes from (flags > env > file)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from broker import add_mqtt_arguments, load_node_config, mqtt_settings_from_args, node_config_from_args, node_from_args
from flctl import main as flctl_main
from flctl.cli import broker_options, build_parser

NODE_YAML = """\
node: edge1
role: edge
broker: {host: broker.example.com, port: 8883}
username: edge1
password: "from-the-file"
tls: {ca: ca.crt}
"""


@pytest.fixture
def node_yaml(tmp_path: Path) -> Path:
    folder = tmp_path / "edge1"
    folder.mkdir()
    (folder / "ca.crt").write_text("not really a certificate")
    path = folder / "node.yaml"
    path.write_text(NODE_YAML)
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node")
    add_mqtt_arguments(parser)
    return parser.parse_args(argv)


def test_relative_paths_resolve_next_to_the_file(node_yaml: Path) -> None:
    cfg = load_node_config(node_yaml)
    assert cfg.tls is not None and cfg.tls.ca == str(node_yaml.parent / "ca.crt")
    assert "from-the-file" not in repr(cfg)


def test_password_file_is_read_relative_to_the_config(node_yaml: Path) -> None:
    (node_yaml.parent / "pw").write_text("from-a-file\n")
    node_yaml.write_text(NODE_YAML.replace('password: "from-the-file"', "password_file: pw"))
    assert load_node_config(node_yaml).mqtt_values()["password"] == "from-a-file"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("username: edge1", "username: edge2"), "must equal node"),
        (("role: edge", "role: boss"), "role"),
        (("node: edge1", "node: Edge_1"), "not a valid name"),
        (("tls: {ca: ca.crt}", "tls: {cert: x.crt}"), "go together"),
        (("port: 8883", "port: 99999"), "port"),
        (("username: edge1", "usrname: edge1"), "usrname"),
    ],
)
def test_bad_configs_name_the_file_and_the_problem(node_yaml: Path, change: tuple[str, str], message: str) -> None:
    node_yaml.write_text(NODE_YAML.replace(*change))
    with pytest.raises(ValueError, match=message) as err:
        load_node_config(node_yaml)
    assert str(node_yaml) in str(err.value) and "from-the-file" not in str(err.value)


def test_service_settings_flags_beat_env_beat_file(node_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FL_NODE_CONFIG", raising=False)
    for name in ("HOST", "PORT", "USERNAME", "PASSWORD", "TLS_CA", "KEEPALIVE"):
        monkeypatch.delenv(f"FL_MQTT_{name}", raising=False)
    args = parse("--config", str(node_yaml))
    s = mqtt_settings_from_args(args, "edge1")
    assert (s.host, s.port, s.username, s.password) == ("broker.example.com", 8883, "edge1", "from-the-file")
    assert s.tls_ca == str(node_yaml.parent / "ca.crt")

    monkeypatch.setenv("FL_MQTT_HOST", "env-host")
    monkeypatch.setenv("FL_MQTT_PASSWORD", "from-env")
    s = mqtt_settings_from_args(args, "edge1")
    assert (s.host, s.port, s.password) == ("env-host", 8883, "from-env")

    s = mqtt_settings_from_args(parse("--config", str(node_yaml), "--host", "flag-host", "--port", "1"), "edge1")
    assert (s.host, s.port, s.password) == ("flag-host", 1, "from-env")

    monkeypatch.setenv("FL_NODE_CONFIG", str(node_yaml))
    assert node_config_from_args(parse()) is not None


def test_service_node_name_comes_from_the_config(node_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FL_NODE_CONFIG", raising=False)
    cfg = node_config_from_args(parse("--config", str(node_yaml)))
    assert node_from_args(parse(), cfg, roles=("edge",)) == "edge1"
    assert node_from_args(parse("--node", "edge1"), cfg, roles=("edge",)) == "edge1"
    with pytest.raises(ValueError, match="disagrees"):
        node_from_args(parse("--node", "edge2"), cfg, roles=("edge",))
    with pytest.raises(ValueError, match="role"):
        node_from_args(parse(), cfg, roles=("aggregator",))
    with pytest.raises(ValueError, match="--node"):
        node_from_args(parse(), None, roles=("edge",))


@pytest.fixture
def admin_yaml(tmp_path: Path) -> Path:
    folder = tmp_path / "admin"
    folder.mkdir()
    (folder / "ca.crt").write_text("not really a certificate")
    path = folder / "flctl.yaml"
    path.write_text(NODE_YAML.replace("edge1", "admin").replace("role: edge", "role: admin"))
    return path


def test_flctl_reads_the_config_and_flags_and_env_win(admin_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "USERNAME", "PASSWORD", "TLS_CA", "CONFIG"):
        monkeypatch.delenv(f"FLCTL_{name}", raising=False)
    monkeypatch.delenv("FL_NODE_CONFIG", raising=False)
    opts = broker_options(build_parser().parse_args(["--config", str(admin_yaml), "get", "fl"]))
    assert (opts.connection.host, opts.connection.port, opts.connection.username, opts.connection.password) == (
        "broker.example.com",
        8883,
        "admin",
        "from-the-file",
    )
    assert opts.client_id == "admin"  # the username: brokers from `flctl broker init` force it anyway
    assert opts.connection.tls_ca == str(admin_yaml.parent / "ca.crt")

    monkeypatch.setenv("FLCTL_CONFIG", str(admin_yaml))
    monkeypatch.setenv("FLCTL_PORT", "1884")
    opts = broker_options(build_parser().parse_args(["get", "fl", "--host", "h"]))
    assert (opts.connection.host, opts.connection.port, opts.connection.password) == ("h", 1884, "from-the-file")


def test_flctl_refuses_a_services_config(
    node_yaml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8: flctl with a node's config logs in as that node and takes its service's session over (the
    broker forces the client id to the username). It refuses the config instead, and never reads the
    services' FL_NODE_CONFIG (a node host sets it for its service)."""
    monkeypatch.delenv("FLCTL_CONFIG", raising=False)
    for role in ("edge", "aggregator"):
        node_yaml.write_text(NODE_YAML.replace("role: edge", f"role: {role}"))
        assert flctl_main(["--config", str(node_yaml), "get", "fl"]) == 2
        assert f"node edge1 (role {role}) is its service's identity" in capsys.readouterr().err
    monkeypatch.setenv("FL_NODE_CONFIG", str(node_yaml))
    opts = broker_options(build_parser().parse_args(["get", "fl"]))
    assert opts.connection.username is None


def test_service_tls_files_come_from_flags_env_or_the_file(node_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service takes its TLS files from --tls-* flags, else FL_MQTT_TLS_*, else the node config."""
    for name in ("TLS_CA", "TLS_CERT", "TLS_KEY"):
        monkeypatch.delenv(f"FL_MQTT_{name}", raising=False)
    assert mqtt_settings_from_args(parse("--config", str(node_yaml)), "edge1").tls_ca == str(
        node_yaml.parent / "ca.crt"
    )

    monkeypatch.setenv("FL_MQTT_TLS_CA", "/env/ca.crt")
    assert mqtt_settings_from_args(parse("--config", str(node_yaml)), "edge1").tls_ca == "/env/ca.crt"

    flags = parse("--config", str(node_yaml), "--tls-ca", "/flag/ca.crt", "--tls-cert", "e.crt", "--tls-key", "e.key")
    s = mqtt_settings_from_args(flags, "edge1")
    assert (s.tls_ca, s.tls_cert, s.tls_key) == ("/flag/ca.crt", "e.crt", "e.key")
