"""The edge's decisions, without a broker or a process: one job's state machine, its launch, its outbox.

`EdgeJob` is this node's part of one job run (a plan uid), driven by events (script frames and exit,
global models, upload results, the aggregator's acks) with its effects behind `JobPorts` and a
`WorkerHandle`; its states and transitions are drawn in its module's docstring.

`SecAggParty` is the job's part of secure aggregation (its round files: `SecAggFiles`, `SecAggRoundFile`).

`prepare_launch` decides whether this node can run its part of a plan (`LaunchSpec`). The outbox
(`Outbox`: every update on disk until the aggregator confirms it, plus the delivery record) and its
bookkeeping (`Deliveries`: what an ack means, when to resend) are here too; the service
(`edge_trainer.service`) wires them to MQTT and to `runtime.ScriptSupervisor`.
"""

from edge_trainer.engine._deliveries import AckOutcome, Deliveries, Delivery
from edge_trainer.engine._job import EdgeJob
from edge_trainer.engine._launch import LaunchSpec, installed_tensorflow_version, prepare_launch
from edge_trainer.engine._outbox import Outbox, OutboxEntry
from edge_trainer.engine._ports import Compression, JobPorts, Launcher, UploadDone, UploadRequest, WorkerHandle
from edge_trainer.engine._residuals import Residuals
from edge_trainer.engine._secagg import PartyLinks, SecAggParty
from edge_trainer.engine._secagg_files import SecAggFiles, SecAggRoundFile

__all__ = [
    "AckOutcome",
    "Compression",
    "Deliveries",
    "Delivery",
    "EdgeJob",
    "JobPorts",
    "LaunchSpec",
    "Launcher",
    "Outbox",
    "OutboxEntry",
    "PartyLinks",
    "Residuals",
    "SecAggFiles",
    "SecAggParty",
    "SecAggRoundFile",
    "UploadDone",
    "UploadRequest",
    "WorkerHandle",
    "installed_tensorflow_version",
    "prepare_launch",
]
