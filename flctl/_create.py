"""`flctl create -f FILE...`: validate every document locally, then publish each, retained, on its spec topic.

Like ``kubectl create``: nothing is published when any document is invalid; a name that already holds a
different spec is refused (AlreadyExists) while the other documents go ahead; re-creating an identical
document is reported as ``unchanged``. Datasets and Models go first so a job's references exist when the
controller reads it.

``--dry-run`` (kubectl's ``--dry-run=client``) stops after the validation: it never connects, so it cannot
say whether a name already exists or a reference resolves on the broker; it prints what would be created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flctl._context import Context
from flctl._errors import AlreadyExistsError, InputError
from flctl._kinds import for_kind
from flctl.printers import CREATED_AT, CREATED_BY, Retained, action_line, collect_resources, timestamp
from schemas import (
    MAX_DOCUMENT_BYTES,
    Dataset,
    FederatedLearningJob,
    Kind,
    Model,
    Resource,
    SchemaError,
    SpecError,
    Topics,
    check_references,
    load_yaml_documents,
    parse_documents,
    parse_for_topic,
)

STDIN = "-"
_ORDER = {Kind.DATASET: 0, Kind.MODEL: 1, Kind.JOB: 2}
_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    """One validated document, ready to publish: where it came from and its own YAML text."""

    label: str
    kind: Kind
    name: str
    resource: Resource
    payload: bytes


# -- reading and validating ------------------------------------------------------------------------


def _sources(paths: Sequence[str]) -> list[str]:
    """Expand directories (their *.yaml, *.yml, *.json files, sorted) like kubectl -f DIR."""
    out: list[str] = []
    for path in paths:
        if path != STDIN and os.path.isdir(path):
            found = sorted(str(p) for p in Path(path).iterdir() if p.suffix in _SUFFIXES and p.is_file())
            if not found:
                raise InputError(f'no .yaml, .yml or .json file in directory "{path}"')
            out += found
        else:
            out.append(path)
    if out.count(STDIN) > 1:
        raise InputError('"-f -" (standard input) can be given only once')
    return out


def _read(path: str, ctx: Context) -> bytes:
    if path == STDIN:
        raw = getattr(ctx.stdin, "buffer", None)  # bytes when stdin is a real stream: encoding errors stay ours
        data = raw.read() if raw is not None else ctx.stdin.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f'the path "{path}" does not exist') from None
    except OSError as exc:
        raise InputError(f'cannot read "{path}": {exc.strerror or exc}') from exc


def _yaml_error_document(text: bytes) -> int | None:
    """1-based number of the document holding a YAML syntax error (documents before it load fine)."""
    loaded = 0
    try:
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                loaded += 1
    except yaml.YAMLError:
        return loaded + 1
    return None


def format_spec_error(exc: SpecError, text: bytes) -> str:
    """`FILE document 2/4 (Model "m") is invalid:` then one `  field: what was expected` line per problem."""
    document = exc.document
    if isinstance(exc.__cause__, yaml.YAMLError):
        number = _yaml_error_document(text)
        if number is not None:
            document = f"{document} document {number}"
    lines = [f"{document} is invalid:"]
    lines += [f"  {problem}" for problem in exc.problems]
    return "\n".join(lines)


def _dump(data: Any) -> bytes:
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text.encode("utf-8")


def _load_file(source: str, text: bytes) -> list[Document]:
    resources = parse_documents(text, source)
    datas = load_yaml_documents(text, source)
    docs = []
    for index, (resource, data) in enumerate(zip(resources, datas, strict=True)):
        kind = Kind.from_kind(resource.kind)
        label = f"{source} document {index + 1}/{len(resources)}" if len(resources) > 1 else source
        docs.append(Document(label, kind, resource.metadata.name, resource, _dump(data)))
    return docs


def load_documents(paths: Sequence[str], ctx: Context) -> list[Document]:
    """Every document of every file, validated; InputError listing every bad file otherwise."""
    problems: list[str] = []
    docs: list[Document] = []
    for path in _sources(paths):
        source = "<stdin>" if path == STDIN else path
        try:
            text = _read(path, ctx)
        except InputError as exc:
            problems.append(str(exc))
            continue
        try:
            docs += _load_file(source, text)
        except SpecError as exc:
            problems.append(format_spec_error(exc, text))
    seen: dict[tuple[Kind, str], Document] = {}
    for doc in docs:
        # What is published is the document re-dumped: expanded aliases can make it larger than its source.
        if len(doc.payload) > MAX_DOCUMENT_BYTES:
            problems.append(
                f'{doc.label}: {doc.kind.kind} "{doc.name}" is {len(doc.payload)} bytes as published, over the '
                f"{MAX_DOCUMENT_BYTES}-byte limit of a spec document"
            )
        first = seen.setdefault((doc.kind, doc.name), doc)
        if first is not doc:
            problems.append(f'{doc.label}: {doc.kind.kind} "{doc.name}" is also defined in {first.label}')
    if problems:
        raise InputError("\n".join(problems) + "\nnothing was published")
    return sorted(docs, key=lambda d: _ORDER[d.kind])


# -- publishing ------------------------------------------------------------------------------------


def _same(existing: bytes, topic: str, doc: Document) -> bool:
    try:
        current = parse_for_topic(existing, topic, doc.kind, doc.name)
    except SchemaError:
        return False
    return current.model_dump(mode="json", by_alias=True) == doc.resource.model_dump(mode="json", by_alias=True)


def _known_resources(
    topics: Topics, docs: Sequence[Document], retained: Mapping[str, Retained]
) -> tuple[dict[str, Dataset], dict[str, Model]]:
    """Datasets and Models a job may name: those retained on the broker, overlaid with this input's."""
    datasets: dict[str, Dataset] = {}
    models: dict[str, Model] = {}
    for view in collect_resources(topics, Kind.DATASET, retained):
        if isinstance(view.spec.resource, Dataset):
            datasets[view.name] = view.spec.resource
    for view in collect_resources(topics, Kind.MODEL, retained):
        if isinstance(view.spec.resource, Model):
            models[view.name] = view.spec.resource
    for doc in docs:
        if isinstance(doc.resource, Dataset):
            datasets[doc.name] = doc.resource
        elif isinstance(doc.resource, Model):
            models[doc.name] = doc.resource
    return datasets, models


def _warn_references(ctx: Context, doc: Document, known: tuple[dict[str, Dataset], dict[str, Model]]) -> None:
    """Warn when a job names Datasets or Models that exist neither in the input nor on the broker.

    Only a warning: documents may be published separately. The controller waits a few seconds for late
    ones before it fails the job naming the missing resource, and starts the job when it is created later.
    """
    if not isinstance(doc.resource, FederatedLearningJob):
        return
    where = f"{for_kind(doc.kind).qualified}/{doc.name}"
    for problem in check_references(doc.resource, *known):
        ctx.warn(f"{where}: {problem} (the job waits for it: Failed after a few seconds, started once it exists)")


def _check_packet_limit(docs: Sequence[Document], max_payload: int) -> None:
    """Refuse, before anything is published, documents the broker would refuse: it disconnects a client that
    sends a packet over its limit (mosquitto_pub says "The connection was lost"). Only a broker configured
    below MAX_DOCUMENT_BYTES can get here."""
    too_big = [
        f'{d.label}: {d.kind.kind} "{d.name}" is {len(d.payload)} bytes, over the {max_payload}-byte payload '
        "limit of this broker connection (its max_packet_size, less room for the topic and header)"
        for d in docs
        if len(d.payload) > max_payload
    ]
    if too_big:
        raise InputError("\n".join(too_big) + "\nnothing was published")


def create(ctx: Context, paths: Sequence[str], *, dry_run: bool = False) -> int:
    docs = load_documents(paths, ctx)
    if dry_run:
        for doc in docs:
            ctx.say(action_line(for_kind(doc.kind).qualified, doc.name, "created (dry run)"))
        return 0
    failures = 0
    with ctx.client() as client:
        topics = client.topics
        spec_topics = [topics.spec(d.kind, d.name) for d in docs]
        filters = list(spec_topics)
        if any(d.kind is Kind.JOB for d in docs):
            filters += [topics.all_specs()]
        _check_packet_limit(docs, client.max_payload)
        retained = client.snapshot(filters)
        known = _known_resources(topics, docs, retained)
        for doc, topic in zip(docs, spec_topics, strict=True):
            rtype = for_kind(doc.kind)
            existing = retained.get(topic)
            if existing is not None:
                if _same(existing.payload, topic, doc):
                    ctx.say(action_line(rtype.qualified, doc.name, "unchanged"))
                else:
                    ctx.fail(AlreadyExistsError(rtype.plural, doc.name))
                    failures += 1
                continue
            _warn_references(ctx, doc, known)
            stamp = {CREATED_AT: timestamp(ctx.clock()), CREATED_BY: ctx.options.client_id}
            if ctx.publish_one(client, topic, doc.payload, stamp):
                ctx.say(action_line(rtype.qualified, doc.name, "created"))
            else:
                failures += 1
    return 1 if failures else 0
