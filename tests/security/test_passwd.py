"""`flctl broker init` writes the password file itself: with no mosquitto_passwd on PATH and no
subprocess allowed at all, it provisions a deployment whose Mosquitto accepts exactly the generated
passwords (the `$7$` lines are ours: `flctl.provision._passwd`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from broker.mosquitto import LocalBroker
from tests.helpers.mqtt import wait_until
from tests.security.conftest import NODES, SecureBroker, provision_for_test

pytestmark = [pytest.mark.security, pytest.mark.timeout(120)]
NOT_AUTHORIZED = 0x87


def test_passwords_hashed_in_process_are_accepted_and_wrong_ones_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise AssertionError("provisioning started a process")

    with monkeypatch.context() as m:
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        m.setenv("PATH", str(empty))
        m.delenv("MOSQUITTO_PASSWD_BIN", raising=False)
        m.setattr(subprocess, "Popen", no_subprocess)
        prov = provision_for_test(tmp_path / "secrets", viewers=["viewer"])
    passwd = (prov.out / "broker" / "passwd").read_text()
    assert {line.split(":")[0] for line in passwd.splitlines()} == {*NODES, "admin", "viewer", "monitor"}
    assert all(line.split(":", 1)[1].startswith("$7$") for line in passwd.splitlines())

    rig = SecureBroker(prov, LocalBroker(prov.broker_config, prov.out / "broker").start(timeout=10.0))
    try:
        for identity in prov.roles:  # every generated password, over TLS and over the loopback listener
            for plain in (False, True):
                session, _ = rig.session(rig.settings(identity, plain=plain))
                session.stop(timeout=2.0)  # before the next one takes its client id over
        wrong, _ = rig.session(rig.settings("edge1", password="not-" + "the-password"), connect=False)
        wait_until(lambda: wrong.connect_error is not None, 10.0, "refused")
        assert wrong.connect_error is not None and wrong.connect_error.reason_code == NOT_AUTHORIZED
        assert "bad line" not in rig.local.log_text().lower()
    finally:
        rig.close()
