"""The cloud side: the controller (resources, validation, job status) and the aggregator (rounds, strategies).

This root is what aggregation scripts import, Sedna's way: `AggregationServer` and `Context`; it also
holds the strategies (`Strategy`, `FedAvg`, `get_strategy`), pure and usable on their own. It never
imports paho-mqtt. The job engine is `cloud_aggregator.engine`; the process `fl-cloud-aggregator`
(`cloud_aggregator.cli.main`) runs `cloud_aggregator.service.AggregatorService`.
"""

from cloud_aggregator._strategy import FedAvg, Strategy, get_strategy
from cloud_aggregator._worker_api import AggregationServer, Context

__all__ = [
    "AggregationServer",
    "Context",
    "FedAvg",
    "Strategy",
    "get_strategy",
]
