"""Sedna resources and document parsing: `schemas._resources` and `schemas._documents`."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import (
    DENIED_PARAMETER_NAMES,
    DENIED_PARAMETER_PREFIXES,
    NODE_SET_NAMES,
    PARAMETER_BOUNDS,
    PARAMETER_CHOICES,
    Dataset,
    EffectiveWorker,
    FederatedLearningJob,
    Kind,
    Model,
    Resource,
    SpecError,
    Topics,
    check_references,
    closest_name,
    load_yaml_documents,
    parse_documents,
    parse_for_topic,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection"
SEED_PATH = EXAMPLE / "surface-defect-detection.yaml"
PUBLISHED_PATH = EXAMPLE / "seed-as-published.yaml"

JOB = "surface-defect-detection"
MODEL = "surface-defect-detection-model"
DS1 = "edge1-surface-defect-detection-dataset"
DS2 = "edge2-surface-defect-detection-dataset"
SRC = "seed.yaml"
DS1_DOC = f'{SRC} document 1/4 (Dataset "{DS1}")'
MODEL_DOC = f'{SRC} document 3/4 (Model "{MODEL}")'
JOB_DOC = f'{SRC} document 4/4 (FederatedLearningJob "{JOB}")'

Doc = dict[str, Any]


# -- helpers -----------------------------------------------------------------------------------


def seed_text() -> str:
    return SEED_PATH.read_text(encoding="utf-8")


def seed_docs() -> list[Doc]:
    return [d for d in yaml.safe_load_all(seed_text()) if d is not None]


def seed_resources() -> list[Resource]:
    return parse_documents(seed_text(), SRC)


def seed_job() -> FederatedLearningJob:
    job = seed_resources()[3]
    assert isinstance(job, FederatedLearningJob)
    return job


def by_name(resources: list[Resource]) -> tuple[dict[str, Dataset], dict[str, Model]]:
    datasets = {r.metadata.name: r for r in resources if isinstance(r, Dataset)}
    models = {r.metadata.name: r for r in resources if isinstance(r, Model)}
    return datasets, models


def mutated_seed(index: int, change: Callable[[Doc], None]) -> str:
    """The seed file as YAML text, with `change` applied to document `index`."""
    docs = seed_docs()
    change(docs[index])
    return yaml.safe_dump_all(docs, sort_keys=False)


def parse_error(text: str | bytes, source: str = SRC) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_documents(text, source)
    return info.value


def trainer(doc: Doc, i: int = 0) -> Doc:
    worker: Doc = doc["spec"]["trainingWorkers"][i]
    return worker


def set_param(worker_path: str, key: str, value: Any) -> Callable[[Doc], None]:
    """A change that sets parameter `key` of a worker ("aggregation" or "training0") to `value`."""

    def change(doc: Doc) -> None:
        worker = doc["spec"]["aggregationWorker"] if worker_path == "aggregation" else trainer(doc)
        for param in worker["workerSpec"]["parameters"]:
            if param["key"] == key:
                param["value"] = value
                return
        raise AssertionError(f"seed has no parameter {key} in {worker_path}")

    return change


def template_worker(node: str, script: str, env: dict[str, str], working_dir: str | None = None) -> Doc:
    """A worker written the CRD's way: a pod template that names its node, script and env."""
    container: Doc = {
        "name": "worker",
        "image": "kubeedge/sedna-example-federated-learning-surface-defect-detection-train:v0.3.0",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", script],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    if working_dir is not None:
        container["workingDir"] = working_dir
    return {"spec": {"nodeName": node, "containers": [container]}}


# -- the seed YAML -----------------------------------------------------------------------------


def test_seed_yaml_parses_into_two_datasets_one_model_and_one_job() -> None:
    """The fixed seed file parses unchanged into Dataset, Dataset, Model, FederatedLearningJob."""
    # Arrange
    text = seed_text()

    # Act
    resources = parse_documents(text, SRC)

    # Assert
    assert [type(r) for r in resources] == [Dataset, Dataset, Model, FederatedLearningJob]
    assert [r.metadata.name for r in resources] == [DS1, DS2, MODEL, JOB]
    assert all(r.metadata.namespace == "default" for r in resources)


def test_seed_datasets_carry_url_format_and_node() -> None:
    """Each seed Dataset keeps its url, txt format and nodeName."""
    # Arrange
    datasets, _ = by_name(seed_resources())

    # Act
    fields = {name: (d.spec.url, d.spec.format, d.spec.node_name) for name, d in datasets.items()}

    # Assert
    assert fields == {DS1: ("/data/1.txt", "txt", "edge1"), DS2: ("/data/2.txt", "txt", "edge2")}


def test_seed_model_carries_url_and_format() -> None:
    """The seed Model keeps url /model and format ckpt."""
    # Arrange
    _, models = by_name(seed_resources())

    # Act
    model = models[MODEL]

    # Assert
    assert (model.kind, model.spec.url, model.spec.format) == ("Model", "/model", "ckpt")


def test_seed_job_aggregation_worker_fields() -> None:
    """The seed job's aggregation worker names the Model, node cloud0 and its workerSpec."""
    # Arrange
    job = seed_job()

    # Act
    agg = job.spec.aggregation_worker

    # Assert
    assert agg.model.name == MODEL
    assert agg.node_name == "cloud0"
    assert agg.worker_spec is not None
    assert agg.worker_spec.script_dir == "/code"
    assert agg.worker_spec.script_boot_file == "aggregate.py"
    assert agg.worker_spec.framework_type == "tensorflow"
    assert agg.worker_spec.framework_version == "2.3"
    assert [(p.key, p.value) for p in agg.worker_spec.parameters] == [("exit_round", "3")]
    assert job.spec.pretrained_model is None
    assert job.spec.transmitter is None


def test_seed_job_training_workers_fields() -> None:
    """The seed job's training workers run on edge1 and edge2 with their own Datasets."""
    # Arrange
    job = seed_job()

    # Act
    workers = [(w.node_name, w.dataset.name) for w in job.spec.training_workers]

    # Assert
    assert workers == [("edge1", DS1), ("edge2", DS2)]


def test_seed_parameters_stay_strings() -> None:
    """Parameter values are kept as the strings the CRD types them as."""
    # Arrange
    job = seed_job()

    # Act
    params = [p for w in job.spec.training_workers for p in (w.worker_spec.parameters if w.worker_spec else [])]

    # Assert
    assert [(p.key, p.value) for p in params[:3]] == [("batch_size", "32"), ("learning_rate", "0.001"), ("epochs", "1")]
    assert all(isinstance(p.value, str) for p in params)


def test_seed_effective_workers() -> None:
    """effective() gives node, script, framework and a parameter dict for every seed worker."""
    # Arrange
    job = seed_job()
    train_params = {"batch_size": "32", "learning_rate": "0.001", "epochs": "1"}

    # Act
    agg = job.spec.aggregation_worker.effective()
    trainers = [w.effective() for w in job.spec.training_workers]

    # Assert
    assert agg == EffectiveWorker(
        node_name="cloud0",
        script_dir="/code",
        script_boot_file="aggregate.py",
        framework_type="tensorflow",
        framework_version="2.3",
        parameters={"exit_round": "3"},
    )
    assert trainers == [
        EffectiveWorker(
            node_name=node,
            script_dir="/code",
            script_boot_file="train.py",
            framework_type="tensorflow",
            framework_version="2.3",
            parameters=train_params,
        )
        for node in ("edge1", "edge2")
    ]


def test_seed_references_resolve() -> None:
    """check_references finds no problem in the fixed seed file."""
    # Arrange
    resources = seed_resources()
    datasets, models = by_name(resources)

    # Act
    problems = check_references(seed_job(), datasets, models)

    # Assert
    assert problems == []


def test_seed_as_json_parses_like_yaml() -> None:
    """A job written as JSON (JSON is YAML) parses into the same resource."""
    # Arrange
    text = json.dumps(seed_docs()[3])

    # Act
    (job,) = parse_documents(text, "job.json")

    # Assert
    assert job == seed_job()


# -- the seed page as published ----------------------------------------------------------------


def test_as_published_yaml_parses() -> None:
    """The as-published seed (mismatched dataset names) still parses: names are checked later."""
    # Arrange
    text = PUBLISHED_PATH.read_text(encoding="utf-8")

    # Act
    resources = parse_documents(text, "seed-as-published.yaml")

    # Assert
    assert [r.kind for r in resources] == ["Dataset", "Dataset", "Model", "FederatedLearningJob"]


def test_as_published_references_name_both_missing_datasets_with_hint() -> None:
    """check_references names both missing Datasets and suggests the closest existing name."""
    # Arrange
    resources = parse_documents(PUBLISHED_PATH.read_text(encoding="utf-8"), "seed-as-published.yaml")
    datasets, models = by_name(resources)
    job = resources[3]
    assert isinstance(job, FederatedLearningJob)

    # Act
    problems = check_references(job, datasets, models)

    # Assert
    assert [p.field for p in problems] == [
        "spec.trainingWorkers[0].dataset.name",
        "spec.trainingWorkers[1].dataset.name",
    ]
    assert problems[0].message == (
        f'Dataset "edge-1-surface-defect-detection-dataset" not found; did you mean "{DS1}"?'
    )
    assert problems[1].message == (
        f'Dataset "edge-2-surface-defect-detection-dataset" not found; did you mean "{DS2}"?'
    )


def test_missing_reference_without_close_name_lists_existing() -> None:
    """A missing Model with no similar name lists the Models that do exist."""
    # Arrange
    datasets, models = by_name(seed_resources())
    text = mutated_seed(3, lambda d: d["spec"]["aggregationWorker"]["model"].__setitem__("name", "zzz"))
    job = parse_documents(text, SRC)[3]
    assert isinstance(job, FederatedLearningJob)

    # Act
    problems = check_references(job, datasets, models)

    # Assert
    assert [str(p) for p in problems] == [
        f'spec.aggregationWorker.model.name: Model "zzz" not found (existing Models: "{MODEL}")'
    ]


def test_missing_pretrained_model_is_a_reference_problem() -> None:
    """A pretrainedModel that names no Model is reported at spec.pretrainedModel.name."""
    # Arrange
    datasets, models = by_name(seed_resources())
    text = mutated_seed(
        3, lambda d: d["spec"].__setitem__("pretrainedModel", {"name": "surface-defect-detection-modle"})
    )
    job = parse_documents(text, SRC)[3]
    assert isinstance(job, FederatedLearningJob)

    # Act
    problems = check_references(job, datasets, models)

    # Assert
    assert [p.field for p in problems] == ["spec.pretrainedModel.name"]
    assert f'did you mean "{MODEL}"' in problems[0].message


def test_dataset_on_another_node_is_a_reference_problem() -> None:
    """A Dataset that lives on another node than its training worker is a reference problem."""
    # Arrange
    text = mutated_seed(0, lambda d: d["spec"].__setitem__("nodeName", "edge3"))
    resources = parse_documents(text, SRC)
    datasets, models = by_name(resources)
    job = resources[3]
    assert isinstance(job, FederatedLearningJob)

    # Act
    problems = check_references(job, datasets, models)

    # Assert
    assert len(problems) == 1
    assert problems[0].field == "spec.trainingWorkers[0].dataset.name"
    assert f"Dataset \"{DS1}\" lives on node 'edge3' but this worker runs on node 'edge1'" in problems[0].message


def test_closest_name_returns_none_when_nothing_is_close() -> None:
    """closest_name suggests only names that are similar enough."""
    # Arrange
    candidates = [DS1, DS2]

    # Act
    close = closest_name("edge-2-surface-defect-detection-dataset", candidates)
    far = closest_name("model", candidates)

    # Assert
    assert (close, far) == (DS2, None)


# -- the CRD's pod-template form ---------------------------------------------------------------


def test_pod_template_worker_gives_same_effective_worker_as_worker_spec() -> None:
    """A worker written as a pod template (nodeName, env, command with a .py) equals its workerSpec form."""
    # Arrange
    env = {"batch_size": "32", "learning_rate": "0.001", "epochs": "1"}

    def spec_form(doc: Doc) -> None:
        del trainer(doc)["workerSpec"]["frameworkVersion"]  # a pod template has no framework version

    def template_form(doc: Doc) -> None:
        worker = trainer(doc)
        del worker["nodeName"], worker["workerSpec"]
        worker["template"] = template_worker("edge1", "/code/train.py", env)

    spec_job = parse_documents(mutated_seed(3, spec_form), SRC)[3]
    template_job = parse_documents(mutated_seed(3, template_form), SRC)[3]
    assert isinstance(spec_job, FederatedLearningJob)
    assert isinstance(template_job, FederatedLearningJob)

    # Act
    from_spec = spec_job.spec.training_workers[0].effective()
    from_template = template_job.spec.training_workers[0].effective()

    # Assert
    assert from_template == from_spec
    assert from_template.node_name == "edge1"
    assert (from_template.script_dir, from_template.script_boot_file) == ("/code", "train.py")
    assert from_template.parameters == env


def test_pod_template_relative_script_runs_from_working_dir() -> None:
    """A relative script in a pod template's command runs from the container's workingDir."""

    # Arrange
    def change(doc: Doc) -> None:
        agg = doc["spec"]["aggregationWorker"]
        del agg["nodeName"], agg["workerSpec"]
        agg["template"] = template_worker("cloud0", "aggregate.py", {"exit_round": "3"}, working_dir="/srv/code")

    job = parse_documents(mutated_seed(3, change), SRC)[3]
    assert isinstance(job, FederatedLearningJob)

    # Act
    worker = job.spec.aggregation_worker.effective()

    # Assert
    assert (worker.node_name, worker.script_dir, worker.script_boot_file) == ("cloud0", "/srv/code", "aggregate.py")
    assert worker.parameters == {"exit_round": "3"}


def test_pod_template_without_python_script_is_an_error() -> None:
    """A pod template whose command names no .py script is refused with a clear message."""

    # Arrange
    def change(doc: Doc) -> None:
        worker = trainer(doc)
        del worker["nodeName"], worker["workerSpec"]
        worker["template"] = template_worker("edge1", "/bin/train", {})

    # Act
    err = parse_error(mutated_seed(3, change))

    # Assert
    assert err.document == JOB_DOC
    assert err.fields == ["spec.trainingWorkers[0]"]
    assert "must name its Python script in command or args" in str(err)


def test_pod_template_parameters_are_checked() -> None:
    """Bad and duplicate parameters in a pod template's env are refused like workerSpec ones."""

    # Arrange
    def change(doc: Doc) -> None:
        worker = trainer(doc)
        del worker["nodeName"], worker["workerSpec"]
        worker["template"] = template_worker("edge1", "/code/train.py", {"batch_size": "-1"})
        worker["template"]["spec"]["containers"][0]["env"].append({"name": "batch_size", "value": "8"})

    # Act
    err = parse_error(mutated_seed(3, change))

    # Assert
    env = "spec.trainingWorkers[0].template.spec.containers[0].env"
    assert err.fields == [f"{env}[0].value", f"{env}[1].name"]
    assert "batch_size='-1': expected a whole number in [1, 65536]" in str(err)
    assert "parameter 'batch_size' is given twice" in str(err)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("LD_PRELOAD", "names starting with LD_ change how the worker's process is loaded"),
        ("pythonstartup", "names starting with PYTHON change how"),
        ("BASH_ENV", "names starting with BASH_ change how"),
        ("FL_WORKER_FD", "names starting with FL_ belong to the node service"),
        ("TRAIN_DATASET_URL", "TRAIN_DATASET_URL is set by the node service"),
    ],
)
def test_pod_template_env_names_are_checked(name: str, reason: str) -> None:
    """A pod template's env entry that would change how the script is loaded is refused, naming the entry."""

    # Arrange
    def change(doc: Doc) -> None:
        worker = trainer(doc)
        del worker["nodeName"], worker["workerSpec"]
        worker["template"] = template_worker("edge1", "/code/train.py", {"batch_size": "32", name: "/data/x"})

    # Act
    err = parse_error(mutated_seed(3, change))

    # Assert
    field = "spec.trainingWorkers[0].template.spec.containers[0].env[1].name"
    assert err.fields == [field]
    assert f"{field}: {name!r} is refused: {reason}" in str(err)


def test_security_doc_lists_the_rule_as_built() -> None:
    """docs/security.md quotes every denied name and prefix, every node-set name and every bound."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    section = doc.split("## Worker parameters", 1)[1].split("\n## ", 1)[0]
    denied = [f"`{n}`" for n in DENIED_PARAMETER_NAMES if not n.startswith("PS")]
    denied += [f"`{p}*`" for p in DENIED_PARAMETER_PREFIXES] + [f"`{n}`" for n in NODE_SET_NAMES]
    assert [d for d in denied if d not in section] == []
    for name, bound in PARAMETER_BOUNDS.items():
        row = next(line for line in section.splitlines() if f"`{name}`" in line and line.startswith("|"))
        interval = bound.describe().rsplit(" in ", 1)[1]
        assert interval in row, (name, interval, row)
    for name, choices in PARAMETER_CHOICES.items():
        row = next(line for line in section.splitlines() if f"`{name}`" in line and line.startswith("|"))
        assert all(f"`{choice}`" in row for choice in choices), (name, row)


@pytest.mark.parametrize(
    "name",
    [
        "learning_rate", "epochs", "batch_size", "aggregation_algorithm", "exit_round", "participants_count",
        "min_participants", "round_deadline", "validation_split", "BATCH_SIZE", "LEARNING_RATE", "job_name",
        "TEST_DATASET_URL", "ORIGINAL_DATASET_URL", "hidden", "features", "model.dropout", "my-knob", "Path2",
    ],
)  # fmt: skip
def test_plain_parameter_names_pass(name: str) -> None:
    """Sedna's plain names and ordinary user names pass the name rule and reach the effective worker."""
    # Arrange
    value = "1" if name.lower() != "validation_split" else "0.1"

    def change(doc: Doc) -> None:
        trainer(doc)["workerSpec"]["parameters"] = [{"key": name, "value": value}]

    # Act
    parsed = parse_documents(mutated_seed(3, change), SRC)

    # Assert
    job = parsed[3]
    assert isinstance(job, FederatedLearningJob)
    assert job.spec.training_workers[0].effective().parameters[name] == value


def test_worker_without_spec_or_template_is_an_error() -> None:
    """A worker with neither workerSpec nor template is refused, naming what it needs."""
    # Arrange
    text = mutated_seed(3, lambda d: trainer(d).pop("workerSpec"))

    # Act
    err = parse_error(text)

    # Assert
    assert err.fields == ["spec.trainingWorkers[0]"]
    assert "needs workerSpec (scriptDir, scriptBootFile, ...) or a pod template" in str(err)


def test_worker_without_node_is_an_error() -> None:
    """A worker with no nodeName anywhere is refused."""
    # Arrange
    text = mutated_seed(3, lambda d: trainer(d).pop("nodeName"))

    # Act
    err = parse_error(text)

    # Assert
    assert err.fields == ["spec.trainingWorkers[0]"]
    assert "needs nodeName (or template.spec.nodeName)" in str(err)


# -- invalid documents: every error names the document and the field ---------------------------


def _append_param(key: str, value: str, worker: str = "training0") -> Callable[[Doc], None]:
    """A change that appends parameter key=value to a worker ("aggregation" or "training0")."""

    def change(doc: Doc) -> None:
        target = doc["spec"]["aggregationWorker"] if worker == "aggregation" else trainer(doc)
        target["workerSpec"]["parameters"].append({"key": key, "value": value})

    return change


def _rename_node_field(doc: Doc) -> None:
    worker = trainer(doc)
    worker["nodename"] = worker.pop("nodeName")


PARAMS0 = "spec.trainingWorkers[0].workerSpec.parameters"

# (id, document index, change, document description, field path, what the message says)
BAD_FIELDS: list[tuple[str, int, Callable[[Doc], None], str, str, str]] = [
    (
        "missing dataset",
        3,
        lambda d: trainer(d).pop("dataset"),
        JOB_DOC,
        "spec.trainingWorkers[0].dataset",
        "required field is missing",
    ),
    (
        "no training workers",
        3,
        lambda d: d["spec"].__setitem__("trainingWorkers", []),
        JOB_DOC,
        "spec.trainingWorkers",
        "at least 1 item",
    ),
    (
        "parameter value is a list",
        3,
        set_param("training0", "batch_size", [32, 64]),
        JOB_DOC,
        f"{PARAMS0}[0].value",
        "Input should be a valid string (got [32, 64])",
    ),
    (
        "url is a mapping",
        0,
        lambda d: d["spec"].__setitem__("url", {"path": "/data/1.txt"}),
        DS1_DOC,
        "spec.url",
        "Input should be a valid string",
    ),
    (
        "nodename typo",
        3,
        _rename_node_field,
        JOB_DOC,
        "spec.trainingWorkers[0].nodename",
        "unknown field (check its spelling and case)",
    ),
    (
        "uppercase job name",
        3,
        lambda d: d["metadata"].__setitem__("name", "Surface-Defect-Detection"),
        f'{SRC} document 4/4 (FederatedLearningJob "Surface-Defect-Detection")',
        "metadata.name",
        "name 'Surface-Defect-Detection' is not a valid name: expected lowercase letters",
    ),
    (
        "underscore node name",
        3,
        lambda d: trainer(d).__setitem__("nodeName", "edge_1"),
        JOB_DOC,
        "spec.trainingWorkers[0].nodeName",
        "node name 'edge_1' is not a valid name",
    ),
    (
        "underscore dataset reference",
        3,
        lambda d: trainer(d)["dataset"].__setitem__("name", "edge1_dataset"),
        JOB_DOC,
        "spec.trainingWorkers[0].dataset.name",
        "name 'edge1_dataset' is not a valid name",
    ),
    (
        "name with trailing newline",
        0,
        lambda d: d["metadata"].__setitem__("name", "edge1-data\n"),
        f'{SRC} document 1/4 (Dataset "edge1-data\n")',
        "metadata.name",
        "is not a valid name",
    ),
    (
        "duplicate parameter key",
        3,
        _append_param("batch_size", "8"),
        JOB_DOC,
        f"{PARAMS0}[3].key",
        "parameter 'batch_size' is given twice",
    ),
    (
        "batch_size -1",
        3,
        set_param("training0", "batch_size", "-1"),
        JOB_DOC,
        f"{PARAMS0}[0].value",
        "batch_size='-1': expected a whole number in [1, 65536]",
    ),
    (
        "exit_round 0",
        3,
        set_param("aggregation", "exit_round", "0"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[0].value",
        "exit_round='0': expected a whole number in [1, 10000]",
    ),
    (
        "learning_rate fast",
        3,
        set_param("training0", "learning_rate", "fast"),
        JOB_DOC,
        f"{PARAMS0}[1].value",
        "learning_rate='fast': expected a number in (0, 10]",
    ),
    (
        "learning_rate nan",
        3,
        set_param("training0", "learning_rate", "nan"),
        JOB_DOC,
        f"{PARAMS0}[1].value",
        "learning_rate='nan': expected a number in (0, 10]",
    ),
    (
        "epochs 1.5",
        3,
        set_param("training0", "epochs", "1.5"),
        JOB_DOC,
        f"{PARAMS0}[2].value",
        "epochs='1.5': expected a whole number in [1, 10000]",
    ),
    (
        "validation_split 1",
        3,
        _append_param("validation_split", "1"),
        JOB_DOC,
        f"{PARAMS0}[3].value",
        "validation_split='1': expected a number in [0, 1)",
    ),
    (
        "exit_round 10^20",
        3,
        set_param("aggregation", "exit_round", "1" + "0" * 20),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[0].value",
        "exit_round='100000000000000000000': expected a whole number in [1, 10000]",
    ),
    (
        "epochs 10^12",
        3,
        set_param("training0", "epochs", "1000000000000"),
        JOB_DOC,
        f"{PARAMS0}[2].value",
        "epochs='1000000000000': expected a whole number in [1, 10000]",
    ),
    (
        "batch_size 65537",
        3,
        set_param("training0", "batch_size", 65537),
        JOB_DOC,
        f"{PARAMS0}[0].value",
        "batch_size='65537': expected a whole number in [1, 65536]",
    ),
    (
        "learning_rate 11",
        3,
        set_param("training0", "learning_rate", "11"),
        JOB_DOC,
        f"{PARAMS0}[1].value",
        "learning_rate='11': expected a number in (0, 10]",
    ),
    (
        "round_deadline over 7 days",
        3,
        _append_param("round_deadline", "604801", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "round_deadline='604801': expected a number of seconds in [0, 604800]",
    ),
    (
        "min_participants 1001",
        3,
        _append_param("min_participants", "1001", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "min_participants='1001': expected a whole number in [1, 1000]",
    ),
    (
        "server_learning_rate 0",
        3,
        _append_param("server_learning_rate", "0", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "server_learning_rate='0': expected a number in (0, 10]",
    ),
    (
        "server_momentum 1",
        3,
        _append_param("server_momentum", "1", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "server_momentum='1': expected a number in [0, 1)",
    ),
    (
        "BETA_1 uppercase over 1",
        3,
        _append_param("BETA_1", "1.5", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "BETA_1='1.5': expected a number in [0, 1)",
    ),
    (
        "beta_2 not a number",
        3,
        _append_param("beta_2", "high", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "beta_2='high': expected a number in [0, 1)",
    ),
    (
        "tau 0",
        3,
        _append_param("tau", "0", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "tau='0': expected a number in (0, 1]",
    ),
    (
        "EXIT_ROUND uppercase is bounded too",
        3,
        _append_param("EXIT_ROUND", "10001", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].value",
        "EXIT_ROUND='10001': expected a whole number in [1, 10000]",
    ),
    (
        "value over the length limit",
        3,
        _append_param("notes", "x" * 8193),
        JOB_DOC,
        f"{PARAMS0}[3].value",
        "a parameter value has at most 8192 characters, this one 8193",
    ),
    (
        "parameter LD_PRELOAD",
        3,
        _append_param("LD_PRELOAD", "/data/evil.so"),
        JOB_DOC,
        f"{PARAMS0}[3].key",
        "'LD_PRELOAD' is refused: names starting with LD_ change how the worker's process is loaded",
    ),
    (
        "parameter pythonpath (any case)",
        3,
        _append_param("PythonPath", "/data"),
        JOB_DOC,
        f"{PARAMS0}[3].key",
        "'PythonPath' is refused: names starting with PYTHON",
    ),
    (
        "parameter PATH on the aggregation worker",
        3,
        _append_param("PATH", "/data/bin", "aggregation"),
        JOB_DOC,
        "spec.aggregationWorker.workerSpec.parameters[1].key",
        "'PATH' is refused: as an environment variable it changes how the worker's process is loaded",
    ),
    (
        "parameter the node sets",
        3,
        _append_param("MODEL_URL", "/etc"),
        JOB_DOC,
        f"{PARAMS0}[3].key",
        "'MODEL_URL' is refused: MODEL_URL is set by the node service for every worker",
    ),
    (
        "parameter in the node's FL_ namespace",
        3,
        _append_param("FL_MQTT_PASSWORD", "x"),
        JOB_DOC,
        f"{PARAMS0}[3].key",
        "'FL_MQTT_PASSWORD' is refused: names starting with FL_ belong to the node service",
    ),
    (
        "parameter name that is no env name",
        3,
        _append_param("BASH_FUNC_ls%%", "() { id; }"),
        JOB_DOC,
        f"{PARAMS0}[3].key",
        "'BASH_FUNC_ls%%' is not an environment variable name",
    ),
    (
        "too many training workers",
        3,
        lambda d: d["spec"].__setitem__(
            "trainingWorkers",
            [{**copy.deepcopy(trainer(d)), "nodeName": f"edge{i}"} for i in range(1001)],
        ),
        JOB_DOC,
        "spec.trainingWorkers",
        "List should have at most 1000 items after validation, not 1001",
    ),
    (
        "too many parameters",
        3,
        lambda d: trainer(d)["workerSpec"].__setitem__(
            "parameters", [{"key": f"p{i}", "value": "1"} for i in range(257)]
        ),
        JOB_DOC,
        "spec.trainingWorkers[0].workerSpec.parameters",
        "List should have at most 256 items after validation, not 257",
    ),
    (
        "dataset format csv",
        0,
        lambda d: d["spec"].__setitem__("format", "csv"),
        DS1_DOC,
        "spec.format",
        "Input should be 'txt' (got 'csv')",
    ),
    (
        "model format onnx",
        2,
        lambda d: d["spec"].__setitem__("format", "onnx"),
        MODEL_DOC,
        "spec.format",
        "Input should be 'ckpt', 'keras', 'h5', 'savedmodel' or 'pb' (got 'onnx')",
    ),
    (
        "unknown kind",
        3,
        lambda d: d.__setitem__("kind", "FederatedJob"),
        f'{SRC} document 4/4 (FederatedJob "{JOB}")',
        "kind",
        "expected one of Dataset, Model, FederatedLearningJob, got 'FederatedJob'",
    ),
    (
        "wrong apiVersion",
        2,
        lambda d: d.__setitem__("apiVersion", "sedna.io/v1"),
        MODEL_DOC,
        "apiVersion",
        "expected 'sedna.io/v1alpha1', got 'sedna.io/v1'",
    ),
    (
        "duplicate training node",
        3,
        lambda d: trainer(d, 1).__setitem__("nodeName", "edge1"),
        JOB_DOC,
        "spec",
        "trainingWorkers[1] and trainingWorkers[0] both run on node 'edge1'",
    ),
]


@pytest.mark.parametrize(
    ("index", "change", "document", "field", "message"),
    [case[1:] for case in BAD_FIELDS],
    ids=[case[0] for case in BAD_FIELDS],
)
def test_invalid_document_error_names_document_and_field(
    index: int, change: Callable[[Doc], None], document: str, field: str, message: str
) -> None:
    """Each invalid document gives a SpecError naming the document (source, i/n, kind, name) and the field."""
    # Arrange
    text = mutated_seed(index, change)

    # Act
    err = parse_error(text)

    # Assert
    assert err.document == document
    assert field in err.fields
    assert str(err).startswith(f"{document}: ")
    assert f"{field}: " in str(err)
    assert message in str(err)


def test_malformed_yaml_names_line_and_column() -> None:
    """Malformed YAML gives a SpecError naming the source, line and column."""
    # Arrange
    text = 'apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata:\n  name: "d1"\nspec:\n  url: [unclosed\n  format: txt\n'

    # Act
    err = parse_error(text, "bad.yaml")

    # Assert
    assert str(err) == "bad.yaml: invalid YAML at line 7, column 9: expected ',' or ']', but got ':'"


def test_tab_indentation_names_line_and_column() -> None:
    """A tab used for indentation is reported at its line and column."""
    # Arrange
    text = "apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata:\n  name: d1\n\tnodeName: edge1\n"

    # Act
    err = parse_error(text, "tabs.yaml")

    # Assert
    assert str(err).startswith("tabs.yaml: invalid YAML at line 5, column 1: ")


@pytest.mark.parametrize("text", ["", "\n\n", "---\n---\n", "# only a comment\n"])
def test_empty_input_is_an_error(text: str) -> None:
    """Input with no document gives a SpecError saying so."""
    # Arrange
    source = "empty.yaml"

    # Act
    err = parse_error(text, source)

    # Assert
    assert str(err) == "empty.yaml: no document found (empty input)"


def test_document_that_is_not_a_mapping_is_an_error() -> None:
    """A document that is a list or scalar is refused, naming its position."""
    # Arrange
    text = seed_text() + "\n---\n- just\n- a list\n"

    # Act
    err = parse_error(text)

    # Assert
    assert str(err) == f"{SRC} document 5/5: expected a mapping with apiVersion, kind, metadata and spec, got list"


def test_non_utf8_bytes_are_an_error() -> None:
    """Bytes that are not UTF-8 give a SpecError instead of a decode crash."""
    # Arrange
    payload = b"apiVersion: sedna.io/v1alpha1\nkind: \xff\n"

    # Act
    err = parse_error(payload, "bin.yaml")

    # Assert
    assert str(err).startswith("bin.yaml: not UTF-8 text")


def test_oversized_input_is_an_error() -> None:
    """Input over the 1 MiB limit is refused before YAML parsing."""
    # Arrange
    text = "# " + "x" * (1 << 20) + "\n"

    # Act
    err = parse_error(text, "big.yaml")

    # Assert
    assert "bytes is over the 1048576-byte limit" in str(err)


def test_first_bad_document_raises_with_its_position() -> None:
    """In a multi-document file the first bad document is named by its i/n position."""
    # Arrange
    docs = seed_docs()
    docs[1]["spec"]["format"] = "csv"
    docs[3]["spec"]["trainingWorkers"] = []
    text = yaml.safe_dump_all(docs, sort_keys=False)

    # Act
    err = parse_error(text)

    # Assert
    assert err.document == f'{SRC} document 2/4 (Dataset "{DS2}")'


def test_every_bad_field_of_a_document_is_listed() -> None:
    """A document with several bad fields lists every one of them in one error."""

    # Arrange
    def change(doc: Doc) -> None:
        doc["spec"]["format"] = "csv"
        doc["spec"]["nodeName"] = "Edge1"
        del doc["spec"]["url"]

    # Act
    err = parse_error(mutated_seed(0, change))

    # Assert
    assert sorted(err.fields) == ["spec.format", "spec.nodeName", "spec.url"]


# -- hostile YAML ------------------------------------------------------------------------------


def test_alias_bomb_is_refused_quickly() -> None:
    """A YAML alias bomb (a few hundred bytes naming billions of nodes) is refused within seconds."""
    # Arrange
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    text = "\n".join(levels) + "\n"
    start = time.monotonic()

    # Act
    with pytest.raises(SpecError) as info:
        load_yaml_documents(text, "bomb.yaml")

    # Assert
    assert "expands to more than" in str(info.value)
    assert time.monotonic() - start < 10


def test_alias_bomb_inside_a_job_never_reaches_spec_hash() -> None:
    """An alias bomb hidden in a job's pod template is refused at parse time."""
    # Arrange
    bomb = "".join(
        f"  l{i + 1}: &l{i + 1} [*l{i}, *l{i}, *l{i}, *l{i}, *l{i}, *l{i}, *l{i}, *l{i}]\n" for i in range(8)
    )
    text = (
        "apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata:\n  name: j\n"
        "  annotations: {}\n  junk:\n    l0: &l0 [x, x, x, x, x, x, x, x]\n"
        + bomb.replace("  l", "    l")
        + "spec:\n  aggregationWorker:\n    model: {name: m}\n    template:\n      spec:\n"
        "        nodeName: cloud0\n        containers: [{command: [python, /code/aggregate.py]}]\n"
        "        extra: *l8\n"
        "  trainingWorkers:\n    - nodeName: edge1\n      dataset: {name: d1}\n"
        "      workerSpec: {scriptDir: /code, scriptBootFile: train.py}\n"
    )

    # Act
    err = parse_error(text, "job.yaml")

    # Assert
    assert "expands to more than" in str(err)


def test_deep_nesting_is_refused() -> None:
    """Deeply nested YAML gives a SpecError, not a RecursionError."""
    # Arrange
    texts = ["x: " + "[" * depth + "]" * depth for depth in (150, 5000)]

    # Act
    errors = [parse_error(text, "deep.yaml") for text in texts]

    # Assert
    assert [str(e) for e in errors] == ["deep.yaml: nested more than 100 levels deep"] * 2


def test_recursive_alias_is_refused() -> None:
    """A self-referencing YAML alias is refused instead of looping."""
    # Arrange
    text = "a: &a [*a]\n"

    # Act
    err = parse_error(text, "loop.yaml")

    # Assert
    assert "nested more than 100 levels deep" in str(err)


def test_benign_aliases_are_still_accepted() -> None:
    """Ordinary YAML anchors (shared parameter lists) still parse."""
    # Arrange
    text = seed_text().replace(
        '        parameters:\n          - key: "batch_size"',
        '        parameters: &train_params\n          - key: "batch_size"',
        1,
    )
    head, _, _ = text.rpartition("        parameters:")
    text = head + "        parameters: *train_params\n"

    # Act
    job = parse_documents(text, SRC)[3]

    # Assert
    assert job == seed_job()


# -- specs published on a topic ----------------------------------------------------------------


def test_parse_for_topic_accepts_one_matching_document() -> None:
    """One document whose kind and name match the spec topic parses."""
    # Arrange
    topic = Topics().spec(Kind.DATASET, DS1)
    payload = yaml.safe_dump(seed_docs()[0]).encode()

    # Act
    resource = parse_for_topic(payload, topic, Kind.DATASET, DS1)

    # Assert
    assert isinstance(resource, Dataset)
    assert resource == seed_resources()[0]


def test_parse_for_topic_accepts_json() -> None:
    """A JSON job document on its spec topic parses (mosquitto_pub -f job.json)."""
    # Arrange
    topic = Topics().spec(Kind.JOB, JOB)
    payload = json.dumps(seed_docs()[3]).encode()

    # Act
    resource = parse_for_topic(payload, topic, Kind.JOB, JOB)

    # Assert
    assert resource == seed_job()


def test_parse_for_topic_refuses_other_kind() -> None:
    """A document whose kind disagrees with the topic is refused, naming both kinds."""
    # Arrange
    topic = Topics().spec(Kind.MODEL, DS1)
    payload = yaml.safe_dump(seed_docs()[0]).encode()

    # Act
    with pytest.raises(SpecError) as info:
        parse_for_topic(payload, topic, Kind.MODEL, DS1)

    # Assert
    assert str(info.value) == (
        f'topic fl/models/{DS1}/spec (Dataset "{DS1}"): kind: the topic is for Model documents, got Dataset'
    )


def test_parse_for_topic_refuses_other_name() -> None:
    """A document whose name disagrees with the topic is refused, naming both names."""
    # Arrange
    topic = Topics().spec(Kind.DATASET, "edge9-data")
    payload = yaml.safe_dump(seed_docs()[0]).encode()

    # Act
    with pytest.raises(SpecError) as info:
        parse_for_topic(payload, topic, Kind.DATASET, "edge9-data")

    # Assert
    assert info.value.fields == ["metadata.name"]
    assert f"the topic is for 'edge9-data', the document is named '{DS1}'" in str(info.value)


def test_parse_for_topic_refuses_several_documents() -> None:
    """Several documents on one spec topic are refused: one document per topic."""
    # Arrange
    topic = Topics().spec(Kind.JOB, JOB)

    # Act
    with pytest.raises(SpecError) as info:
        parse_for_topic(seed_text().encode(), topic, Kind.JOB, JOB)

    # Assert
    assert str(info.value) == (
        f"topic {topic}: carries 4 documents; publish one document per spec topic (flctl create splits files)"
    )


def test_parse_for_topic_names_the_topic_in_field_errors() -> None:
    """A bad document on a topic is named by its topic, kind and name."""
    # Arrange
    topic = Topics().spec(Kind.DATASET, DS1)
    payload = mutated_seed(0, lambda d: d["spec"].__setitem__("format", "csv")).split("---")[0].encode()

    # Act
    with pytest.raises(SpecError) as info:
        parse_for_topic(payload, topic, Kind.DATASET, DS1)

    # Assert
    assert info.value.document == f'topic {topic} (Dataset "{DS1}")'
    assert info.value.fields == ["spec.format"]


# -- YAML numbers and the spec hash ------------------------------------------------------------


def test_yaml_numbers_as_parameter_values_become_strings() -> None:
    """Unquoted YAML numbers as parameter values are accepted and kept as strings."""
    # Arrange
    text = seed_text().replace('value: "32"', "value: 32").replace('value: "0.001"', "value: 0.001")
    text = text.replace('value: "3"', "value: 3")

    # Act
    job = parse_documents(text, SRC)[3]
    assert isinstance(job, FederatedLearningJob)

    # Assert
    assert job.spec.training_workers[0].effective().parameters == {
        "batch_size": "32",
        "learning_rate": "0.001",
        "epochs": "1",
    }
    assert job.spec.aggregation_worker.effective().parameters == {"exit_round": "3"}
    assert job == seed_job()


def test_spec_hash_equal_for_identical_specs() -> None:
    """Two parses of the same spec have the same spec_hash, whatever the metadata."""
    # Arrange
    first = seed_job()
    relabelled = parse_documents(mutated_seed(3, lambda d: d["metadata"].__setitem__("labels", {"a": "b"})), SRC)[3]
    assert isinstance(relabelled, FederatedLearningJob)

    # Act
    hashes = {first.spec_hash(), seed_job().spec_hash(), relabelled.spec_hash()}

    # Assert
    assert len(hashes) == 1
    assert len(first.spec_hash()) == 16


def test_spec_hash_changes_with_a_parameter() -> None:
    """Changing one parameter value changes the spec_hash."""
    # Arrange
    original = seed_job()
    changed = parse_documents(mutated_seed(3, set_param("training0", "epochs", "2")), SRC)[3]
    assert isinstance(changed, FederatedLearningJob)

    # Act
    before, after = original.spec_hash(), changed.spec_hash()

    # Assert
    assert before != after


def test_resources_are_immutable() -> None:
    """Parsed resources are frozen: a service cannot change a spec by accident."""
    # Arrange
    job = seed_job()
    unchanged = copy.deepcopy(job)

    # Act
    with pytest.raises(ValueError, match="frozen"):
        job.spec.aggregation_worker.node_name = "cloud1"  # type: ignore[misc]

    # Assert
    assert job == unchanged
