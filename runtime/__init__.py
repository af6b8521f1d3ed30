"""The node runtime: what every process of this system needs besides the network.

Structured logging (`configure_logging`, `get_logger`), crash-safe files (`write_atomic`, `fsync_dir`),
the worker link (the local channel between a node service and the job script it runs: `WorkerChannel`;
the one supervisor both services run scripts with: `ScriptSupervisor`, `ScriptProcess`, `ScriptLaunch`;
the script's environment: `script_environment`; on the script's side, the watch on its service:
`ServiceWatch`, so a script whose service died exits with one line and `SERVICE_GONE_EXIT`), the one
shape of a service's logic thread (`EventLoop`), the rule of who writes a Model url
(`job_model_folder` under `model_lock`), and the lock that keeps one service per node root
(`lock_node_root`). Nothing here imports paho-mqtt or TensorFlow, so a worker script that imports the
worker API loads only this and `schemas`.
"""

from runtime._channel import MAX_BODY, MAX_HEADER, WorkerChannel, spawn_channel_pair
from runtime._errors import ChannelClosed, ChannelError, NodeRootLockedError, NodeRuntimeError, ScriptStartError
from runtime._file_reads import JobFiles, answer_request, read_from, read_tail
from runtime._files import TMP_PREFIX, fsync_dir, write_atomic
from runtime._ledger import Ledger, blob_layout
from runtime._logging import configure_logging, get_logger
from runtime._loop import EventLoop
from runtime._model_folder import MODEL_JOBS_FOLDER, job_model_folder, model_lock
from runtime._node_lock import NodeRootLock, lock_node_root
from runtime._script_env import PRIVATE_ENV_PREFIXES, script_environment, script_parameters, source_checkout
from runtime._service_watch import SERVICE_GONE_EXIT, ServiceGone, ServiceWatch
from runtime._supervisor import (
    ScriptEvent,
    ScriptExited,
    ScriptFrame,
    ScriptLaunch,
    ScriptProcess,
    ScriptSupervisor,
)

__all__ = [
    "MAX_BODY",
    "MAX_HEADER",
    "MODEL_JOBS_FOLDER",
    "PRIVATE_ENV_PREFIXES",
    "SERVICE_GONE_EXIT",
    "TMP_PREFIX",
    "ChannelClosed",
    "ChannelError",
    "EventLoop",
    "JobFiles",
    "Ledger",
    "NodeRootLock",
    "NodeRootLockedError",
    "NodeRuntimeError",
    "ScriptEvent",
    "ScriptExited",
    "ScriptFrame",
    "ScriptLaunch",
    "ScriptProcess",
    "ScriptStartError",
    "ScriptSupervisor",
    "ServiceGone",
    "ServiceWatch",
    "WorkerChannel",
    "answer_request",
    "blob_layout",
    "configure_logging",
    "fsync_dir",
    "get_logger",
    "job_model_folder",
    "lock_node_root",
    "model_lock",
    "read_from",
    "read_tail",
    "script_environment",
    "script_parameters",
    "source_checkout",
    "spawn_channel_pair",
    "write_atomic",
]
