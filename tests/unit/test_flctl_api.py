"""flctl's public API: what the package and each public subpackage export (pinned), and that nothing
outside flctl (other packages, tests, examples, benchmarks) imports one of its private modules."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PUBLIC_API = {
    "flctl": ["FlctlError", "__version__", "main"],
    "flctl.cli": ["broker_options", "build_parser", "main"],
    "flctl.cluster": ["ADMIN", "MONITOR", "LocalCluster", "NodeProcess", "free_port"],
    "flctl.printers": [
        "CREATED_AT",
        "CREATED_BY",
        "OUTPUTS",
        "JobView",
        "NodeView",
        "ResourceView",
        "Retained",
        "SpecView",
        "View",
        "action_line",
        "age",
        "collect_jobs",
        "collect_nodes",
        "collect_resources",
        "decode_spec",
        "deleted_line",
        "describe_job",
        "describe_node",
        "describe_resource",
        "document",
        "human_duration",
        "jobs_table",
        "render_views",
        "round_column",
        "table",
        "timestamp",
        "worker_states",
        "workers_column",
    ],
    "flctl.provision": ["DEFAULT_PLAIN_PORT", "DEFAULT_TLS_PORT", "Provisioned", "provision", "render_acl"],
    "flctl.synth": [
        "CLASS_COUNTS",
        "DATASET_DIRNAME",
        "DEFAULT_CONTRAST",
        "DEFECT_CLASSES",
        "SPLIT_FILES",
        "SynthReport",
        "copy_split",
        "synthesize",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC_API))
def test_public_api_is_pinned(module: str) -> None:
    """Each public flctl module exports exactly the pinned names, and every one of them exists."""
    loaded = importlib.import_module(module)

    exported = list(loaded.__all__)

    assert sorted(exported) == sorted(PUBLIC_API[module])
    assert all(hasattr(loaded, name) for name in exported)


def _sources_outside_flctl() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if parts[0] in ("flctl", ".venv", ".demo", "build") or any(p.startswith(".") for p in parts):
            continue
        yield path


def _private_flctl_imports(path: Path) -> list[str]:
    """`flctl._x`, `flctl.sub._x` or `from flctl import _x` in one file, with line numbers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "flctl" and any(p.startswith("_") and not p.startswith("__") for p in parts[1:]):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {module}")
    return found


def test_nothing_outside_flctl_imports_its_private_modules() -> None:
    """Tests, examples, benchmarks and the other packages use flctl's public modules only."""
    offenders = [hit for path in _sources_outside_flctl() for hit in _private_flctl_imports(path)]

    assert offenders == []
