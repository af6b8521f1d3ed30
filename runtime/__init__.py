"""The node runtime: what every process of this system needs besides the network.

Structured logging (`configure_logging`, `get_logger`), crash-safe files (`write_atomic`, `fsync_dir`, `fsync_tree`),
the worker link (the local channel between a node service and the job script it runs: `WorkerChannel`;
the one supervisor both services run scripts with: `ScriptSupervisor`, `ScriptProcess`, `ScriptLaunch`;
the script's environment: `script_environment`; on the script's side, the watch on its service:
`ServiceWatch`, so a script whose service died exits with one line and `SERVICE_GONE_EXIT`), the one
shape of a service's logic thread (`EventLoop`), work handed cheaply to background threads (`WorkThreads`,
`Pending`), the layout of model versions under a Model url
(`version_name`, `commit_version`, `set_latest`, `prune_versions` under `model_lock`; `write_version`
runs them in their one order) and what a node
reports of them (`held_models`, `ModelUrlBook`), and the lock that keeps one service per node root
(`lock_node_root`). Secure aggregation's primitives, shared by edge and cloud (the protocol over MQTT is
not built yet; docs/dev/secagg.md): the ring encoding `FixedPoint` (integers mod `SECAGG_MODULUS`), Shamir
sharing (`split_secret`, `reconstruct_secret`, `Share`, over `SHAMIR_PRIME`), X25519+HKDF keys bound to a
`RoundContext`, AES-CTR masks (`expand_mask`, `mask_input`, `sum_masked`, `unmask_sum`) and AES-GCM sealed
shares (`seal_share`, `open_share`); `SecAggError`. Nothing here imports paho-mqtt or TensorFlow, so a worker script that imports the
worker API loads only this and `schemas`.
"""

from runtime._channel import MAX_BODY, MAX_HEADER, WorkerChannel, spawn_channel_pair
from runtime._errors import (
    ChannelClosed,
    ChannelError,
    NodeRootLockedError,
    NodeRuntimeError,
    ScriptStartError,
    SecAggError,
)
from runtime._file_reads import JobFiles, answer_request, read_from, read_tail
from runtime._files import TMP_PREFIX, fsync_dir, fsync_tree, write_atomic
from runtime._fixed_point import SECAGG_MODULUS, FixedPoint
from runtime._handoff import Pending, WorkThreads
from runtime._held_models import ModelUrlBook, held_models
from runtime._ledger import Ledger, blob_layout
from runtime._logging import configure_logging, get_logger
from runtime._loop import EventLoop
from runtime._model_folder import (
    DEFAULT_KEEP_VERSIONS,
    MODEL_LATEST,
    MODEL_VERSIONS_FOLDER,
    commit_version,
    keep_versions,
    latest_version,
    list_versions,
    model_lock,
    new_version_folder,
    prune_versions,
    remove_stale_versions,
    set_latest,
    version_metadata,
    version_name,
    write_version,
)
from runtime._node_lock import NodeRootLock, lock_node_root
from runtime._script_env import PRIVATE_ENV_PREFIXES, script_environment, script_parameters, source_checkout
from runtime._secagg import (
    SEED_BYTES,
    RoundContext,
    expand_mask,
    mask_input,
    open_share,
    seal_share,
    sum_masked,
    unmask_sum,
)
from runtime._secagg_round import RoundSecrets, mask_update, share_bundle, unmask_answer, unmask_total
from runtime._service_watch import SERVICE_GONE_EXIT, ServiceGone, ServiceWatch
from runtime._shamir import SHAMIR_PRIME, Share, reconstruct_secret, split_secret
from runtime._supervisor import (
    ScriptEvent,
    ScriptExited,
    ScriptFrame,
    ScriptLaunch,
    ScriptProcess,
    ScriptSupervisor,
)
from runtime._warm import IMPORT_TIME_PREFIXES, WarmPool

__all__ = [
    "DEFAULT_KEEP_VERSIONS",
    "IMPORT_TIME_PREFIXES",
    "MAX_BODY",
    "MAX_HEADER",
    "MODEL_LATEST",
    "MODEL_VERSIONS_FOLDER",
    "PRIVATE_ENV_PREFIXES",
    "SECAGG_MODULUS",
    "SEED_BYTES",
    "SERVICE_GONE_EXIT",
    "SHAMIR_PRIME",
    "TMP_PREFIX",
    "ChannelClosed",
    "ChannelError",
    "EventLoop",
    "FixedPoint",
    "JobFiles",
    "Ledger",
    "ModelUrlBook",
    "NodeRootLock",
    "NodeRootLockedError",
    "NodeRuntimeError",
    "Pending",
    "RoundContext",
    "RoundSecrets",
    "ScriptEvent",
    "ScriptExited",
    "ScriptFrame",
    "ScriptLaunch",
    "ScriptProcess",
    "ScriptStartError",
    "ScriptSupervisor",
    "SecAggError",
    "ServiceGone",
    "ServiceWatch",
    "Share",
    "WarmPool",
    "WorkThreads",
    "WorkerChannel",
    "answer_request",
    "blob_layout",
    "commit_version",
    "configure_logging",
    "expand_mask",
    "fsync_dir",
    "fsync_tree",
    "get_logger",
    "held_models",
    "keep_versions",
    "latest_version",
    "list_versions",
    "lock_node_root",
    "mask_input",
    "mask_update",
    "model_lock",
    "new_version_folder",
    "open_share",
    "prune_versions",
    "read_from",
    "read_tail",
    "reconstruct_secret",
    "remove_stale_versions",
    "script_environment",
    "script_parameters",
    "seal_share",
    "set_latest",
    "share_bundle",
    "source_checkout",
    "spawn_channel_pair",
    "split_secret",
    "sum_masked",
    "unmask_answer",
    "unmask_sum",
    "unmask_total",
    "version_metadata",
    "version_name",
    "write_atomic",
    "write_version",
]
