"""Property-based tests of job parameters (issue 8): names and numbers a hostile or careless spec may carry.

(a) No accepted spec sets a loader or interpreter variable, checked end to end: the spec is parsed,
    each worker made effective, its parameters passed through `runtime.script_parameters` and
    `runtime.script_environment` as both node services do, and the resulting environment's loader,
    interpreter and node variables equal those of the same node's environment without the job's
    parameters. The dangerous names below are this test's own list, not the rule's, so a name the rule
    forgets shows up here as a failure.
(b) No number beyond its bound is accepted, and every well-formed number within it is.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import script_environment, script_parameters
from schemas import FederatedLearningJob, SpecError, WorkerEnv, load_yaml_documents, parse_resource

SEED = Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB_DOC: dict[str, Any] = load_yaml_documents(SEED.read_text(), str(SEED))[3]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- this test's own idea of what must never come from a job ---------------------------------------------

LOADER_AND_INTERPRETER = {
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "LD_DEBUG", "DYLD_INSERT_LIBRARIES",
    "DYLD_LIBRARY_PATH", "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "MALLOC_CHECK_",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONBREAKPOINT", "PYTHONWARNINGS",
    "PYTHONUSERBASE", "PYTHONSAFEPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPLATLIBDIR",
    "PATH", "HOME", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "IFS", "PS4", "CDPATH", "ZDOTDIR",
    "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS", "OPENSSL_CONF", "CUDA_INJECTION64_PATH", "XLA_FLAGS",
}  # fmt: skip
PREFIXES = ("LD_", "DYLD_", "PYTHON", "BASH_FUNC_", "FL_")
NODE_VARIABLES = {
    WorkerEnv.JOB_NAME: "job",
    WorkerEnv.NAMESPACE: "default",
    WorkerEnv.WORKER_NAME: "edge1",
    WorkerEnv.NODE_NAME: "edge1",
    WorkerEnv.MODEL_URL: "/root/model",
    WorkerEnv.MODEL_NAME: "m",
    WorkerEnv.MODEL_FORMAT: "ckpt",
    WorkerEnv.PARTICIPANTS_COUNT: "2",
    WorkerEnv.TRAIN_DATASET_URL: "/root/data/1.txt",
    WorkerEnv.DATASET_NAME: "d1",
    WorkerEnv.NODE_ROOT: "/root",
}
# A node's own environment, as a service might have it (its PATH, a library path for CUDA, ...).
BASE = {
    "PATH": "/usr/local/bin:/usr/bin",
    "HOME": "/home/fl",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
    "PYTHONPATH": "/opt/site",
    "LANG": "C.UTF-8",
    "FL_MQTT_PASSWORD": "secret",
}


def dangerous(name: str) -> bool:
    """A variable that changes how a process is loaded or interpreted, or one the node sets."""
    upper = name.upper()
    return upper in LOADER_AND_INTERPRETER or upper.startswith(PREFIXES) or name in NODE_VARIABLES


def guarded(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if dangerous(k)}


# -- strategies --------------------------------------------------------------------------------------------


@st.composite
def case_variant(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(name, flips, strict=True))


identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,24}", fullmatch=True)
# Loader and interpreter names in any case; the node's Sedna names as written (their lowercase spellings,
# such as participants_count, are Sedna's own parameters). FL_* is a prefix below, in any case.
dangerous_names = st.one_of(
    st.sampled_from(sorted(LOADER_AND_INTERPRETER)).flatmap(case_variant),
    st.sampled_from(sorted(NODE_VARIABLES)),
)
prefixed_names = st.tuples(st.sampled_from(PREFIXES), st.from_regex(r"[A-Za-z0-9_]{0,12}", fullmatch=True)).map("".join)
sedna_names = st.sampled_from(
    ["learning_rate", "epochs", "batch_size", "aggregation_algorithm", "exit_round", "BATCH_SIZE", "my_knob"]
)
names = st.one_of(
    identifiers,
    dangerous_names,
    prefixed_names.flatmap(case_variant),
    sedna_names,
    st.text(min_size=1, max_size=12),
)
values = st.one_of(st.sampled_from(["1", "32", "0.001", "/data/evil.so", ""]), st.text(max_size=16))


def job_with(training: list[tuple[str, str]], aggregation: list[tuple[str, str]], *, template: bool) -> dict[str, Any]:
    """The seed job with these parameters on its first training worker (either way) and its aggregation worker."""
    doc = copy.deepcopy(JOB_DOC)
    agg = doc["spec"]["aggregationWorker"]["workerSpec"]
    agg["parameters"] = [{"key": k, "value": v} for k, v in aggregation]
    worker = doc["spec"]["trainingWorkers"][0]
    if template:
        spec = worker.pop("workerSpec")
        env = [{"name": k, "value": v} for k, v in training]
        script = f"{spec['scriptDir']}/{spec['scriptBootFile']}"
        worker["template"] = {
            "spec": {
                "nodeName": worker.pop("nodeName"),
                "containers": [{"name": "train", "command": ["python", script], "env": env}],
            }
        }
    else:
        worker["workerSpec"]["parameters"] = [{"key": k, "value": v} for k, v in training]
    return doc


# -- (a) names ---------------------------------------------------------------------------------------------


@SETTINGS
@given(
    training=st.lists(st.tuples(names, values), max_size=5),
    aggregation=st.lists(st.tuples(names, values), max_size=3),
    template=st.booleans(),
)
def test_no_accepted_spec_sets_a_loader_or_interpreter_variable(
    training: list[tuple[str, str]], aggregation: list[tuple[str, str]], template: bool
) -> None:
    """Parse -> effective worker -> script_parameters -> script_environment: guarded variables stay the node's."""
    try:
        job = parse_resource(job_with(training, aggregation, template=template), "fuzz")
    except SpecError as exc:
        assert exc.problems and all(p.field for p in exc.problems), exc
        return
    assert isinstance(job, FederatedLearningJob)
    baseline = guarded(script_environment(NODE_VARIABLES, fd=5, base=BASE))
    for worker in [job.spec.aggregation_worker, *job.spec.training_workers]:
        parameters = worker.effective().parameters
        assert not [name for name in parameters if dangerous(name)]
        # An accepted spec is accepted by the node too (the same rule), in the callers' order.
        accepted = script_parameters(parameters, NODE_VARIABLES)
        env = script_environment({**accepted, **NODE_VARIABLES}, fd=5, base=BASE)
        assert guarded(env) == baseline
        assert {k: env[k] for k in parameters} == parameters


@SETTINGS
@given(name=st.one_of(dangerous_names, prefixed_names.flatmap(case_variant)), template=st.booleans())
def test_every_dangerous_name_is_refused_naming_its_field(name: str, template: bool) -> None:
    """Each dangerous name (any case, any suffix after a dangerous prefix) is refused at its field path."""
    job = job_with([("epochs", "1"), (name, "/data/x")], [], template=template)

    try:
        parse_resource(job, "fuzz")
    except SpecError as exc:
        field = (
            "spec.trainingWorkers[0].template.spec.containers[0].env[1].name"
            if template
            else "spec.trainingWorkers[0].workerSpec.parameters[1].key"
        )
        assert field in exc.fields, exc
        assert re.search(re.escape(repr(name)) + " is (refused|not an environment variable name)", str(exc)), exc
        return
    raise AssertionError(f"{name!r} was accepted")


# -- (b) numbers -------------------------------------------------------------------------------------------

# this test's own copy of the documented bounds: (whole, low, high, low included, high included)
BOUNDS: dict[str, tuple[bool, float, float, bool, bool]] = {
    "exit_round": (True, 1, 10_000, True, True),
    "participants_count": (True, 1, 1000, True, True),
    "min_participants": (True, 1, 1000, True, True),
    "round_deadline": (False, 0, 604_800, True, True),
    "batch_size": (True, 1, 65_536, True, True),
    "epochs": (True, 1, 10_000, True, True),
    "learning_rate": (False, 0, 10, False, True),
    "validation_split": (False, 0, 1, True, False),
    "mu": (False, 0, 1000, True, True),
}


def within(key: str, text: str) -> bool:
    whole, low, high, low_in, high_in = BOUNDS[key]
    try:
        number = int(text) if whole else float(text)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    return (low <= number if low_in else low < number) and (number <= high if high_in else number < high)


numbers = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.integers(min_value=-5, max_value=70_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1, max_value=700_000).map(repr),
    st.sampled_from(["1e400", "-0", "0.0", "1e-400", "10.000001", "0.9999999", "1.0", "nan", "inf", " 7 ", "1_000"]),
)


@SETTINGS
@given(key=st.sampled_from(sorted(BOUNDS)), upper=st.booleans(), value=numbers, template=st.booleans())
def test_no_number_beyond_its_bound_is_accepted(key: str, upper: bool, value: str, template: bool) -> None:
    """A known numeric parameter (as Sedna's scripts read it: lowercase or UPPERCASE) is accepted iff in bounds."""
    name = key.upper() if upper and key.upper() not in NODE_VARIABLES else key  # PARTICIPANTS_COUNT is the node's
    job = job_with([(name, value)], [], template=template)

    try:
        parse_resource(job, "fuzz")
    except SpecError as exc:
        assert not within(key, value), (name, value, str(exc))
        suffix = "env[0].value" if template else "workerSpec.parameters[0].value"
        assert any(f.endswith(suffix) for f in exc.fields), exc
        assert f"{name}=" in str(exc) and "expected a" in str(exc)
        return
    assert within(key, value), (name, value)
