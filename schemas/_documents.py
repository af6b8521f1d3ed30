"""Turning YAML or JSON text into validated resources, with errors a user can act on.

Every error names the document (its source, its position in a multi-document file, and its kind and
name when those could be read) and the field, in the dotted path a Kubernetes user knows
(``spec.trainingWorkers[0].dataset.name``), and says what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from schemas._errors import Problem, SpecError, SpecTooLargeError
from schemas._parameters import parameter_name_problem, parameter_value_problem
from schemas._resources import (
    API_VERSION,
    Dataset,
    FederatedLearningJob,
    Model,
    Resource,
    WorkerBase,
)
from schemas._topics import Kind

_MODELS: dict[str, type[BaseModel]] = {
    "Dataset": Dataset,
    "Model": Model,
    "FederatedLearningJob": FederatedLearningJob,
}
# The largest spec document anyone reads (1 MiB): flctl before publishing, the controller before parsing,
# `flctl get` before showing. Real specs are a few kB; the broker's packet limit (4 MiB by default) is
# well above it, so an oversized spec still reaches the controller and gets a status saying why.
MAX_DOCUMENT_BYTES = 1 << 20
# Limits on the loaded data (added in test review). YAML aliases let a few hundred bytes stand for
# billions of nodes (`b: &b [*a, *a, ...]`): PyYAML shares them, but dumping the spec (`spec_hash`)
# expanded them: a 600-byte job kept the controller busy for about 12 s, one more level for minutes.
# Without aliases every node takes at least two bytes, so no honest document within
# MAX_DOCUMENT_BYTES reaches MAX_NODES. Deep nesting made PyYAML's composer raise RecursionError.
MAX_NODES = MAX_DOCUMENT_BYTES
MAX_DEPTH = 100


def describe_document(source: str, index: int, total: int, data: Any) -> str:
    """`job.yaml document 4/4 (FederatedLearningJob "surface-defect-detection")`."""
    where = f"{source} document {index + 1}/{total}" if total > 1 else source
    if isinstance(data, dict):
        kind = data.get("kind")
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(kind, str) and isinstance(name, str):
            return f'{where} ({kind} "{name}")'
        if isinstance(kind, str):
            return f"{where} ({kind})"
    return where


def load_yaml_documents(text: str | bytes, source: str) -> list[Any]:
    """Split multi-document YAML (JSON is YAML too) into plain data; empty documents are skipped."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise SpecTooLargeError(source, size=len(text), limit=MAX_DOCUMENT_BYTES, unit="bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(source, [Problem(None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from exc
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [Problem(None, f"invalid YAML{where}: {problem}")]) from exc
    except RecursionError as exc:
        raise SpecError(source, [Problem(None, f"nested more than {MAX_DEPTH} levels deep")]) from exc
    except (ValueError, OverflowError) as exc:
        # PyYAML's scanner turns a double-quoted escape such as "\U80010000" into chr(code) unchecked: a code
        # past U+10FFFF (or past a C int) surfaces as one of these instead of a YAMLError (found by the
        # property test of mutated seed files).
        raise SpecError(source, [Problem(None, f"invalid YAML: an escape names no Unicode character ({exc})")]) from exc
    if not docs:
        raise SpecError(source, [Problem(None, "no document found (empty input)")])
    _check_size(docs, source)
    return docs


def _check_size(docs: list[Any], source: str) -> None:
    """Refuse data that expands (through aliases) past MAX_NODES nodes or nests past MAX_DEPTH."""
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(d, 1) for d in docs]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise SpecTooLargeError(source, size=MAX_NODES + 1, limit=MAX_NODES, unit="YAML nodes")
        if depth > MAX_DEPTH:
            raise SpecError(source, [Problem(None, f"nested more than {MAX_DEPTH} levels deep")])
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_resource(data: Any, document: str) -> Resource:
    """Validate one document's data as a Sedna resource; raise SpecError naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError(
            document,
            [Problem(None, f"expected a mapping with apiVersion, kind, metadata and spec, got {type(data).__name__}")],
        )
    api = data.get("apiVersion")
    kind = data.get("kind")
    if api != API_VERSION:
        raise SpecError(document, [Problem("apiVersion", f"expected {API_VERSION!r}, got {api!r}")])
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise SpecError(document, [Problem("kind", f"expected one of {', '.join(_MODELS)}, got {kind!r}")])
    try:
        resource: Resource = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise SpecError(document, [_problem(err) for err in exc.errors()]) from exc
    problems = check_parameters(resource) if isinstance(resource, FederatedLearningJob) else []
    if problems:
        raise SpecError(document, problems)
    return resource


def parse_documents(text: str | bytes, source: str) -> list[Resource]:
    """Parse every document of a (multi-document) YAML text; the first bad document raises."""
    docs = load_yaml_documents(text, source)
    return [parse_resource(d, describe_document(source, i, len(docs), d)) for i, d in enumerate(docs)]


def parse_for_topic(payload: bytes, topic: str, kind: Kind, name: str) -> Resource:
    """Parse a spec published raw on ``<prefix>/<kind>/<name>/spec``: one document that matches the topic."""
    docs = load_yaml_documents(payload, f"topic {topic}")
    if len(docs) != 1:
        raise SpecError(
            f"topic {topic}",
            [
                Problem(
                    None,
                    f"carries {len(docs)} documents; publish one document per spec topic (flctl create splits files)",
                )
            ],
        )
    document = describe_document(f"topic {topic}", 0, 1, docs[0])
    resource = parse_resource(docs[0], document)
    if resource.kind != kind.kind:
        raise SpecError(document, [Problem("kind", f"the topic is for {kind.kind} documents, got {resource.kind}")])
    if resource.metadata.name != name:
        raise SpecError(
            document,
            [Problem("metadata.name", f"the topic is for {name!r}, the document is named {resource.metadata.name!r}")],
        )
    return resource


def check_parameters(job: FederatedLearningJob) -> list[Problem]:
    """Every parameter's name may be an environment variable of the script, its value is within its
    bound (`schemas.PARAMETER_BOUNDS`), and no name appears twice in one worker.

    Parameters come from ``workerSpec.parameters`` or, for a worker written as a pod template, from
    ``template.spec.containers[0].env`` (what `WorkerBase.effective()` reads). Until test review
    only the first form was checked, so a template's ``batch_size: "-1"`` reached the edge. The name
    rule (`schemas.parameter_name_problem`) is the one the node applies again before it starts a script.
    """
    problems: list[Problem] = []
    workers: list[tuple[str, WorkerBase]] = [("spec.aggregationWorker", job.spec.aggregation_worker)]
    workers += [(f"spec.trainingWorkers[{i}]", w) for i, w in enumerate(job.spec.training_workers)]
    for path, worker in workers:
        # (field path of the entry, name of its key field, key, value)
        entries: list[tuple[str, str, str, str]]
        if worker.worker_spec is not None:
            entries = [
                (f"{path}.workerSpec.parameters[{j}]", "key", p.key, p.value)
                for j, p in enumerate(worker.worker_spec.parameters)
            ]
        elif worker.template is not None and worker.template.spec.containers:
            entries = [
                (f"{path}.template.spec.containers[0].env[{j}]", "name", e.name, e.value or "")
                for j, e in enumerate(worker.template.spec.containers[0].env)
            ]
        else:
            continue
        seen: set[str] = set()
        for field, key_field, key, value in entries:
            if key in seen:
                problems.append(Problem(f"{field}.{key_field}", f"parameter {key!r} is given twice"))
            seen.add(key)
            reason = parameter_name_problem(key)
            if reason:
                problems.append(Problem(f"{field}.{key_field}", reason))
                continue
            reason = parameter_value_problem(key, value)
            if reason:
                shown = value if len(value) <= 40 else value[:40] + "..."
                problems.append(Problem(f"{field}.value", f"{key}={shown!r}: {reason}"))
    return problems


def check_references(
    job: FederatedLearningJob, datasets: Mapping[str, Dataset], models: Mapping[str, Model]
) -> list[Problem]:
    """Cross-reference checks: every named Dataset and Model exists and sits where the job says."""
    problems: list[Problem] = []
    model_ref = job.spec.aggregation_worker.model.name
    if model_ref not in models:
        problems.append(_missing("spec.aggregationWorker.model.name", "Model", model_ref, models))
    if job.spec.pretrained_model and job.spec.pretrained_model.name not in models:
        problems.append(_missing("spec.pretrainedModel.name", "Model", job.spec.pretrained_model.name, models))
    for i, worker in enumerate(job.spec.training_workers):
        ref = worker.dataset.name
        dataset = datasets.get(ref)
        field = f"spec.trainingWorkers[{i}].dataset.name"
        if dataset is None:
            problems.append(_missing(field, "Dataset", ref, datasets))
        elif dataset.spec.node_name != worker.effective_node():
            problems.append(
                Problem(
                    field,
                    f'Dataset "{ref}" lives on node {dataset.spec.node_name!r} but this worker runs on '
                    f"node {worker.effective_node()!r}; data never leaves its node",
                )
            )
    return problems


def closest_name(name: str, candidates: Mapping[str, object] | list[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _missing(field: str, kind: str, name: str, existing: Mapping[str, object]) -> Problem:
    hint = closest_name(name, existing)
    if hint:
        return Problem(field, f'{kind} "{name}" not found; did you mean "{hint}"?')
    known = ", ".join(f'"{n}"' for n in sorted(existing)) or "none"
    return Problem(field, f'{kind} "{name}" not found (existing {kind}s: {known})')


def _problem(err: Any) -> Problem:
    loc = err.get("loc", ())
    field = ""
    for part in loc:
        if isinstance(part, int):
            field += f"[{part}]"
        elif str(part).startswith(("function-after", "function-before", "tagged-union")):
            continue
        else:
            field += f".{part}" if field else str(part)
    message = str(err.get("msg", "invalid"))
    if err.get("type") == "missing":
        message = "required field is missing"
    elif err.get("type") == "extra_forbidden":
        message = "unknown field (check its spelling and case)"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if "input" in err and err.get("type") not in {"missing", "extra_forbidden"} and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return Problem(field or None, message)
