"""The node runtime: what every process of this system needs besides the network.

Structured logging (`configure_logging`, `get_logger`), crash-safe files (`write_atomic`, `fsync_dir`),
and the worker link: the local channel between a node service and the job script it runs
(`WorkerChannel`, `spawn_channel_pair`) and, on the script's side, the watch on its service
(`ServiceWatch`: a script whose service died exits with one line and `SERVICE_GONE_EXIT`). Nothing here imports paho-mqtt or TensorFlow, so a worker
script that imports the worker API loads only this and `schemas`.
"""

from runtime._channel import MAX_BODY, MAX_HEADER, WorkerChannel, spawn_channel_pair
from runtime._errors import ChannelClosed, ChannelError, NodeRuntimeError, ScriptStartError
from runtime._files import TMP_PREFIX, fsync_dir, write_atomic
from runtime._logging import configure_logging, get_logger
from runtime._service_watch import SERVICE_GONE_EXIT, ServiceGone, ServiceWatch

__all__ = [
    "MAX_BODY",
    "MAX_HEADER",
    "SERVICE_GONE_EXIT",
    "TMP_PREFIX",
    "ChannelClosed",
    "ChannelError",
    "NodeRuntimeError",
    "ScriptStartError",
    "ServiceGone",
    "ServiceWatch",
    "WorkerChannel",
    "configure_logging",
    "fsync_dir",
    "get_logger",
    "spawn_channel_pair",
    "write_atomic",
]
