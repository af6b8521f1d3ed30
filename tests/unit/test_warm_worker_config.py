"""The warm worker's switch: ``fl-edge-trainer --warm-worker`` / ``--no-warm-worker`` and node.yaml's
``warm_worker`` (edge configs only); the flag wins, the default is off."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from broker import NodeConfig, load_node_config
from edge_trainer.cli import build_parser, warm_worker_from

EDGE_YAML = "node: edge1\nrole: edge\nbroker: {host: localhost, port: 1883}\n"


def _config(tmp_path: Path, extra: str, role: str = "edge") -> NodeConfig:
    path = tmp_path / "node.yaml"
    path.write_text(EDGE_YAML.replace("role: edge", f"role: {role}") + extra)
    return load_node_config(path)


@pytest.mark.parametrize(
    ("argv", "setting", "expected"),
    [
        ([], None, False),
        ([], True, True),
        (["--warm-worker"], None, True),
        (["--no-warm-worker"], True, False),
        (["--warm-worker"], False, True),
    ],
)
def test_the_flag_wins_over_node_yaml_and_the_default_is_off(
    tmp_path: Path, argv: list[str], setting: bool | None, expected: bool
) -> None:
    args = build_parser().parse_args(["--node", "edge1", "--root", str(tmp_path), *argv])
    extra = "" if setting is None else f"warm_worker: {str(setting).lower()}\n"
    assert warm_worker_from(args, _config(tmp_path, extra)) is expected


def test_node_yaml_without_the_setting_is_written_without_it(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    assert config.warm_worker is None and "warm_worker" not in config.to_yaml()
    assert "warm_worker: true" in _config(tmp_path, "warm_worker: true\n").to_yaml()


@pytest.mark.parametrize("value", ["sometimes", "1", "'true'"])
def test_a_bad_value_names_the_field(tmp_path: Path, value: str) -> None:
    with pytest.raises((ValueError, ValidationError), match="warm_worker"):
        _config(tmp_path, f"warm_worker: {value}\n")


def test_the_setting_is_refused_outside_an_edge_config(tmp_path: Path) -> None:
    with pytest.raises((ValueError, ValidationError), match="warm_worker is a setting of edge nodes"):
        _config(tmp_path, "warm_worker: true\n", role="aggregator")
