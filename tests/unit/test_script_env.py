"""A job's parameters on their way into a script's environment (issue 8, "Dangerous parameter names").

The spec's name rule (`schemas.parameter_name_problem`) is applied again by `runtime.script_parameters`,
which both node services call before they start a script: a plan or script request that did not come
from a checked spec (an older aggregator, another publisher) still cannot set LD_PRELOAD on a node.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud_aggregator import WorkerScriptError
from cloud_aggregator.engine import ScriptRequest
from cloud_aggregator.service import aggregation_launch
from edge_trainer import PlanRejectedError
from edge_trainer.engine import prepare_launch
from runtime import ScriptStartError, script_environment, script_parameters
from schemas import (
    MAX_EXIT_ROUND,
    DatasetRef,
    EffectiveWorker,
    JobPlan,
    ModelRef,
    NodeRoot,
    PlannedWorker,
    ScriptRef,
)

JOB = "job"
NODE = "edge1"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("LD_PRELOAD", "names starting with LD_"),
        ("ld_audit", "names starting with LD_"),
        ("PYTHONPATH", "names starting with PYTHON"),
        ("BASH_ENV", "names starting with BASH_"),
        ("PATH", "changes how the worker's process is loaded"),
        ("FL_WORKER_FD", "names starting with FL_"),
        ("MODEL_URL", "MODEL_URL is set by the node service"),
        ("a=b", "is not an environment variable name"),
    ],
)
def test_script_parameters_refuses_what_the_spec_refuses(name: str, why: str) -> None:
    """The runtime applies the spec's rule, naming the parameter and why."""
    with pytest.raises(ScriptStartError, match=rf"parameter '{name}' cannot be passed to the script: .*{why}"):
        script_parameters({"epochs": "1", name: "/tmp/x"}, reserved=())


def test_script_parameters_refuses_a_name_the_caller_sets() -> None:
    """A name in `reserved` (the service's own variables) is refused even when the rule lets it pass."""
    with pytest.raises(ScriptStartError, match="the node service sets SPECIAL itself"):
        script_parameters({"SPECIAL": "1"}, reserved=("SPECIAL",))


def test_script_parameters_refuses_values_past_their_bound() -> None:
    """Values are checked with the spec's bounds too (a NUL could not be passed at all)."""
    with pytest.raises(ScriptStartError, match=r"expected a whole number in \[1, 10000\]"):
        script_parameters({"epochs": str(10**12)}, reserved=())
    with pytest.raises(ScriptStartError, match="NUL"):
        script_parameters({"note": "a\x00b"}, reserved=())


def test_plain_parameters_reach_the_environment() -> None:
    """Sedna's plain names pass unchanged and land in the script's environment under their own names."""
    params = {"learning_rate": "0.001", "epochs": "1", "batch_size": "32", "BATCH_SIZE": "32", "my-knob": "x"}

    env = script_environment(script_parameters(params, reserved=("JOB_NAME",)), fd=3, base={"PATH": "/usr/bin"})

    assert {k: env[k] for k in params} == params
    assert env["PATH"] == "/usr/bin"


def _plan(parameters: dict[str, str]) -> JobPlan:
    return JobPlan(
        job=JOB,
        uid="u" * 32,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=3,
        participants=[NODE],
        model=ModelRef(name="m", url="/model", format="ckpt"),
        workers=[
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url="/data/1.txt", format="txt", node_name=NODE),
                script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
                parameters=parameters,
            )
        ],
        chunk_size=64 * 1024,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "1.txt").write_text("a.jpg,0\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("")
    (tmp_path / "code" / "aggregate.py").write_text("")
    return tmp_path


def test_edge_refuses_a_plan_with_a_loader_parameter(root: Path) -> None:
    """An edge refuses a plan (that no checked spec made) whose parameters would set LD_PRELOAD."""
    with pytest.raises(PlanRejectedError, match="parameter 'LD_PRELOAD' cannot be passed to the script"):
        prepare_launch(_plan({"LD_PRELOAD": "/data/x.so"}), NODE, NodeRoot(root), tf_version="2.21.0")


def test_edge_refuses_a_plan_past_the_exit_round_bound() -> None:
    """A plan's exit_round has the spec's bound: an edge cannot be told to train for 10^20 rounds."""
    data = _plan({}).model_dump(by_alias=True)
    data["exitRound"] = MAX_EXIT_ROUND + 1

    with pytest.raises(ValidationError, match="less than or equal to 10000"):
        JobPlan.model_validate(data)


def test_cloud_refuses_a_script_request_with_an_interpreter_parameter(root: Path) -> None:
    """The aggregator refuses to start a script whose worker (not from a checked spec) sets PYTHONSTARTUP."""
    worker = EffectiveWorker(
        node_name="cloud0",
        script_dir="/code",
        script_boot_file="aggregate.py",
        framework_type="tensorflow",
        framework_version=None,
        parameters={"exit_round": "3", "PYTHONSTARTUP": "/data/x.py"},
    )
    request = ScriptRequest(
        job=JOB,
        uid="u" * 32,
        namespace="default",
        worker=worker,
        model=ModelRef(name="m", url="/model", format="ckpt"),
        pretrained_model=None,
        participants_count=1,
    )

    with pytest.raises(WorkerScriptError, match="parameter 'PYTHONSTARTUP' cannot be passed to the script"):
        aggregation_launch(request, root=NodeRoot(root), node="cloud0")
