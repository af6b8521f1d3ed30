"""The node runtime: what every process of this system needs besides the network.

Structured logging (`configure_logging`, `get_logger`), crash-safe files (`write_atomic`, `fsync_dir`),
and the worker link: the local channel between a node service and the job script it runs
(`WorkerChannel`, `spawn_channel_pair`). Nothing here imports paho-mqtt or TensorFlow, so a worker
script that imports the worker API loads only this and `schemas`.
"""

from runtime._channel import MAX_BODY, MAX_HEADER, WorkerChannel, spawn_channel_pair
from runtime._errors import ChannelClosed, ChannelError, NodeRuntimeError, ScriptStartError
from runtime._files import TMP_PREFIX, fsync_dir, write_atomic
from runtime._logging import configure_logging, get_logger

__all__ = [
    "MAX_BODY",
    "MAX_HEADER",
    "TMP_PREFIX",
    "ChannelClosed",
    "ChannelError",
    "NodeRuntimeError",
    "ScriptStartError",
    "WorkerChannel",
    "configure_logging",
    "fsync_dir",
    "get_logger",
    "spawn_channel_pair",
    "write_atomic",
]
