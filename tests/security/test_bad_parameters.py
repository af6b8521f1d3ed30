"""Hostile job parameters (issue 8): `flctl create` refuses a job whose parameter would change how the
worker's process is loaded (LD_PRELOAD, PYTHONPATH, BASH_ENV, ...) or whose numbers are past their
bounds, naming the file, the document, the field path and why, and publishes nothing. These are checked
before flctl connects, so no broker is needed (test_bad_input.py publishes the same specs raw to a real
cluster and reads the aggregator's status).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from flctl import cli as flctl_cli
from tests.helpers.mqtt import free_port

pytestmark = pytest.mark.security

SEED = Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
DOCS: list[dict[str, Any]] = list(yaml.safe_load_all(SEED.read_text()))
JOB_DOC = 'document 4/4 (FederatedLearningJob "surface-defect-detection")'
T0 = "spec.trainingWorkers[0]"


def _as_template(worker: dict[str, Any], env: list[dict[str, str]]) -> None:
    """Rewrite a workerSpec worker the CRD's way: a pod template whose container env holds `env`."""
    node, spec = worker.pop("nodeName"), worker.pop("workerSpec")
    worker["template"] = {
        "spec": {
            "nodeName": node,
            "containers": [{"name": "train", "command": ["python", f"{spec['scriptDir']}/train.py"], "env": env}],
        }
    }


def _with(change: Any) -> str:
    docs = copy.deepcopy(DOCS)
    change(docs[3])
    return yaml.safe_dump_all(docs, sort_keys=False)


def _add_param(key: str, value: str) -> Any:
    return lambda job: job["spec"]["trainingWorkers"][0]["workerSpec"]["parameters"].append(
        {"key": key, "value": value}
    )


def _agg_param(key: str, value: str) -> Any:
    def change(job: dict[str, Any]) -> None:
        params = job["spec"]["aggregationWorker"]["workerSpec"]["parameters"]
        params[:] = [p for p in params if p["key"] != key] + [{"key": key, "value": value}]

    return change


CASES = [
    (
        "ld-preload",
        _add_param("LD_PRELOAD", "/data/evil.so"),
        f"{T0}.workerSpec.parameters[3].key: 'LD_PRELOAD' is refused: names starting with LD_",
    ),
    (
        "bash-env-lowercase",
        _add_param("bash_env", "/data/evil.sh"),
        f"{T0}.workerSpec.parameters[3].key: 'bash_env' is refused: names starting with BASH_",
    ),
    (
        "node-root",
        _add_param("FL_NODE_ROOT", "/"),
        f"{T0}.workerSpec.parameters[3].key: 'FL_NODE_ROOT' is refused: names starting with FL_",
    ),
    (
        "template-pythonpath",
        lambda job: _as_template(
            job["spec"]["trainingWorkers"][0],
            [{"name": "epochs", "value": "1"}, {"name": "PYTHONPATH", "value": "/data"}],
        ),
        f"{T0}.template.spec.containers[0].env[1].name: 'PYTHONPATH' is refused: names starting with PYTHON",
    ),
    (
        "exit-round-1e20",
        _agg_param("exit_round", "1" + "0" * 20),
        "spec.aggregationWorker.workerSpec.parameters[0].value: exit_round='100000000000000000000': "
        "expected a whole number in [1, 10000]",
    ),
    (
        "epochs-1e12",
        lambda job: job["spec"]["trainingWorkers"][1]["workerSpec"]["parameters"][2].update(value="1000000000000"),
        "spec.trainingWorkers[1].workerSpec.parameters[2].value: epochs='1000000000000': "
        "expected a whole number in [1, 10000]",
    ),
]


@pytest.mark.parametrize(("case", "change", "expected"), CASES, ids=[c[0] for c in CASES])
def test_flctl_create_refuses_hostile_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, change: Any, expected: str
) -> None:
    """flctl create exits non-zero naming file, document, field path and reason; nothing is published."""
    # Arrange: the broker address is a closed port, so reaching it at all would be a different error
    path = tmp_path / f"{case}.yaml"
    path.write_text(_with(change))

    # Act
    code = flctl_cli.main(["--host", "127.0.0.1", "--port", str(free_port()), "create", "-f", str(path)])

    # Assert
    err = capsys.readouterr().err
    assert code != 0
    assert f"{path} {JOB_DOC} is invalid:" in err
    assert expected in err
    assert "nothing was published" in err
