"""`fl-cloud-aggregator`, the process: the service loop, the job engine's `Port` over MQTT, the node's files.

`AggregatorService` runs the controller (`cloud_aggregator.engine`) on one logic thread over one MQTT
session; `MqttPort` is how the engine's decisions reach the broker, the aggregation scripts
(`AggregationScripts`, on `runtime.ScriptSupervisor`) and the disk (`write_model`, `StateStore`: the spool and the checkpoints;
`SpoolWriter`: the spool stored in groups off the logic thread; `ChunkHasher`: update chunks hashed as they arrive; `KeptStore`: the kept copy of the retained state, compared with what the broker holds through a `BrokerView`).
`SiteAggregatorService` (`--site`) is a site aggregator of hierarchical jobs on a site broker.
`AggregatorMetrics` is what /metrics serves (Prometheus): the engine's statuses and acks, bytes, nodes, `$SYS`.
"""

from cloud_aggregator.service._kept_store import BrokerView, KeptStore
from cloud_aggregator.service._metrics import AggregatorMetrics
from cloud_aggregator.service._model_files import write_model
from cloud_aggregator.service._port import MqttPort
from cloud_aggregator.service._prehash import ChunkHasher, Prehashed
from cloud_aggregator.service._scripts import AggregationScripts, aggregation_launch, aggregation_variables
from cloud_aggregator.service._service import AggregatorService, Event
from cloud_aggregator.service._site_service import SiteAggregatorService
from cloud_aggregator.service._spool_writer import SpoolWriter
from cloud_aggregator.service._state_store import FileSpill, SpoolItem, StateStore

__all__ = [
    "AggregationScripts",
    "AggregatorMetrics",
    "AggregatorService",
    "BrokerView",
    "ChunkHasher",
    "Event",
    "FileSpill",
    "KeptStore",
    "MqttPort",
    "Prehashed",
    "SiteAggregatorService",
    "SpoolItem",
    "SpoolWriter",
    "StateStore",
    "aggregation_launch",
    "aggregation_variables",
    "write_model",
]
