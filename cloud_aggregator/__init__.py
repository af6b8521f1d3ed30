"""The cloud side: the controller (resources, validation, job status) and the aggregator (rounds, strategies).

This root is what aggregation scripts import, Sedna's way: `AggregationServer` and `Context`; it also
holds the strategies (`Strategy`, `FedAvg`, `get_strategy`), pure and usable on their own, and the
package's errors. It never imports paho-mqtt. The controller and the job engine are
`cloud_aggregator.engine`; the process `fl-cloud-aggregator` (`cloud_aggregator.cli.main`) runs
`cloud_aggregator.service.AggregatorService`.
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
from cloud_aggregator._privacy import DEFAULT_DP_DELTA, Privacy, epsilon_spent
from cloud_aggregator._robust import (
    Bulyan,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    RobustResult,
    RobustStrategy,
    RobustUpdate,
)
from cloud_aggregator._server_opt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from cloud_aggregator._strategy import (
    AggregationState,
    FedAvg,
    Layout,
    ServerState,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_names,
)
from cloud_aggregator._worker_api import AggregationServer, Context

__all__ = [
    "DEFAULT_DP_DELTA",
    "AggregationServer",
    "AggregationState",
    "AggregatorError",
    "Bulyan",
    "Context",
    "ControllerError",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "Layout",
    "MultiKrum",
    "Privacy",
    "PublishFailedError",
    "RobustResult",
    "RobustStrategy",
    "RobustUpdate",
    "ServerState",
    "StateError",
    "Strategy",
    "StrategyError",
    "UpdateRejectedError",
    "WorkerScriptError",
    "epsilon_spent",
    "get_strategy",
    "register_strategy",
    "strategy_names",
]
