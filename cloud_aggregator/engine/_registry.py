"""The registry of Datasets and Models: what the controller accepted, and the statuses it owns for them.

A Dataset or Model has no lifecycle of its own here: it is valid or not, and a job names it. So the
registry only keeps the parsed resource, its spec in the kept copy (`Port.keep_spec`, byte for byte) and
its `ResourceStatus` (``valid``, and the node for a Dataset). An invalid document is kept as well: the
controller owns its ``valid: false`` status, which must survive a broker that loses it like any other.
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine._port import Port
from schemas import Dataset, Kind, Model, ResourceStatus, SpecError

__all__ = ["Registry"]


class Registry:
    """The Datasets and Models by name, and the (kind, name) of every resource status this node published."""

    def __init__(self, port: Port, log: FilteringBoundLogger) -> None:
        self._port = port
        self._log = log
        self.datasets: dict[str, Dataset] = {}
        self.models: dict[str, Model] = {}
        self.statuses: set[tuple[Kind, str]] = set()

    def accept(self, resource: Dataset | Model, payload: bytes) -> str:
        """A valid Dataset or Model: keep it and publish its status; return what happened ("appeared" or
        "changed"), for the event of a job it lets start."""
        name = resource.metadata.name
        if isinstance(resource, Dataset):
            kind, news = Kind.DATASET, "changed" if name in self.datasets else "appeared"
            self.datasets[name] = resource
            message = f"on node {resource.spec.node_name}"
        else:
            kind, news = Kind.MODEL, "changed" if name in self.models else "appeared"
            self.models[name] = resource
            message = ""
        self._port.keep_spec(kind, name, payload)
        self._publish(kind, name, valid=True, message=message)
        return news

    def invalid(self, kind: Kind, name: str, payload: bytes, exc: SpecError) -> None:
        """A Dataset or Model document that does not validate: it no longer exists for the jobs; its status
        says why (the message names the document, the field and, for an oversized one, the limit)."""
        self._port.keep_spec(kind, name, payload)  # its status (valid: false) is kept with it
        self._forget(kind, name)
        self._publish(kind, name, valid=False, message=str(exc))

    def delete(self, kind: Kind, name: str) -> None:
        """An explicit delete (the caller left the tombstone): the resource and its status go."""
        self._forget(kind, name)
        self.statuses.discard((kind, name))
        self._log.info("resource deleted", kind=kind.value, name=name)
        self._port.publish_status(kind, name, None)

    def _forget(self, kind: Kind, name: str) -> None:
        if kind is Kind.DATASET:
            self.datasets.pop(name, None)
        else:
            self.models.pop(name, None)

    def _publish(self, kind: Kind, name: str, *, valid: bool, message: str) -> None:
        self.statuses.add((kind, name))
        self._port.publish_status(kind, name, ResourceStatus(kind=kind.kind, name=name, valid=valid, message=message))
