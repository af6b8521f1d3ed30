"""flctl against the provisioned broker with a password that never touches its command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import load_node_config
from flctl.cli import main
from tests.security.conftest import SecureBroker

pytestmark = [pytest.mark.security, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("USERNAME", "PASSWORD", "CONFIG"):
        monkeypatch.delenv(f"FLCTL_{name}", raising=False)
    monkeypatch.delenv("FL_NODE_CONFIG", raising=False)


def _flctl(secure: SecureBroker, *argv: str) -> list[str]:
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(secure.prov.plain_port),
        "--timeout",
        "5",
        "--username",
        "admin",
        *argv,
    ]


def test_password_file_and_environment_log_in(
    secure: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = load_node_config(secure.prov.configs["admin"]).password
    assert password
    secret = tmp_path / "admin.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)

    assert main(_flctl(secure, "--password-file", str(secret), "get", "fl")) == 0
    monkeypatch.setenv("FLCTL_PASSWORD", password)
    assert main(_flctl(secure, "get", "fl")) == 0
    assert password not in "".join(capsys.readouterr())


def test_no_password_without_a_terminal_is_refused_with_a_hint(
    secure: SecureBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    """stdin is not a terminal here: no prompt, the broker refuses, and the error says how to give one."""
    assert main(_flctl(secure, "get", "fl")) == 3
    err = capsys.readouterr().err
    assert "no password was given: --password-file FILE, FLCTL_PASSWORD" in err
