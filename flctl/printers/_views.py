"""What the retained topics say about each resource, decoded once for the printers (pure, no I/O).

A resource exists when its spec is retained on ``<prefix>/<kind>/<name>/spec`` (the spec topic is the
API object, as in Kubernetes); a status without a spec is a leftover the controller has not cleared
yet and is not shown. Payloads that do not decode are kept with the reason, never dropped silently.
Specs are read through `schemas`' YAML limits (size, aliases, depth) like everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from schemas import (
    Channel,
    FederatedLearningJob,
    HeldModel,
    JobStatus,
    Kind,
    NodeStatus,
    Phase,
    Resource,
    ResourceStatus,
    SchemaError,
    SpecError,
    TopicError,
    Topics,
    load_yaml_documents,
    parse_for_topic,
)

#: MQTT v5 user property flctl puts on every spec it publishes: when it was created (RFC 3339 UTC).
CREATED_AT = "created-at"
#: ... and by whom (the MQTT client id), for `describe`.
CREATED_BY = "created-by"

NO_STATUS_MESSAGE = "no status from the controller yet"

_Status = TypeVar("_Status", JobStatus, ResourceStatus)
_View = TypeVar("_View")


@dataclass(frozen=True)
class Retained:
    """The newest message seen on one topic (a retained one, or a live one that replaced it)."""

    payload: bytes
    user_properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecView:
    """A retained spec: its decoded data, the validated resource, or why it is not valid."""

    kind: Kind
    name: str
    data: Any
    resource: Resource | None
    error: str | None
    created: datetime | None
    created_by: str | None


@dataclass(frozen=True)
class _ObjectView(Generic[_Status]):
    """A resource with a spec (a job, a Dataset, a Model) and the controller's status of it, if any."""

    name: str
    spec: SpecView
    status: _Status | None
    status_error: str | None = None

    @property
    def message(self) -> str:
        """The controller's message, or why its status cannot be read, or that there is none yet."""
        if self.status is not None:
            return self.status.message
        if self.status_error is not None:
            return f"unreadable status: {self.status_error}"
        return NO_STATUS_MESSAGE


@dataclass(frozen=True)
class JobView(_ObjectView[JobStatus]):
    """A FederatedLearningJob with its JobStatus."""

    @property
    def job(self) -> FederatedLearningJob | None:
        res = self.spec.resource
        return res if isinstance(res, FederatedLearningJob) else None

    @property
    def phase(self) -> Phase:
        return self.status.phase if self.status is not None else Phase.PENDING

    @property
    def participants(self) -> int | None:
        """Training workers named by the spec (or, when the spec is unreadable, by the status)."""
        if self.job is not None:
            return len(self.job.spec.training_workers)
        if self.status is not None:
            return sum(1 for w in self.status.workers if w.role == "training")
        return None

    @property
    def started(self) -> datetime | None:
        """What AGE counts from: the controller's startTime, else when the spec was created."""
        if self.status is not None and self.status.start_time is not None:
            return self.status.start_time
        return self.spec.created


@dataclass(frozen=True)
class ResourceView(_ObjectView[ResourceStatus]):
    """A Dataset or a Model with the controller's verdict on it (a Model: with the versions nodes hold of it)."""

    # (node, what it holds under the Model's url), from the nodes' statuses; filled by `collect_models`.
    holders: tuple[tuple[str, HeldModel], ...] = ()

    @property
    def valid(self) -> str:
        if self.status is None:
            return "Unknown"
        return "True" if self.status.valid else "False"


@dataclass(frozen=True)
class NodeView:
    name: str
    status: NodeStatus | None
    error: str | None = None


# -- decoding --------------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def decode_spec(topic: str, kind: Kind, name: str, retained: Retained) -> SpecView:
    """Decode a retained spec the way the controller does (`schemas.parse_for_topic`).

    The data goes through the same limits as every other document (`schemas.load_yaml_documents`):
    a payload over the size, alias or depth limits, or not YAML at all, has no data and says why in
    `error`, so no printer expands an alias bomb.
    """
    data: Any = None
    resource: Resource | None = None
    error: str | None = None
    try:
        docs = load_yaml_documents(retained.payload, f"topic {topic}")
    except SpecError as exc:
        error = str(exc)
    else:
        data = docs[0] if len(docs) == 1 else None
        try:
            resource = parse_for_topic(retained.payload, topic, kind, name)
        except SchemaError as exc:
            error = str(exc)
    created = _parse_time(retained.user_properties.get(CREATED_AT))
    if created is None and isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        created = _parse_time(data["metadata"].get("creationTimestamp"))
    return SpecView(kind, name, data, resource, error, created, retained.user_properties.get(CREATED_BY))


def _by_channel(
    topics: Topics, retained: Mapping[str, Retained], kind: Kind | None
) -> dict[tuple[Channel, str], tuple[str, Retained]]:
    found: dict[tuple[Channel, str], tuple[str, Retained]] = {}
    for topic, message in retained.items():
        try:
            parsed = topics.parse(topic)
        except TopicError:
            continue
        if parsed.kind is kind and parsed.name is not None and parsed.channel in (Channel.SPEC, Channel.STATUS):
            found[(parsed.channel, parsed.name)] = (topic, message)
        elif kind is None and parsed.channel is Channel.NODE_STATUS and parsed.node is not None:
            found[(parsed.channel, parsed.node)] = (topic, message)
    return found


def _decode_json(
    model: type[JobStatus] | type[ResourceStatus] | type[NodeStatus], payload: bytes
) -> tuple[Any, str | None]:
    try:
        return model.model_validate_json(payload), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "document"
        return None, f"{where}: {first.get('msg', 'invalid')}"


def _spec_views(
    topics: Topics,
    retained: Mapping[str, Retained],
    kind: Kind,
    status_model: type[_Status],
    view: Callable[[str, SpecView, _Status | None, str | None], _View],
) -> list[_View]:
    """One view per retained spec of `kind`, by name, each with its status (or why it cannot be read)."""
    found = _by_channel(topics, retained, kind)
    views = []
    for (channel, name), (topic, message) in sorted(found.items(), key=lambda item: item[0][1]):
        if channel is not Channel.SPEC:
            continue
        spec = decode_spec(topic, kind, name, message)
        status_msg = found.get((Channel.STATUS, name))
        status, error = _decode_json(status_model, status_msg[1].payload) if status_msg else (None, None)
        views.append(view(name, spec, status, error))
    return views


def collect_jobs(topics: Topics, retained: Mapping[str, Retained]) -> list[JobView]:
    """Every job with a retained spec, by name."""
    return _spec_views(topics, retained, Kind.JOB, JobStatus, JobView)


def collect_resources(topics: Topics, kind: Kind, retained: Mapping[str, Retained]) -> list[ResourceView]:
    """Every Dataset (or Model) with a retained spec, by name."""
    return _spec_views(topics, retained, kind, ResourceStatus, ResourceView)


def collect_nodes(topics: Topics, retained: Mapping[str, Retained]) -> list[NodeView]:
    """Every node that has announced itself on ``<prefix>/nodes/<node>/status``, by name."""
    found = _by_channel(topics, retained, None)
    views = []
    for (_, name), (_, message) in sorted(found.items(), key=lambda item: item[0][1]):
        status, error = _decode_json(NodeStatus, message.payload)
        views.append(NodeView(name, status, error))
    return views


#: Any view a printer takes.
View = JobView | ResourceView | NodeView
