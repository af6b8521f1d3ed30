"""The cloud side: the controller (resources, validation, job status) and the aggregator (rounds, strategies).

`fl-cloud-aggregator --node cloud0 --root DIR` runs `AggregatorService`. Aggregation scripts use
`AggregationServer` and `Context`, as Sedna's do. Strategies (`Strategy`, `FedAvg`, `get_strategy`) are
pure and can be used on their own. The controller and the job engine are in `cloud_aggregator.engine`.
"""

from cloud_aggregator._errors import (
    AggregatorError,
    ControllerError,
    PublishFailedError,
    StateError,
    StrategyError,
    UpdateRejectedError,
    WorkerScriptError,
)
from cloud_aggregator._service import AggregatorService
from cloud_aggregator._strategy import (
    AggregationState,
    FedAvg,
    Layout,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_names,
)
from cloud_aggregator._worker_api import AggregationServer, Context
from cloud_aggregator.cli import main

__all__ = [
    "AggregationServer",
    "AggregationState",
    "AggregatorError",
    "AggregatorService",
    "Context",
    "ControllerError",
    "FedAvg",
    "Layout",
    "PublishFailedError",
    "StateError",
    "Strategy",
    "StrategyError",
    "UpdateRejectedError",
    "WorkerScriptError",
    "get_strategy",
    "main",
    "register_strategy",
    "strategy_names",
]
