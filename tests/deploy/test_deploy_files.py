"""deploy/ checked against the project itself: every file parses, every command is a real console script
with flags its real argparse parser accepts, and every mounted path is one `flctl broker init` writes
(docs/security.md). Fast, no network, no Docker, no Kubernetes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
KUBE = DEPLOY / "kubernetes"
DOCS = (DEPLOY / "README.md", REPO / "docs" / "operations.md")

# -- the provisioning layout (docs/security.md) ---------------------------------------------

NODES = ("cloud0", "edge1", "edge2")
BROKER_FILES = frozenset({"mosquitto.conf", "passwd", "acl", "ca.crt", "server.crt", "server.key"})
BROKER_SECRETS = frozenset({"passwd", "acl", "server.key"})
NODE_FILES = frozenset({"node.yaml", "ca.crt"})
ADMIN_FILES = frozenset({"flctl.yaml", "ca.crt"})
# Where the deployment installs them: `--broker-dir /etc/fl/broker`, and each node's folder at /etc/fl/<node>.
BROKER_DIR = PurePosixPath("/etc/fl/broker")
BROKER_DATA = BROKER_DIR / "data"
TLS_PORT = 8883
MOSQUITTO_IMAGE = re.compile(r"^eclipse-mosquitto:2\.0\.\d+$")
# The project image's node root and user (deploy/docker/Dockerfile).
CONTAINER_ROOT = PurePosixPath("/fl")
IMAGE_UID = 10001
MOSQUITTO_UID = 1883


def provision_relative(path: str) -> tuple[str, str, str]:
    """(role, node, file) of a path relative to the provisioning --out folder; fails for any other path."""
    parts = PurePosixPath(path).parts
    if len(parts) == 2 and parts[0] == "broker" and parts[1] in BROKER_FILES | {"data"}:
        return "broker", "", parts[1]
    if len(parts) == 2 and parts[0] == "admin" and parts[1] in ADMIN_FILES:
        return "admin", "admin", parts[1]
    if len(parts) == 3 and parts[0] == "nodes" and parts[1] in NODES and parts[2] in NODE_FILES:
        return "node", parts[1], parts[2]
    pytest.fail(f"{path!r} is not a file of the provisioning layout (docs/security.md)")


# -- the project's real command-line parsers -----------------------------------------------------------


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: name -> "module:function"."""
    with (REPO / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


def real_parser(script: str) -> argparse.ArgumentParser:
    """The argparse parser behind a console script, from the module its entry point names."""
    module = importlib.import_module(console_scripts()[script].split(":")[0])
    factory = getattr(module, "build_parser", None) or module._parser
    parser = factory()
    assert isinstance(parser, argparse.ArgumentParser)
    no_abbreviations(parser)
    return parser


def no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse abbreviated flags (`--conf` for `--config`): deploy files spell every flag out."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                no_abbreviations(sub)


def parse_command(argv: list[str], where: str) -> argparse.Namespace | None:
    """Parse a deploy file's command with the real parser of its program; None for mosquitto. Fails the
    test with argparse's own message when a flag is unknown or a value is refused."""
    program = PurePosixPath(argv[0]).name
    if program == "mosquitto":
        assert argv[1:] == ["-c", str(BROKER_DIR / "mosquitto.conf")], f"{where}: {argv}"
        return None
    assert program in console_scripts(), f"{where}: {program} is not a console script of pyproject.toml"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return real_parser(program).parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is refused by {program}'s parser: {err.getvalue().strip()}")


def check_node_service(ns: argparse.Namespace, program: str, where: str) -> str:
    """A node service's flags: --node and --config agree with the layout. Returns the node name."""
    role = {"fl-cloud-aggregator": "aggregator", "fl-edge-trainer": "edge"}[program]
    assert ns.node in NODES, f"{where}: --node {ns.node}"
    assert ns.node.startswith("cloud") == (role == "aggregator"), f"{where}: {ns.node} in the {role} role"
    assert ns.config == f"/etc/fl/{ns.node}/node.yaml", f"{where}: --config {ns.config}"
    assert ns.root is not None
    return str(ns.node)


# -- systemd ----------------------------------------------------------------------------------------

SPECIFIERS = {"%i": "edge1", "%I": "edge1", "%n": "fl-edge-trainer@edge1.service", "%%": "%"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}}: repeated keys kept, continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: not `Key=value` in a section"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def expand(value: str, where: str) -> str:
    """Replace systemd specifiers by sample values; fail on any other specifier."""
    unknown = [s for s in re.findall(r"%.", value) if s not in SPECIFIERS]
    assert not unknown, f"{where}: specifiers {unknown} in {value!r} have no sample value here"
    return re.sub(r"%.", lambda m: SPECIFIERS[m.group(0)], value)


def units() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def exec_start(unit: dict[str, dict[str, list[str]]], where: str) -> list[str]:
    (line,) = unit["Service"]["ExecStart"]
    argv = shlex.split(expand(line.lstrip("-@:+!"), where))
    assert PurePosixPath(argv[0]).is_absolute(), f"{where}: ExecStart needs an absolute path"
    assert "$" not in line, f"{where}: ExecStart uses environment variables; the parser check cannot see them"
    return argv


def test_systemd_units_exist_for_every_service() -> None:
    """deploy/systemd has the broker, the aggregator and the edge template unit."""
    assert {p.name for p in units()} == {"fl-broker.service", "fl-cloud-aggregator.service", "fl-edge-trainer@.service"}


@pytest.mark.parametrize("path", units(), ids=lambda p: p.name)
def test_systemd_unit_parses_with_the_sections_systemd_needs(path: Path) -> None:
    """Each unit is a well-formed INI-like file with [Unit], [Service] and [Install]."""
    unit = parse_unit(path)

    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert len(unit["Service"]["ExecStart"]) == 1


@pytest.mark.parametrize("path", units(), ids=lambda p: p.name)
def test_systemd_exec_start_is_a_real_command_with_real_flags(path: Path) -> None:
    """ExecStart runs a console script of pyproject.toml (or mosquitto) with flags its parser accepts."""
    argv = exec_start(parse_unit(path), path.name)

    ns = parse_command(argv, path.name)

    program = PurePosixPath(argv[0]).name
    if ns is None:
        assert path.name == "fl-broker.service"
    else:
        assert argv[0] == f"/opt/fl/venv/bin/{program}", "the install steps put the venv at /opt/fl/venv"
        check_node_service(ns, program, path.name)


@pytest.mark.parametrize("path", units(), ids=lambda p: p.name)
def test_systemd_unit_is_hardened_and_restarts_with_backoff(path: Path) -> None:
    """A dedicated user, NoNewPrivileges, ProtectSystem=strict, PrivateTmp, Restart=on-failure."""
    service = parse_unit(path)["Service"]

    assert service["User"][0] not in ("root", "0")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
    }.items():
        assert service.get(key) == [value], f"{path.name}: {key}"
    assert service["RestartSec"] and service["RestartMaxDelaySec"] and service["RestartSteps"]
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0], "the worker channel is a Unix socket pair"


@pytest.mark.parametrize("path", units(), ids=lambda p: p.name)
def test_systemd_unit_writes_only_its_node_root_or_broker_data(path: Path) -> None:
    """ReadWritePaths is exactly the node root given by --root (the broker: its persistence folder)."""
    unit = parse_unit(path)
    argv = exec_start(unit, path.name)
    service = unit["Service"]
    writable = [expand(p, path.name) for line in service["ReadWritePaths"] for p in line.split()]

    ns = parse_command(argv, path.name)

    if ns is None:
        assert writable == [str(BROKER_DATA)]
        assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"], "SIGHUP reloads passwd, acl, certificates"
    else:
        assert writable == [str(ns.root)]
        state = PurePosixPath("/var/lib") / expand(service["StateDirectory"][0], path.name)
        assert state == PurePosixPath(ns.root), "systemd creates the node root, owned by the service user"
        readonly = [expand(p, path.name).lstrip("-") for line in service["ReadOnlyPaths"] for p in line.split()]
        assert readonly == [f"{ns.root}/code", f"{ns.root}/data"]


@pytest.mark.parametrize("path", units(), ids=lambda p: p.name)
def test_systemd_environment_names_only_settings_the_services_read(path: Path) -> None:
    """Environment= sets only variables the code reads; EnvironmentFile sits beside node.yaml."""
    unit = parse_unit(path)
    service = unit["Service"]
    names = [line.split("=", 1)[0] for line in service.get("Environment", [])]

    assert_env_names_known(names, path.name)
    if path.name != "fl-broker.service":
        ns = parse_command(exec_start(unit, path.name), path.name)
        assert ns is not None
        assert [expand(e, path.name) for e in service["EnvironmentFile"]] == [f"-/etc/fl/{ns.node}/env"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_but_missing_binaries() -> None:
    """systemd-analyze verify accepts the units (missing /opt/fl/venv and newer restart keys aside)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    tolerated = ("is not executable", "RestartSteps", "RestartMaxDelaySec")
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not any(t in line for t in tolerated)
    ]
    assert problems == []


# -- environment variables -------------------------------------------------------------------------

ALLOWED_OTHER_ENV = frozenset({"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "HOME", "PATH"})


def assert_env_names_known(names: list[str], where: str) -> None:
    """FL_MQTT_* names must be ones the services' ConnectionSettings reads, FLCTL_* ones flctl reads, others well known."""
    from broker import SERVICE_ENV_PREFIX, ConnectionSettings

    for name in names:
        if name.startswith(SERVICE_ENV_PREFIX):
            field = name.removeprefix(SERVICE_ENV_PREFIX).lower()
            assert field in ConnectionSettings.model_fields, f"{where}: {name} is not read by the services"
        elif name.startswith("FLCTL_"):
            dests = {a.dest for a in real_parser("flctl")._actions}
            assert name.removeprefix("FLCTL_").lower() in dests, f"{where}: {name} is not read by flctl"
        else:
            assert name in ALLOWED_OTHER_ENV, f"{where}: unexpected environment variable {name}"


# -- docker compose ----------------------------------------------------------------------------------

COMPOSE_VARS = {"FL_PROVISION_DIR": "/provision", "FL_SITE_DIR": None, "FL_IMAGE": None, "FL_TLS_PORT": None}


def interpolate(text: str) -> str:
    """Compose variable interpolation with sample values: ${VAR}, ${VAR:-default}, ${VAR:?message}."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        assert name in COMPOSE_VARS, f"docker-compose.yml: undocumented variable {name}"
        sample = COMPOSE_VARS[name]
        if op == ":-":
            assert sample is None, f"{name} has a default and a test value"
            return arg
        assert sample is not None, f"{name} has no default: give it one or require it with :?"
        return sample

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text()))
    return data


def compose_command(service: dict[str, Any]) -> list[str]:
    entry = service.get("entrypoint") or []
    command = service.get("command") or []
    argv = [*entry, *command]
    assert all(isinstance(a, str) for a in argv), "commands are exec-form lists of strings"
    return argv


def test_compose_file_parses_and_has_broker_aggregator_and_two_edges() -> None:
    """docker-compose.yml parses and runs a broker, cloud0, edge1 and edge2 (flctl only on demand)."""
    services = compose()["services"]

    assert set(services) == {"broker", "cloud0", "edge1", "edge2", "flctl"}
    assert services["flctl"]["profiles"] == ["tools"]
    assert MOSQUITTO_IMAGE.match(services["broker"]["image"])
    for name in ("broker", *NODES):
        assert services[name]["restart"] == "unless-stopped"


def test_compose_commands_are_real_commands_with_real_flags() -> None:
    """Every service's command parses with the real parser of its program, with the layout's paths."""
    for name, service in compose()["services"].items():
        argv = compose_command(service)

        ns = parse_command(argv, f"compose service {name}")

        if name in NODES:
            assert ns is not None
            assert check_node_service(ns, argv[0], name) == name
            assert PurePosixPath(ns.root) == CONTAINER_ROOT
        elif name == "flctl":
            assert ns is not None and ns.config == "/etc/fl/admin/flctl.yaml"
        else:
            assert ns is None and service["user"] == f"{MOSQUITTO_UID}:{MOSQUITTO_UID}"


def test_compose_mounts_exactly_the_provisioned_files_where_the_config_names_them() -> None:
    """Configs and secrets come from the --out folder's layout and land where mosquitto.conf/node.yaml expect."""
    data = compose()
    sources = {**data["configs"], **data["secrets"]}
    for name, service in data["services"].items():
        mounted: dict[str, str] = {}
        for ref in [*service.get("configs", []), *service.get("secrets", [])]:
            source = sources[ref["source"]]["file"]
            role, node, file = provision_relative(str(PurePosixPath(source).relative_to("/provision")))
            mounted[ref["target"]] = file
            if role == "broker":
                assert ref["target"] == str(BROKER_DIR / file)
                assert (ref["source"] in data["secrets"]) == (file in BROKER_SECRETS), f"{file}: secret or config"
            else:
                assert node == name or (name == "flctl" and role == "admin")
                assert ref["source"] in data["secrets"] or file == "ca.crt"
        if name == "broker":
            assert set(mounted.values()) == BROKER_FILES
        else:
            folder = "admin" if name == "flctl" else name
            expected = ADMIN_FILES if name == "flctl" else NODE_FILES
            assert mounted == {f"/etc/fl/{folder}/{f}": f for f in expected}


def test_compose_gives_every_node_a_root_volume_and_the_broker_its_persistence() -> None:
    """Each node's /fl is its own named volume (code and data read-only binds); the broker keeps data/."""
    data = compose()
    services = data["services"]

    broker_data = [v for v in services["broker"]["volumes"] if v["target"] == str(BROKER_DATA)]
    assert [PurePosixPath(v["source"]).relative_to("/provision") for v in broker_data] == [PurePosixPath("broker/data")]
    for node in NODES:
        volumes = services[node]["volumes"]
        assert f"{node}-root:{CONTAINER_ROOT}" in volumes
        assert f"{node}-root" in data["volumes"]
        binds = {v["target"]: v for v in volumes if isinstance(v, dict)}
        expected = {"/fl/code"} if node.startswith("cloud") else {"/fl/code", "/fl/data"}
        assert set(binds) == expected and all(v["read_only"] for v in binds.values())


def test_compose_starts_nodes_after_a_healthy_broker() -> None:
    """The broker has a healthcheck on its TLS port; nodes wait for it, edges also for the aggregator."""
    services = compose()["services"]

    check = services["broker"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL" and f":{TLS_PORT:04X} " in check[1]
    assert services["broker"]["ports"] == [f"{TLS_PORT}:{TLS_PORT}"]
    for node in NODES:
        assert services[node]["depends_on"]["broker"]["condition"] == "service_healthy"
    for edge in ("edge1", "edge2"):
        assert services[edge]["depends_on"]["cloud0"]["condition"] == "service_started"


def test_compose_environment_names_only_settings_the_services_read() -> None:
    """FL_MQTT_* and FLCTL_* variables in the compose file are ones the code reads."""
    for name, service in compose()["services"].items():
        assert_env_names_known(list(service.get("environment", {})), f"compose service {name}")


def test_compose_builds_the_project_image_from_the_dockerfile() -> None:
    """The project services build deploy/docker/Dockerfile with the repository as context."""
    for node in NODES:
        build = compose()["services"][node]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert (COMPOSE.parent / build["context"]).resolve() == REPO


# -- Dockerfile ------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        op, _, rest = line.partition(" ")
        lines.append((op.upper(), rest.strip()))
    return lines


def test_dockerfile_cmd_runs_a_real_console_script() -> None:
    """CMD (exec form) is a console script of pyproject.toml with arguments its parser accepts."""
    cmds = [json.loads(rest) for op, rest in dockerfile_instructions() if op == "CMD"]
    entrypoints = [rest for op, rest in dockerfile_instructions() if op == "ENTRYPOINT"]

    assert entrypoints == []
    assert len(cmds) == 1
    parse_command(cmds[0], "Dockerfile CMD")


def test_dockerfile_installs_the_project_with_pip_and_copies_every_package() -> None:
    """The image runs `pip install .` on pyproject.toml with every package it declares, from real paths."""
    with (REPO / "pyproject.toml").open("rb") as f:
        includes = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    copies = [rest.split() for op, rest in dockerfile_instructions() if op == "COPY" and "--from" not in rest]
    sources = {src.rstrip("/") for args in copies for src in args[:-1]}

    assert {pattern.rstrip("*") for pattern in includes} | {"pyproject.toml", "README.md"} == sources
    assert all((REPO / src).exists() for src in sources)
    assert any(op == "RUN" and "pip install ." in rest for op, rest in dockerfile_instructions())
    user = [rest for op, rest in dockerfile_instructions() if op == "USER"]
    assert user == [f"{IMAGE_UID}:{IMAGE_UID}"]


# -- Kubernetes --------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return data


def kube_documents() -> Iterator[dict[str, Any]]:
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((KUBE / name).read_text()):
            if doc:
                yield doc


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kube_documents() if d["kind"] == "Deployment"}


def generated_secrets() -> dict[str, set[str]]:
    """secretGenerator: name -> the keys (file names) of the Secret."""
    return {s["name"]: {PurePosixPath(f).name for f in s["files"]} for s in kustomization().get("secretGenerator", [])}


def test_every_yaml_file_in_deploy_parses() -> None:
    """Every .yml/.yaml under deploy/ is valid YAML (multi-document files included)."""
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])

    assert len(files) >= 7
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_kustomization_lists_every_manifest_and_generates_secrets_from_the_layout() -> None:
    """kustomization.yaml names every manifest in the folder; its secrets come from provisioning files."""
    kust = kustomization()
    manifests = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kust["resources"]) == manifests
    for secret in kust["secretGenerator"]:
        for file in secret["files"]:
            rel = PurePosixPath(file)
            assert rel.parts[0] == "provision", "the provisioning output goes to the git-ignored provision/"
            role, node, _ = provision_relative(str(rel.relative_to("provision")))
            assert secret["name"] == ("fl-broker" if role == "broker" else f"fl-node-{node}")
    assert "/provision/" in (KUBE / ".gitignore").read_text().split()


def test_kubernetes_commands_are_real_commands_with_real_flags() -> None:
    """Each container's command parses with its program's real parser; nodes use the layout's paths."""
    found = set()
    for name, deployment in deployments().items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        argv = [*container.get("command", []), *container.get("args", [])]

        ns = parse_command(argv, f"Deployment {name}")

        if ns is None:
            assert name == "fl-broker" and MOSQUITTO_IMAGE.match(container["image"])
        else:
            node = check_node_service(ns, argv[0], name)
            assert name == f"fl-{node}" and PurePosixPath(ns.root) == CONTAINER_ROOT
            assert container["image"] == "mqtt-fl-edge"
            assert_env_names_known([e["name"] for e in container.get("env", [])], name)
            found.add(node)
    assert found == set(NODES)


def test_kubernetes_mounts_the_provisioned_files_where_the_configs_expect_them() -> None:
    """Broker files sit at --broker-dir with the PVC on data/; each node mounts only its own Secret."""
    secrets = generated_secrets()
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = container["volumeMounts"]
        assert all(m["name"] in volumes for m in mounts), name
        secret_mounts = [m for m in mounts if "secret" in volumes[m["name"]]]
        secret_names = {volumes[m["name"]]["secret"]["secretName"] for m in secret_mounts}
        if name == "fl-broker":
            assert secret_names == {"fl-broker"}
            files = {m["mountPath"]: m["subPath"] for m in secret_mounts}
            assert files == {str(BROKER_DIR / f): f for f in secrets["fl-broker"]}
            assert set(files.values()) == BROKER_FILES
            data = [m for m in mounts if m["mountPath"] == str(BROKER_DATA)]
            assert len(data) == 1 and "persistentVolumeClaim" in volumes[data[0]["name"]]
        else:
            node = name.removeprefix("fl-")
            assert secret_names == {f"fl-node-{node}"} and secrets[f"fl-node-{node}"] == NODE_FILES
            assert [m["mountPath"] for m in secret_mounts] == [f"/etc/fl/{node}"]
            assert all("subPath" not in m for m in secret_mounts)


def test_kubernetes_node_roots_mount_sedna_host_folders_under_the_root() -> None:
    """Nodes mount the host's /code, /data (edges), /model under /fl, and keep state/ and logs/ on the host."""
    for name, deployment in deployments().items():
        if name == "fl-broker":
            continue
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        host = {
            m["mountPath"]: (volumes[m["name"]]["hostPath"]["path"], m.get("readOnly", False))
            for m in container["volumeMounts"]
            if "hostPath" in volumes[m["name"]]
        }
        node = name.removeprefix("fl-")
        expected = {
            "/fl/code": ("/code", True),
            "/fl/model": ("/model", False),
            "/fl/state": (f"/var/lib/fl/{node}/state", False),
            "/fl/logs": (f"/var/lib/fl/{node}/logs", False),
        }
        if not node.startswith("cloud"):
            expected["/fl/data"] = ("/data", True)
        assert host == expected


def test_kubernetes_pins_each_node_to_its_host_and_runs_one_pod_at_a_time() -> None:
    """Node Deployments select kubernetes.io/hostname; every Deployment is 1 replica with Recreate."""
    for name, deployment in deployments().items():
        spec = deployment["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if name != "fl-broker":
            assert pod["nodeSelector"] == {"kubernetes.io/hostname": name.removeprefix("fl-")}
            assert pod["securityContext"]["runAsUser"] == IMAGE_UID


def test_kubernetes_broker_service_exposes_the_tls_listener() -> None:
    """The Service fl-broker (the name the nodes' FL_MQTT_HOST uses) forwards the TLS port."""
    services = [d for d in kube_documents() if d["kind"] == "Service"]
    (service,) = services

    assert service["metadata"]["name"] == "fl-broker"
    assert [p["port"] for p in service["spec"]["ports"]] == [TLS_PORT]
    for deployment in deployments().values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env.get("FL_MQTT_HOST", "fl-broker") == "fl-broker"


# -- the provisioning command, for real --------------------------------------------------------------


def flctl_main(argv: list[str]) -> None:
    """Run flctl in process; fail with its error output unless it exits 0."""
    from flctl.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code == 0, f"flctl {shlex.join(argv)}: exit {code}: {err.getvalue()}"


def test_flctl_broker_init_writes_the_layout_deploy_mounts(tmp_path: Path) -> None:
    """The real `flctl broker init` writes every file deploy/ mounts, and mosquitto.conf names them there."""
    out = tmp_path / "out"

    flctl_main(
        [
            "broker",
            "init",
            "--nodes",
            ",".join(NODES),
            "--hostname",
            "broker",
            "--broker-dir",
            str(BROKER_DIR),
            "--no-run-as-root",
            "--out",
            str(out),
        ]
    )

    assert {p.name for p in (out / "broker").iterdir()} == BROKER_FILES | {"data"}
    for node in NODES:
        assert {p.name for p in (out / "nodes" / node).iterdir()} == NODE_FILES
    assert {p.name for p in (out / "admin").iterdir()} == ADMIN_FILES
    conf = (out / "broker" / "mosquitto.conf").read_text()
    settings = {line.split()[0]: line.split()[1:] for line in conf.splitlines() if line and not line.startswith("#")}
    assert settings["password_file"] == [str(BROKER_DIR / "passwd")]
    assert settings["acl_file"] == [str(BROKER_DIR / "acl")]
    assert settings["certfile"] == [str(BROKER_DIR / "server.crt")]
    assert settings["keyfile"] == [str(BROKER_DIR / "server.key")]
    assert settings["cafile"] == [str(BROKER_DIR / "ca.crt")]
    assert settings["persistence_location"] == [f"{BROKER_DATA}/"]
    assert [str(TLS_PORT)] in [line.split()[1:] for line in conf.splitlines() if line.startswith("listener ")]
    assert "user" not in settings
    for secret in ("passwd", "acl", "server.key"):
        assert (out / "broker" / secret).stat().st_mode & 0o077 == 0


# -- the documentation's commands ----------------------------------------------------------------------


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every command line of a project program in the code blocks of deploy/README.md and operations.md."""
    programs = set(console_scripts())
    found: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        in_block = False
        pending = ""
        for number, raw in enumerate(doc.read_text().splitlines(), 1):
            if raw.lstrip().startswith("```"):
                in_block = not in_block
                continue
            if not in_block:
                continue
            line = pending + raw.split(" #", 1)[0].strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            for piece in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                command = piece.removeprefix("sudo ")
                if command and PurePosixPath(command.split()[0]).name in programs:
                    found.append((f"{doc.name}:{number}", shlex.split(command)))
    return found


def test_docs_exist_and_link_the_failure_section() -> None:
    """deploy/README.md and docs/operations.md exist; operations.md links architecture.md's failures."""
    assert all(doc.exists() for doc in DOCS)
    assert "architecture.md#failures-nothing-is-lost-the-job-still-finishes" in DOCS[1].read_text()


@pytest.mark.parametrize("where,argv", [pytest.param(w, a, id=w) for w, a in documented_commands()])
def test_documented_command_parses_with_the_real_parser(where: str, argv: list[str]) -> None:
    """Each documented command of a project program is accepted by that program's real parser."""
    parse_command([re.sub(r"[<>]", "", a) for a in argv], where)
