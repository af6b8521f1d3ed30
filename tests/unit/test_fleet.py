"""`flctl node add/rotate/remove` on the files (no broker: `--no-reload`, or a reload that cannot happen):
one passwd line and one ACL block change, nothing else; bad input writes nothing and says what is wrong;
concurrent runs lose no update; `flctl broker init` writes the pid file, the CRL and `--warm-worker`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from broker import load_node_config
from flctl.cli import main
from flctl.provision import (
    acl_block,
    acl_insert,
    acl_remove,
    deployment_lock,
    passwd_remove,
    passwd_set,
    provision,
    render_acl,
)

NODES = ["cloud0", "edge1", "edge2"]


@pytest.fixture
def dep(tmp_path: Path) -> Path:
    return provision(tmp_path / "dep", NODES, viewers=["viewer"], port=18883, plain_port=11883).out


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mode (the lock file aside: taking the lock creates it)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".flctl-node.lock"
    }


def _node(dep: Path, *args: str) -> int:
    return main(["node", *args, "-d", str(dep)])


# -- the text edits ------------------------------------------------------------------------------


def test_passwd_edits_touch_one_line() -> None:
    text = "a:$7$1$x$y\nb:$7$1$p$q\nc:$7$1$r$s\n"
    assert passwd_set(text, "b", "$7$2$new$hash") == "a:$7$1$x$y\nb:$7$2$new$hash\nc:$7$1$r$s\n"
    assert passwd_set(text, "d", "$7$2$n$h") == text + "d:$7$2$n$h\n"
    assert passwd_remove(text, "b") == "a:$7$1$x$y\nc:$7$1$r$s\n"
    assert passwd_remove("a:1\n", "a") == ""
    with pytest.raises(ValueError, match="cannot be written"):
        passwd_set(text, "x:y", "h")


def test_acl_block_insert_and_remove_round_trip() -> None:
    base = render_acl(["cloud0"], ["admin"], viewers=["viewer"])
    viewer_block = acl_block(base, "viewer")
    assert viewer_block[0].startswith("# viewer:") and viewer_block[1] == "user viewer" and viewer_block[-1] == ""
    without = acl_remove(base, "viewer")
    assert "user viewer" not in without and "user admin" in without and "user cloud0" in without
    again = acl_insert(without, viewer_block)
    # the same blocks and lines (the inserted block comes last among the users: order does not matter)
    assert sorted(again.splitlines()) == sorted(base.splitlines())
    assert acl_remove(again, "viewer") == without
    assert acl_remove(without, "nobody") == without


# -- add, rotate, remove on the files ---------------------------------------------------------------


def test_add_viewer_then_remove_restores_every_byte(dep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(dep)
    assert _node(dep, "add", "ops", "--role", "viewer", "--no-reload") == 0
    out = capsys.readouterr().out
    assert "added viewer ops" in out and "--no-reload" in out
    config = dep / "viewer" / "ops.yaml"
    cfg = load_node_config(config)
    assert (cfg.node, cfg.role, cfg.broker.port) == ("ops", "viewer", 18883)
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert "user ops" in (dep / "broker" / "acl").read_text()
    assert [line.split(":")[0] for line in (dep / "broker" / "passwd").read_text().splitlines()][-1] == "ops"
    changed = {k for k, v in _snapshot(dep).items() if before.get(k) != v}
    assert changed == {"broker/passwd", "broker/acl", "viewer/ops.yaml"}

    assert _node(dep, "remove", "ops", "--no-reload") == 0
    assert _snapshot(dep) == before


def test_add_edge_at_a_site_and_rotate_keeps_its_settings(dep: Path) -> None:
    # a site's node: its broker address comes from the site's other nodes
    site_cfg = dep / "nodes" / "edge2" / "node.yaml"
    raw = yaml.safe_load(site_cfg.read_text())
    raw.update(site="plant-a", broker={"host": "site-a.example", "port": 8884})
    site_cfg.write_text(yaml.safe_dump(raw))
    assert _node(dep, "add", "edge3", "--role", "edge", "--site", "plant-a", "--warm-worker", "--no-reload") == 0
    config = dep / "nodes" / "edge3" / "node.yaml"
    cfg = load_node_config(config)
    assert (cfg.site, cfg.broker.host, cfg.broker.port, cfg.warm_worker) == ("plant-a", "site-a.example", 8884, True)
    assert (dep / "nodes" / "edge3" / "ca.crt").read_bytes() == (dep / "ca" / "ca.crt").read_bytes()
    old_password = cfg.password
    passwd_before = (dep / "broker" / "passwd").read_text().splitlines()

    assert _node(dep, "rotate", "edge3", "--no-reload") == 0
    rotated = load_node_config(config)
    assert rotated.password != old_password
    assert rotated.model_copy(update={"password": old_password}) == cfg
    after = (dep / "broker" / "passwd").read_text().splitlines()
    assert [line for line in after if not line.startswith("edge3:")] == [
        line for line in passwd_before if not line.startswith("edge3:")
    ]
    assert next(line for line in after if line.startswith("edge3:")) != next(
        line for line in passwd_before if line.startswith("edge3:")
    )


def test_an_edge_of_a_bridged_site_broker_gets_a_warning(dep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = dep / "broker" / "mosquitto.conf"
    conf.write_text(conf.read_text() + "connection cloud\naddress cloud.example:8883\n")  # as `flctl site add`
    assert _node(dep, "add", "edge3", "--role", "edge", "--no-reload") == 0
    assert "the bridge's topics and the cloud's ACL block name the site's edges" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rotate", "edge9"], 2, "no identity edge9 in the deployment"),
        (["remove", "edge9"], 2, "no identity edge9"),
        (["add", "edge1", "--role", "edge"], 2, "edge1 already exists (role edge"),
        (["add", "Edge_1", "--role", "edge"], 2, "Edge_1"),
        (["rotate", "edge1", "--role", "viewer"], 2, "edge1 has role edge"),
        (["add", "ops", "--role", "admin", "--site", "plant-a"], 2, "--site is for the nodes of a site"),
        (["add", "cloud1", "--role", "aggregator", "--warm-worker"], 2, "--warm-worker is a setting of edge"),
        (["add", "edge3", "--role", "edge", "--site", "plant-z"], 2, "no identity of site plant-z"),
        (["remove", "cloud0"], 2, "cloud0 is the deployment's last aggregator"),
        (["remove", "admin"], 2, "admin is the deployment's last admin"),
        (["--prefix", "other", "add", "edge3", "--role", "edge"], 1, "is not an ACL for topic prefix 'other'"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(
    dep: Path, args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(dep)
    argv = [*args[:2], "node", *args[2:]] if args[0] == "--prefix" else ["node", *args]
    assert main([*argv, "-d", str(dep), "--no-reload"]) == code
    assert message in capsys.readouterr().err
    assert _snapshot(dep) == before


def test_a_folder_that_is_not_a_deployment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    assert _node(tmp_path / "x", "add", "edge3", "--role", "edge") == 1
    assert "is not a deployment written by `flctl broker init` (no broker/mosquitto.conf" in capsys.readouterr().err
    assert list((tmp_path / "x").iterdir()) == []  # not even the lock file
    assert _node(tmp_path / "missing", "add", "edge3", "--role", "edge") == 2


def test_removing_the_admin_in_use_needs_force(
    dep: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _node(dep, "add", "admin2", "--role", "admin", "--no-reload") == 0
    monkeypatch.setenv("FLCTL_CONFIG", str(dep / "admin" / "flctl.yaml"))
    assert _node(dep, "remove", "admin", "--no-reload") == 2
    assert "identity of the flctl config in use" in capsys.readouterr().err
    assert _node(dep, "remove", "admin", "--no-reload", "--force") == 0
    assert not (dep / "admin" / "flctl.yaml").exists() and (dep / "admin" / "admin2.yaml").exists()
    assert (dep / "admin" / "ca.crt").exists()  # shared by the admins: it stays


def test_rotate_with_client_certificates_needs_a_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dep = provision(tmp_path / "dep", NODES, client_certs=True).out
    conf = dep / "broker" / "mosquitto.conf"
    assert "crlfile " in conf.read_text() and (dep / "broker" / "crl.pem").exists()
    conf.write_text("".join(line for line in conf.read_text().splitlines(True) if not line.startswith("crlfile")))
    before = _snapshot(dep)
    assert _node(dep, "rotate", "edge1", "--no-reload") == 1
    assert "names no crlfile" in capsys.readouterr().err
    assert _snapshot(dep) == before


def test_with_client_certificates_add_needs_the_ca_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dep = provision(tmp_path / "dep", NODES, client_certs=True).out
    (dep / "ca" / "ca.key").rename(tmp_path / "offline.key")  # kept offline, as the docs say
    before = _snapshot(dep)
    assert _node(dep, "add", "edge3", "--role", "edge", "--no-reload") == 1
    assert "ca/ca.key is missing" in capsys.readouterr().err
    assert _snapshot(dep) == before
    (tmp_path / "offline.key").rename(dep / "ca" / "ca.key")
    assert _node(dep, "add", "edge3", "--role", "edge", "--no-reload") == 0
    cfg = load_node_config(dep / "nodes" / "edge3" / "node.yaml")
    assert cfg.tls is not None and cfg.tls.cert is not None and cfg.tls.cert.endswith("edge3.crt")
    assert oct((dep / "nodes" / "edge3" / "edge3.key").stat().st_mode & 0o777) == "0o600"


# -- the reload -------------------------------------------------------------------------------------


def test_reload_failures_say_what_to_run_and_keep_the_files(dep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _node(dep, "add", "edge3", "--role", "edge") == 1  # no broker ran: no pid file
    err = capsys.readouterr().err
    assert "mosquitto.pid" in err and "kill -HUP" in err and "--reload-command" in err
    assert (dep / "nodes" / "edge3" / "node.yaml").exists()

    (dep / "broker" / "data" / "mosquitto.pid").write_text(str(os.getpid()))  # a stale pid file naming another program
    assert _node(dep, "rotate", "edge3") == 1
    assert "not mosquitto (stale pid file?)" in capsys.readouterr().err

    assert _node(dep, "rotate", "edge3", "--reload-command", "false") == 1
    assert "--reload-command 'false' exited with 1" in capsys.readouterr().err
    assert _node(dep, "rotate", "edge3", "--reload-command", "true") == 0
    assert "ran true" in capsys.readouterr().out


def test_a_broker_that_reads_copies_elsewhere_is_not_signalled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dep = provision(tmp_path / "dep", NODES, broker_dir=Path("/etc/fl/broker")).out
    assert _node(dep, "add", "edge3", "--role", "edge", "--broker-pid", str(os.getpid())) == 1
    err = capsys.readouterr().err
    assert "the broker reads /etc/fl/broker/passwd" in err and "copy" in err and "acl" in err
    assert (dep / "nodes" / "edge3" / "node.yaml").exists()  # the files are written


def test_concurrent_commands_lose_no_update(dep: Path) -> None:
    names = {"edge3": "edge", "edge4": "edge", "ops1": "viewer", "ops2": "viewer", "mon2": "monitor"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flctl", "node", "add", name, "--role", role, "-d", str(dep), "--no-reload"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, role in names.items()
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    users = [line.split(":")[0] for line in (dep / "broker" / "passwd").read_text().splitlines()]
    assert set(names) <= set(users) and len(users) == len(set(users))
    acl = (dep / "broker" / "acl").read_text()
    assert all(f"user {name}" in acl for name in ("ops1", "ops2", "mon2"))


def test_a_command_waits_for_the_lock_another_holds(dep: Path) -> None:
    passwd = (dep / "broker" / "passwd").read_bytes()
    with deployment_lock(dep):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flctl", "node", "add", "edge3", "--role", "edge", "-d", str(dep), "--no-reload"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Still waiting after the time a run takes unhindered (well under a second), and nothing written.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3.0)
        assert (dep / "broker" / "passwd").read_bytes() == passwd
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "edge3:" in (dep / "broker" / "passwd").read_text()


def test_broker_init_writes_the_pid_file_and_warm_workers(tmp_path: Path) -> None:
    assert main(["broker", "init", "--nodes", "cloud0,edge1", "--out", str(tmp_path / "d"), "--warm-worker"]) == 0
    conf = (tmp_path / "d" / "broker" / "mosquitto.conf").read_text()
    assert f"pid_file {tmp_path / 'd' / 'broker' / 'data' / 'mosquitto.pid'}" in conf
    assert "crlfile" not in conf
    assert load_node_config(tmp_path / "d" / "nodes" / "edge1" / "node.yaml").warm_worker is True
    assert load_node_config(tmp_path / "d" / "nodes" / "cloud0" / "node.yaml").warm_worker is None
