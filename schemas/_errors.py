"""Exceptions of the contract package.

    SchemaError                 root: everything `schemas` raises
    ├── SpecError               a resource document is not valid (YAML, kind, field, value, reference)
    │   └── SpecTooLargeError   ... because it is over a size limit (bytes, or YAML nodes once expanded)
    ├── TopicError              a topic cannot be built or is not part of the layout
    ├── PathEscapeError         a spec path leads outside the node's root folder
    └── WireError               a binary or JSON wire message is malformed (codec, manifest, frame)

Every error carries the context a user needs to fix the input: the document and field for specs,
the topic for topics, and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SchemaError(Exception):
    """Root of the contract's exceptions."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: the field path (dotted, `[i]` for list items) and why."""

    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SpecError(SchemaError):
    """A resource document is invalid. `document` names it (source, index, kind and name when known)."""

    def __init__(self, document: str, problems: list[Problem]) -> None:
        self.document = document
        self.problems = problems
        lines = "; ".join(str(p) for p in problems)
        super().__init__(f"{document}: {lines}")

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems if p.field]


class SpecTooLargeError(SpecError):
    """A document over a size limit, refused before it is read any further: `size` and `limit` in `unit`
    (bytes of text, or YAML nodes once aliases are expanded). A controller reports it as SpecTooLarge."""

    def __init__(self, document: str, *, size: int, limit: int, unit: str) -> None:
        self.size = size
        self.limit = limit
        self.unit = unit
        if unit == "bytes":
            problem = f"{size} bytes is over the {limit}-byte limit"
        else:
            problem = f"expands to more than {limit} YAML nodes (alias bomb?)"
        super().__init__(document, [Problem(None, problem)])


class TopicError(SchemaError):
    """A topic cannot be built from these parts, or a received topic is not in the layout."""

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        self.reason = reason
        super().__init__(f"topic {topic!r}: {reason}")


class PathEscapeError(SchemaError):
    """A path from a spec does not stay under the node's root: `url` as written, `root`, and where it led."""

    def __init__(self, message: str, *, url: str, root: Path, resolved: Path | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.root = root
        self.resolved = resolved


class WireError(SchemaError):
    """A wire message (weights blob, manifest, worker frame) is malformed or fails its checks."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")
