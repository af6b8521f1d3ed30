"""No password on a command line: flctl's --password is refused with the alternatives (so are the
services'), --password-file and FLCTL_PASSWORD give it, and a terminal is asked when a username has none."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from cloud_aggregator.cli import build_parser as aggregator_parser
from edge_trainer.cli import build_parser as edge_parser
from flctl._client import BrokerOptions
from flctl._context import Context
from flctl.cli import broker_options, build_parser, main


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


def _context(options: BrokerOptions, stdin: io.StringIO, asked: list[str]) -> Context:
    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "typed"

    return Context(options, sys.stdout, sys.stderr, stdin, ask_password=ask)


def test_a_username_without_password_is_asked_on_a_terminal_only() -> None:
    """The prompt comes when a client is made (commands that never connect never ask), once, and only on a tty."""
    options = broker_options(build_parser().parse_args(["--username", "admin", "--port", "1884", "get", "fl"]))
    asked: list[str] = []

    ctx = _context(options, _Tty(), asked)
    assert asked == []
    ctx.client()
    ctx.client()
    assert asked == ["Password for admin at 127.0.0.1:1884: "]
    assert ctx.options.connection.password == "typed"

    piped = _context(options, io.StringIO(), asked := [])
    piped.client()
    assert asked == [] and piped.options.connection.password is None

    anonymous = broker_options(build_parser().parse_args(["get", "fl"]))
    _context(anonymous, _Tty(), asked).client()
    assert asked == []
