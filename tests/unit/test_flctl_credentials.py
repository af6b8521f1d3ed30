"""No password on a command line: flctl's --password is refused with the alternatives (so are the
services'), --password-file and FLCTL_PASSWORD give it, and a terminal is asked when a username has none."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cloud_aggregator.cli import build_parser as aggregator_parser
from edge_trainer.cli import build_parser as edge_parser
from flctl.cli import broker_options, build_parser, main
from tests.helpers.mqtt import free_port

SEED = Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("USERNAME", "PASSWORD", "CONFIG"):
        monkeypatch.delenv(f"FLCTL_{name}", raising=False)
    monkeypatch.delenv("FL_NODE_CONFIG", raising=False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--password", "s3cret", "get", "fl"],
        ["get", "fl", "--password", "s3cret"],
        ["get", "fl", "--password=s3cret"],
        ["--password", "get", "fl"],
    ],
)
def test_flctl_refuses_a_password_on_the_command_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error (exit 2) naming the alternatives, before anything connects; never echoing the value."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--password is not accepted" in err
    assert "--password-file FILE, $FLCTL_PASSWORD" in err
    assert "s3cret" not in err


@pytest.mark.parametrize("parser", [aggregator_parser, edge_parser])
def test_services_refuse_a_password_on_the_command_line(parser: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["--node", "n", "--password", "s3cret"])  # type: ignore[operator]
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--password is not accepted" in err and "$FL_MQTT_PASSWORD" in err


def test_password_file_gives_the_password_and_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--password-file is a flag: it wins over FLCTL_PASSWORD, which wins over nothing; its first line only."""
    secret = tmp_path / "pw"
    secret.write_text("from-the-file\nsecond line\n")
    monkeypatch.setenv("FLCTL_PASSWORD", "from-env")

    opts = broker_options(
        build_parser().parse_args(["--username", "admin", "get", "fl", "--password-file", str(secret)])
    )
    assert (opts.connection.username, opts.connection.password) == ("admin", "from-the-file")

    opts = broker_options(build_parser().parse_args(["--username", "admin", "get", "fl"]))
    assert opts.connection.password == "from-env"


def test_unreadable_password_file_exits_1_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--password-file", str(tmp_path / "nope"), "get", "fl"]) == 1
    assert capsys.readouterr().err == f"error: --password-file {tmp_path / 'nope'}: No such file or directory\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_username_without_password_is_asked_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asked once, when flctl connects (commands that never connect never ask), and only on a terminal."""
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "typed"

    monkeypatch.setattr("getpass.getpass", ask)
    port = str(free_port())  # nothing listens: exit 3 after the prompt
    monkeypatch.setattr("sys.stdin", _Tty())
    assert main(["version", "--username", "admin"]) == 0
    assert main(["create", "--dry-run", "-f", str(SEED), "--username", "admin"]) == 0
    assert asked == []
    assert main(["--username", "admin", "--port", port, "--timeout", "1", "get", "fl"]) == 3
    assert asked == [f"Password for admin at 127.0.0.1:{port}: "]
    assert main(["--port", port, "--timeout", "1", "get", "fl"]) == 3  # no username: nothing to ask
    assert len(asked) == 1

    monkeypatch.setattr("sys.stdin", io.StringIO())
    assert main(["--username", "admin", "--port", port, "--timeout", "1", "get", "fl"]) == 3
    assert len(asked) == 1
    capsys.readouterr()
