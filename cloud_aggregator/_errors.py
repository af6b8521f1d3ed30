"""Exceptions raised by the cloud aggregator (the controller, the aggregator and the worker API).

    AggregatorError             root: everything `cloud_aggregator` raises on purpose
    ├── StrategyError           unknown aggregation name; arrays that do not fit the strategy's layout
    ├── ControllerError         a job cannot run as written on this node
    ├── WorkerScriptError       the aggregation script cannot start, failed, or runs outside the service
    ├── PublishFailedError      the broker did not take a plan, status or global model in time
    ├── StateError              the state folder (spool, checkpoints) cannot be written or read
    └── UpdateRejectedError     a weights transfer fails its checks; `.reason` says why (job engine only)

Errors from other packages (`schemas.SchemaError`, `broker.BrokerError`) pass through unchanged where
the input itself is malformed; the service catches them at its one dispatch boundary and turns them
into statuses, events or log lines. Programming errors (TypeError, ...) are never caught as these.
"""

from __future__ import annotations

__all__ = [
    "AggregatorError",
    "ControllerError",
    "PublishFailedError",
    "StateError",
    "StrategyError",
    "UpdateRejectedError",
    "WorkerScriptError",
]


class AggregatorError(Exception):
    """Root of every error the cloud aggregator raises deliberately."""


class StrategyError(AggregatorError):
    """An aggregation strategy is unknown, or was given arrays that do not match its layout."""


class ControllerError(AggregatorError):
    """A job cannot run as written on this node (a path, a script, the model folder)."""


class WorkerScriptError(AggregatorError):
    """The aggregation script cannot be started, failed, or was started outside fl-cloud-aggregator."""


class PublishFailedError(AggregatorError):
    """The broker refused or did not acknowledge a publication (a plan, a status, a global model)."""


class StateError(AggregatorError):
    """The aggregator's state folder (spooled updates, checkpoints) cannot be written or read."""


class UpdateRejectedError(AggregatorError):
    """A weights transfer fails a check of the round engine; `reason` is the one-line explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
