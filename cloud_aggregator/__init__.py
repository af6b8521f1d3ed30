"""The cloud side: the controller (resources, validation, job status) and the aggregator (rounds, strategies).

`fl-cloud-aggregator --node cloud0 --root DIR` runs `AggregatorService`. Aggregation scripts use
`AggregationServer` and `Context`, as Sedna's do. Strategies (`Strategy`, `FedAvg`, `get_strategy`) are
pure and can be used on their own.
"""

from cloud_aggregator._service import AggregatorService
from cloud_aggregator._strategy import FedAvg, Strategy, get_strategy
from cloud_aggregator._worker_api import AggregationServer, Context
from cloud_aggregator.cli import main

__all__ = [
    "AggregationServer",
    "AggregatorService",
    "Context",
    "FedAvg",
    "Strategy",
    "get_strategy",
    "main",
]
