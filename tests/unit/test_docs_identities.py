"""No documented command logs in as a service.

The broker replaces every client id with the username (use_username_as_clientid), so a
`mosquitto_sub -u cloud0` or an `flctl --config nodes/edge1/node.yaml` in the docs would take that
node's live session over. Every documented MQTT command uses a person's or tool's identity (admin,
viewer, monitor) or none (the unsecured demo broker).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", REPO / "deploy" / "README.md", *(REPO / "docs").rglob("*.md")])
# The services' identities as the docs name them: aggregators (cloud*), edges (edge*), a node placeholder.
SERVICE = re.compile(r"^(cloud|edge)[\w.-]*$|^<?node>?$|^\$\{?NODE")
MQTT_TOOLS = ("mosquitto_sub", "mosquitto_pub", "mosquitto_rr")
IDENTITY_OPTIONS = ("-u", "--username", "-i", "--id")


def commands() -> list[tuple[str, list[str]]]:
    """(doc:line, argv) of every mosquitto_* and flctl command in the docs, in code blocks or inline."""
    found: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        pending = ""
        for number, raw in enumerate(doc.read_text().splitlines(), 1):
            line = pending + raw
            pending = ""
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            for match in re.finditer(r"((?:\w+=\S+\s+)*(?:mosquitto_(?:sub|pub|rr)|flctl)\b[^`|;#]*)", line):
                try:
                    argv = shlex.split(match.group(1))
                except ValueError:
                    argv = match.group(1).split()
                found.append((f"{doc.relative_to(REPO)}:{number}", argv))
    return found


def service_identity(argv: list[str]) -> str | None:
    """The service identity `argv` would log in as, if any."""
    program = next((a for a in argv if "=" not in a), "")
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("XDG_CONFIG_HOME", "FLCTL_CONFIG", "FL_NODE_CONFIG") and (
            "/nodes/" in value or SERVICE.match(Path(value).name)
        ):
            return arg
        if program in MQTT_TOOLS and arg in IDENTITY_OPTIONS and i + 1 < len(argv) and SERVICE.match(argv[i + 1]):
            return f"{arg} {argv[i + 1]}"
        if program == "flctl" and arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            if "/nodes/" in path or path.endswith("node.yaml"):
                return f"--config {path}"
    return None


def test_the_docs_have_mqtt_commands_to_check() -> None:
    programs = {next(a for a in argv if "=" not in a) for _, argv in commands() if argv}
    assert {"mosquitto_sub", "mosquitto_pub", "flctl"} <= programs


@pytest.mark.parametrize("where,argv", [pytest.param(w, a, id=w) for w, a in commands()])
def test_no_documented_command_uses_a_service_identity(where: str, argv: list[str]) -> None:
    assert service_identity(argv) is None, f"{where}: {shlex.join(argv)} logs in as a service"


@pytest.mark.parametrize(
    "line",
    [
        "mosquitto_sub -h 127.0.0.1 -p 1883 -u cloud0 -P x -t '$SYS/#'",
        "mosquitto_pub -u edge1 -t t -m m",
        "flctl --config /etc/fl/edge1/node.yaml get fl",
        "XDG_CONFIG_HOME=/etc/fl/nodes/cloud0 mosquitto_sub -t x",
    ],
)
def test_the_check_catches_a_service_identity(line: str) -> None:
    assert service_identity(shlex.split(line)) is not None
