"""Resource types as the user names them (``fl``, ``datasets``, ``federatedlearningjobs.sedna.io``...)."""

from __future__ import annotations

from dataclasses import dataclass

from flctl._errors import UsageError
from schemas import Kind


@dataclass(frozen=True)
class ResourceType:
    """One type `flctl get/describe/delete` knows. `kind` is None for nodes (status only, no spec)."""

    plural: str
    singular: str
    kind: Kind | None
    aliases: tuple[str, ...]

    @property
    def qualified(self) -> str:
        """`federatedlearningjob.sedna.io`, as kubectl prints it in `created`/`deleted` lines."""
        return f"{self.singular}.sedna.io" if self.kind is not None else self.singular

    def names(self) -> tuple[str, ...]:
        return (self.plural, self.singular, *self.aliases)


JOBS = ResourceType(
    "federatedlearningjobs",
    "federatedlearningjob",
    Kind.JOB,
    ("fl", "flj", "federatedlearningjobs.sedna.io", "federatedlearningjob.sedna.io"),
)
DATASETS = ResourceType("datasets", "dataset", Kind.DATASET, ("ds", "datasets.sedna.io", "dataset.sedna.io"))
MODELS = ResourceType("models", "model", Kind.MODEL, ("models.sedna.io", "model.sedna.io"))
NODES = ResourceType("nodes", "node", None, ("no",))

ALL_TYPES: tuple[ResourceType, ...] = (JOBS, DATASETS, MODELS, NODES)
SPEC_TYPES: tuple[ResourceType, ...] = (DATASETS, MODELS, JOBS)

_BY_NAME = {name: rtype for rtype in ALL_TYPES for name in rtype.names()}
_BY_KIND = {rtype.kind: rtype for rtype in SPEC_TYPES}


def resolve(word: str, allowed: tuple[ResourceType, ...] = ALL_TYPES) -> ResourceType:
    """The type a user wrote; UsageError in kubectl's words (plus what is known) otherwise."""
    rtype = _BY_NAME.get(word.lower())
    if rtype is None or rtype not in allowed:
        known = ", ".join(
            f"{t.plural} ({', '.join(a for a in (t.singular, *t.aliases) if '.' not in a)})" for t in allowed
        )
        raise UsageError(f'the server doesn\'t have a resource type "{word}" (known: {known})')
    return rtype


def for_kind(kind: Kind) -> ResourceType:
    return _BY_KIND[kind]
