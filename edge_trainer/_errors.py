"""Exceptions raised by the edge trainer.

Every error the edge trainer raises on purpose derives from :class:`EdgeTrainerError`, so a caller
(the worker's main loop, a CLI) can catch the whole family with one ``except`` clause and still
let programming errors (``TypeError``, ``AttributeError``...) surface as bugs. Keep this module a
flat, dependency-free tree of exception classes: other modules add their own subclasses here.
"""

from __future__ import annotations

from pathlib import Path

# A spec path that leaves the node root is a contract-level error shared with the aggregator.
from schemas import PathEscapeError

__all__ = [
    "DatasetError",
    "EdgeTrainerError",
    "ModelSaveError",
    "OutboxError",
    "PathEscapeError",
    "PlanRejectedError",
    "WorkerError",
]


class EdgeTrainerError(Exception):
    """Root of every error the edge trainer raises deliberately."""


class DatasetError(EdgeTrainerError):
    """A label file or one of the images it references is unusable.

    ``path`` is the label file (or the image, when no label file is involved) and ``line`` the
    1-based line number in that label file, or ``None`` when the problem is not tied to one line
    (for example a missing label file). They are kept as attributes so callers can report the
    location without parsing the message.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path: Path | None = Path(path) if path is not None else None
        self.line: int | None = line


# -- added by the node service and the worker API ------------------------------------------------


class PlanRejectedError(EdgeTrainerError):
    """This node refuses to run its part of a job plan; ``reason`` says why (it becomes the worker status)."""

    def __init__(self, job: str, reason: str) -> None:
        super().__init__(f"job {job}: {reason}")
        self.job = job
        self.reason = reason


class WorkerError(EdgeTrainerError):
    """The worker API (``FederatedLearning``) cannot go on: not started by the node service, the channel
    closed, or a frame the protocol does not allow at this point."""


class ModelSaveError(EdgeTrainerError):
    """The final model could not be written at the Model url in the Model format."""


class OutboxError(EdgeTrainerError):
    """An outbox entry (or the delivery record beside it) cannot be written or read back intact."""
