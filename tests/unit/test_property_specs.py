"""Property-based tests of the spec parser and of the controller fed random specs (issue 4, "Bad input").

Random YAML-ish text, random JSON values and mutations of the example documents (a field deleted,
duplicated or retyped, a scalar changed, the text truncated or sprinkled with random bytes) either
parse into valid resources or raise `SpecError` naming the document: never another exception. A
controller with a running job (rounds in progress) that receives such payloads on random spec topics
never raises and the running job keeps its state.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloud_aggregator.engine import Controller, JobSettings, Stage
from cloud_aggregator.testing import MemoryPort, make_transfer
from schemas import (
    Dataset,
    FederatedLearningJob,
    Kind,
    Model,
    NodeState,
    NodeStatus,
    Phase,
    SpecError,
    Topics,
    WorkerFrame,
    check_parameters,
    load_yaml_documents,
    parse_documents,
    parse_for_topic,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection"
SEEDS = [EXAMPLES / "surface-defect-detection.yaml", EXAMPLES / "seed-as-published.yaml"]
SEED_TEXTS = [p.read_text() for p in SEEDS]
SEED_DOCS: list[dict[str, Any]] = [d for p in SEEDS for d in load_yaml_documents(p.read_text(), str(p))]
KINDS = {"Dataset": Kind.DATASET, "Model": Kind.MODEL, "FederatedLearningJob": Kind.JOB}
TOPICS = Topics()
JOB = "surface-defect-detection"
SOURCE = "fuzz.yaml"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = sorted({d["metadata"]["name"] for d in SEED_DOCS} | {"other-job", "x", "edge1"})

# -- strategies ------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "-1", "0", "1e400", "nan", "tensorflow", "edge1", "/code", "..", "sedna.io/v1alpha1"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
yamlish = st.lists(
    st.sampled_from([*"abcdekmnpstvxyz0123456789 \n\t:-[]{}&*!|>'\"%@`#,?.=~<\\/", "---\n", "...", "&a ", "*a"]),
    max_size=150,
).map("".join)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `node` (dict keys and list indices)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append((*prefix, i))
            out += _paths(value, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated_document(draw: st.DrawFn) -> Any:
    """One seed document with one structural mutation applied."""
    doc = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    parent, last = _parent(doc, path), path[-1]
    op = draw(st.sampled_from(["delete", "duplicate", "retype", "scalar", "rename"]))
    if op == "delete":
        del parent[last]
    elif op == "duplicate":
        if isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
        else:
            parent[draw(st.sampled_from(["extra", str(last).upper(), f"{last}_"]))] = copy.deepcopy(parent[last])
    elif op == "retype":
        parent[last] = draw(json_values)
    elif op == "scalar":
        parent[last] = draw(scalars)
    elif isinstance(parent, dict):  # rename the key
        parent[draw(st.text(max_size=10))] = parent.pop(last)
    return doc


def _dump(doc: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, sort_keys=False)


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    """A seed file, or a dumped (mutated) document, with text-level damage."""
    if draw(st.booleans()):
        text = draw(st.sampled_from(SEED_TEXTS)).encode()
    else:
        text = _dump(draw(mutated_document()), draw(st.booleans())).encode()
    op = draw(st.sampled_from(["none", "truncate", "insert", "flip", "drop-line", "dup-line"]))
    if op == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif op == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    elif op == "flip" and text:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + bytes([text[at] ^ draw(st.integers(1, 255))]) + text[at + 1 :]
    elif op in ("drop-line", "dup-line"):
        lines = text.splitlines(keepends=True)
        if lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [] if op == "drop-line" else [lines[i], lines[i]]
        text = b"".join(lines)
    return text


any_payload = st.one_of(
    mutated_text(),
    mutated_document().map(lambda d: _dump(d, False).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    yamlish.map(str.encode),
    st.binary(max_size=64),
)

# -- checks ----------------------------------------------------------------------------------------


def assert_valid(resource: Any) -> None:
    """A parsed resource is one of the three kinds, survives a round trip and (a job) has sane parameters."""
    assert isinstance(resource, Dataset | Model | FederatedLearningJob)
    again = type(resource).model_validate(resource.model_dump(by_alias=True))
    assert again == resource
    if isinstance(resource, FederatedLearningJob):
        assert check_parameters(resource) == []
        assert len(resource.spec_hash()) == 16


def check_parse_documents(payload: bytes | str) -> None:
    try:
        resources = parse_documents(payload, SOURCE)
    except SpecError as exc:
        assert exc.document.startswith(SOURCE), exc.document
        assert str(exc).startswith(exc.document + ": ")
        assert exc.problems and all(p.message for p in exc.problems)
        return
    assert resources
    for resource in resources:
        assert_valid(resource)


def check_parse_for_topic(payload: bytes, kind: Kind, name: str) -> None:
    topic = TOPICS.spec(kind, name)
    try:
        resource = parse_for_topic(payload, topic, kind, name)
    except SpecError as exc:
        assert exc.document.startswith(f"topic {topic}"), exc.document
        assert str(exc).startswith(exc.document + ": ")
        assert exc.problems
        return
    assert_valid(resource)
    assert resource.kind == kind.kind and resource.metadata.name == name


# -- parser properties -----------------------------------------------------------------------------


def test_the_seed_documents_parse() -> None:
    """The generators start from documents that are valid (so mutations are near misses, not noise)."""
    for path in SEEDS:
        assert len(parse_documents(path.read_text(), str(path))) == 4


@SETTINGS
@given(yamlish)
def test_random_yamlish_text_parses_or_raises_spec_error(text: str) -> None:
    check_parse_documents(text)
    check_parse_documents(text.encode())


@SETTINGS
@given(json_values)
def test_random_json_values_parse_or_raise_spec_error(value: Any) -> None:
    check_parse_documents(json.dumps(value))
    check_parse_for_topic(json.dumps(value).encode(), Kind.JOB, JOB)


@SETTINGS
@given(mutated_text())
# Found by this test: PyYAML's chr() on an escape past U+10FFFF (ValueError) or past a C int (OverflowError).
@example(payload=b'kind: Model\nspec:\n  format: "\\U10010000"\n')
@example(payload=b'kind: Model\nspec:\n  format: "\\U80010000"\n')
def test_mutated_seed_files_parse_or_raise_spec_error(payload: bytes) -> None:
    check_parse_documents(payload)


@SETTINGS
@given(mutated_document(), st.booleans(), st.sampled_from(list(Kind)), st.sampled_from(NAMES))
def test_mutated_documents_on_a_spec_topic_parse_or_raise_spec_error(
    doc: Any, as_json: bool, kind: Kind, name: str
) -> None:
    check_parse_for_topic(_dump(doc, as_json).encode(), kind, name)


@SETTINGS
@given(mutated_document())
def test_a_mutated_document_on_its_own_topic(doc: Any) -> None:
    """On the topic the seed document belongs to, most mutations are field errors that name the field."""
    kind = KINDS.get(doc.get("kind")) if isinstance(doc.get("kind"), str) else None
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if kind is None or not isinstance(name, str) or not name:
        return
    try:
        topic = TOPICS.spec(kind, name)
    except Exception:
        return
    try:
        parse_for_topic(yaml.safe_dump(doc).encode(), topic, kind, name)
    except SpecError as exc:
        assert exc.document.startswith(f"topic {topic}")
        assert kind.kind in exc.document  # kind and name were readable: the document says which it is


# -- the controller with a running job -------------------------------------------------------------


def _snapshot(controller: Controller, port: MemoryPort) -> dict[str, Any]:
    engine = controller.job(JOB)
    assert engine is not None
    status = port.job_status(JOB)
    return {
        "engine": id(engine),
        "uid": engine.facts.uid,
        "stage": engine.stage,
        "round": engine.round,
        "participants": list(engine.facts.participants),
        "spec_hash": engine.facts.spec.spec_hash(),
        "status_hash": status.spec_hash,
        "phase": status.phase,
        "current_round": status.current_round,
        "plan": port.plans.get(JOB),
        "globals": [(g.job, g.round) for g in port.published_globals],
        "spool": {r: list(v) for r, v in port.disk.spool.get(JOB, {}).items()},
    }


def running_controller() -> tuple[Controller, MemoryPort, dict[Kind, dict[str, bytes]]]:
    """A controller whose job (the fixed example) is in round 2 of 3 with edge1's update of round 2 in."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=JobSettings(chunk_size=4096), new_uid=lambda: "a" * 32)
    for edge in ("edge1", "edge2"):  # their retained presence: the job's nodes are known
        presence = NodeStatus(node=edge, role="edge", state=NodeState.ONLINE)
        controller.on_node_status(edge, presence.to_json(), 0.0)
    controller.ready(0.0)
    originals: dict[Kind, dict[str, bytes]] = {k: {} for k in Kind}
    for doc in load_yaml_documents(SEED_TEXTS[0], "seed"):
        kind, name = KINDS[doc["kind"]], doc["metadata"]["name"]
        payload = yaml.safe_dump(doc, sort_keys=False).encode()
        originals[kind][name] = payload
        controller.on_spec(kind, name, TOPICS.spec(kind, name), payload, 0.0)
    engine = controller.job(JOB)
    assert engine is not None
    uid = engine.facts.uid
    controller.on_script_frame(JOB, uid, WorkerFrame(type="config", exit_round=3, participants_count=2), 0.1)
    arrays = [np.full((2, 2), 1.0, np.float32)]

    def deliver(kind: str, node: str, round_: int, value: float) -> None:
        manifest, blob = make_transfer(
            [a + value for a in arrays],
            kind=kind,
            job=JOB,
            uid=uid,
            round_=round_,
            sender=node,
            num_samples=5,  # type: ignore[arg-type]
        )
        if kind == "init":
            engine.on_init_transfer(node, round_, manifest, blob)
        else:
            engine.on_update(node, round_, manifest, blob)

    deliver("init", "edge1", 0, 0.0)
    deliver("update", "edge1", 1, 1.0)
    deliver("update", "edge2", 1, 2.0)
    deliver("update", "edge1", 2, 3.0)
    assert engine.stage is Stage.TRAINING and engine.round == 2
    assert port.job_status(JOB).phase is Phase.RUNNING
    return controller, port, originals


spec_messages = st.lists(
    st.tuples(st.sampled_from(list(Kind)), st.sampled_from(NAMES), any_payload),
    min_size=1,
    max_size=6,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_messages)
def test_random_specs_never_crash_the_controller_nor_disturb_a_running_job(
    messages: list[tuple[Kind, str, bytes]],
) -> None:
    controller, port, originals = running_controller()
    before = _snapshot(controller, port)
    for kind, name, payload in messages:
        if kind is Kind.JOB and name == JOB and not payload:
            continue  # an empty payload on the job's own topic deletes it: that is meant to stop it
        controller.on_spec(kind, name, TOPICS.spec(kind, name), payload, 1.0)
        controller.tick(2.0)

    assert _snapshot(controller, port) == before
    # A rejected change is answered with the running spec, byte for byte, on the job's own topic.
    for kind, name, payload in port.restored_specs:
        assert (kind, name, payload) == (Kind.JOB, JOB, originals[Kind.JOB][JOB])
    # The running job still takes the missing update and closes its round.
    engine = controller.job(JOB)
    assert engine is not None
    manifest, blob = make_transfer(
        [np.full((2, 2), 9.0, np.float32)],
        kind="update",
        job=JOB,
        uid=engine.facts.uid,
        round_=2,
        sender="edge2",
        num_samples=5,
    )
    engine.on_update("edge2", 2, manifest, blob)
    assert engine.round == 3 and port.published_globals[-1].round == 2
