"""The packages' public APIs and the layering between them, pinned: a change here is a deliberate one.

- every package and public subpackage or module exports exactly the pinned names (`__all__`), and each
  of them exists;
- nothing outside a package (another package, a test, an example, a benchmark) imports one of its
  `_private` modules;
- the layering holds: `schemas` imports nothing of ours, `runtime` only `schemas`, `broker` only those
  two, and the two services and `flctl` never import each other;
- what a worker script imports (`edge_trainer`, `cloud_aggregator`: Sedna's worker APIs) loads neither
  paho-mqtt nor TensorFlow nor the broker package.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "runtime", "broker", "cloud_aggregator", "edge_trainer", "flctl")
# What each package may import of ours (besides itself).
ALLOWED = {
    "schemas": set(),
    "runtime": {"schemas"},
    "broker": {"schemas", "runtime"},
    "cloud_aggregator": {"schemas", "runtime", "broker"},
    "edge_trainer": {"schemas", "runtime", "broker"},
    "flctl": {"schemas", "runtime", "broker"},
}

PUBLIC_API: dict[str, list[str]] = {
    "broker": [
        "FLCTL_ENV_PREFIX",
        "NODE_CONFIG_ENV",
        "PACKET_HEADROOM",
        "SERVICE_ENV_PREFIX",
        "Assembler",
        "BlobSender",
        "BrokerAddress",
        "BrokerError",
        "CompletedTransfer",
        "ConnectError",
        "ConnectionSettings",
        "Inbound",
        "Inbox",
        "MqttSettings",
        "NodeConfig",
        "NodeTls",
        "PayloadTooLarge",
        "PublishError",
        "PublishObserver",
        "PublishResult",
        "RequestServer",
        "Session",
        "TransferError",
        "add_connection_options",
        "add_mqtt_arguments",
        "chunk_index",
        "connect_properties",
        "connection_flags",
        "decode_publish",
        "load_node_config",
        "manifest_from_payload",
        "mqtt_settings_from_args",
        "new_transfer_id",
        "node_config_from",
        "node_config_from_args",
        "node_from_args",
        "paho_client",
        "paho_decode_publish",
        "port_number",
        "transfer_key",
    ],
    "broker.mosquitto": [
        "Bridge",
        "BridgeTopic",
        "BrokerConfig",
        "LocalBroker",
        "TlsListener",
        "find_mosquitto",
        "find_mosquitto_passwd",
        "port_open",
        "render_bridge_topics",
        "render_config",
    ],
    "broker.mosquitto.cli": ["main"],
    "cloud_aggregator": [
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
    ],
    "cloud_aggregator.cli": ["build_parser", "main"],
    "cloud_aggregator.engine": [
        "Checkpoint",
        "Controller",
        "FinalModel",
        "Hierarchy",
        "Job",
        "JobFacts",
        "JobSettings",
        "KeptState",
        "Port",
        "ScriptRequest",
        "ScriptSignal",
        "SiteFold",
        "SiteJob",
        "SitePort",
        "SpillFile",
        "SpooledUpdate",
        "Stage",
        "all_finite",
        "decode_checked",
    ],
    "cloud_aggregator.service": [
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
    ],
    "cloud_aggregator.testing": [
        "GlobalModel",
        "MemoryDisk",
        "MemoryPort",
        "MemorySpill",
        "chunks_of",
        "make_transfer",
    ],
    "edge_trainer": [
        "BaseConfig",
        "Context",
        "DatasetError",
        "EdgeTrainerError",
        "FederatedLearning",
        "LabeledSample",
        "ModelSaveError",
        "OutboxError",
        "PathEscapeError",
        "PlanRejectedError",
        "SavedModel",
        "TxtDataParse",
        "WorkerError",
        "load_dataset",
        "load_image",
        "parse_label_line",
        "privatise_update",
        "read_label_file",
        "save_model",
    ],
    "edge_trainer.cli": ["build_parser", "main", "warm_worker_from"],
    "edge_trainer.engine": [
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
    ],
    "edge_trainer.service": [
        "EdgeService",
        "Event",
        "OutboxWritten",
        "ResendDone",
        "UploadEvent",
        "UploadWiring",
        "Uploads",
    ],
    "edge_trainer.testing": ["RecordingPorts", "ScriptedWorker", "global_transfer"],
    "flctl": ["FlctlError", "__version__", "main"],
    "flctl.cli": ["broker_options", "build_parser", "main"],
    "flctl.cluster": ["ADMIN", "MONITOR", "LocalCluster", "NodeProcess", "free_port"],
    "flctl.residency": ["EdgeAudit", "JobAudit", "RoundBytes", "check_job", "describe_layout"],
    "flctl.report": ["Chart", "RoundSeries", "WorkerSeries", "charts", "render_html"],
    "flctl.printers": [
        "CREATED_AT",
        "CREATED_BY",
        "GAP",
        "METRIC_COLUMNS",
        "OUTPUTS",
        "JobView",
        "NodeView",
        "ResourceView",
        "Retained",
        "RoundRow",
        "SpecView",
        "View",
        "action_line",
        "age",
        "collect_jobs",
        "collect_models",
        "collect_nodes",
        "collect_resources",
        "column_widths",
        "decode_spec",
        "deleted_line",
        "describe_job",
        "describe_node",
        "describe_resource",
        "document",
        "dump",
        "eval_accuracy_column",
        "human_duration",
        "jobs_table",
        "models_wide_table",
        "named_figures",
        "render_views",
        "round_column",
        "round_rows",
        "round_time_column",
        "rounds_table",
        "row_line",
        "sites_line",
        "table",
        "table_rows",
        "timestamp",
        "worker_states",
        "workers_column",
    ],
    "flctl.provision": [
        "DEFAULT_PLAIN_PORT",
        "DEFAULT_TLS_PORT",
        "Deployment",
        "FleetChange",
        "Provisioned",
        "QueueLimits",
        "SiteProvisioned",
        "SiteSynced",
        "acl_block",
        "acl_insert",
        "acl_remove",
        "add_node",
        "bridge_topics",
        "deployment_lock",
        "hash_password",
        "open_deployment",
        "passwd_remove",
        "passwd_set",
        "prepare_removal",
        "provision",
        "provision_site",
        "remove_node",
        "render_acl",
        "render_passwd",
        "rotate_node",
        "sync_site",
        "write_atomic",
    ],
    "flctl.synth": [
        "CLASS_COUNTS",
        "DATASET_DIRNAME",
        "DEFAULT_CONTRAST",
        "DEFECT_CLASSES",
        "SPLIT_FILES",
        "SynthReport",
        "copy_split",
        "synthesize",
    ],
    "runtime": [
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
    ],
    "schemas": [
        "API_VERSION",
        "CODE_ROOT_ENV",
        "DEFAULT_CODE_ROOT",
        "DEFAULT_INIT_WAIT",
        "DENIED_PARAMETER_NAMES",
        "DENIED_PARAMETER_PREFIXES",
        "LEDGER_FILE",
        "MASKED_TENSOR",
        "MAX_DOCUMENT_BYTES",
        "MAX_EVAL_CLASSES",
        "MAX_EVENTS",
        "MAX_EXIT_ROUND",
        "MAX_HELD_MODELS",
        "MAX_HELD_VERSIONS",
        "MAX_INIT_WAIT",
        "MAX_LOG_TAIL_LINES",
        "MAX_NUM_SAMPLES",
        "MAX_PARAMETERS",
        "MAX_PARAMETER_NAME_CHARS",
        "MAX_PARAMETER_VALUE_CHARS",
        "MAX_REPLY_BYTES",
        "MAX_STATUS_ROUNDS",
        "MAX_TRAINING_WORKERS",
        "NODE_SET_NAMES",
        "PARAMETER_BOUNDS",
        "PARAMETER_CHOICES",
        "SECAGG_STEPS",
        "AclPattern",
        "BaseConfig",
        "Channel",
        "ChunkedBlob",
        "Codec",
        "Condition",
        "ConditionType",
        "Context",
        "Dataset",
        "DatasetRef",
        "EffectiveWorker",
        "Evaluation",
        "Event",
        "FederatedLearningJob",
        "HeldModel",
        "HeldVersion",
        "JobEvent",
        "JobPlan",
        "JobStatus",
        "KeyAdvert",
        "Kind",
        "LedgerClass",
        "LedgerEntry",
        "LedgerSummary",
        "Model",
        "ModelRef",
        "NodeReply",
        "NodeRequest",
        "NodeRoot",
        "NodeState",
        "NodeStatus",
        "NumberBound",
        "ParsedTopic",
        "PartShare",
        "PathEscapeError",
        "Phase",
        "PlannedWorker",
        "PrivacyStatus",
        "Problem",
        "Resource",
        "ResourceStatus",
        "RoundRecord",
        "SchemaError",
        "ScriptRef",
        "SecAggMember",
        "SecAggPhase",
        "SecAggSettings",
        "SecAggState",
        "ShareBundle",
        "SiteStatus",
        "SpecError",
        "SpecTooLargeError",
        "TensorEncoding",
        "TensorSpec",
        "TopicError",
        "Topics",
        "TransferManifest",
        "TransferOrigin",
        "UnmaskAnswer",
        "UpdateAck",
        "WeightsHeader",
        "WeightsKind",
        "WireError",
        "WorkerEnv",
        "WorkerFrame",
        "WorkerRound",
        "WorkerState",
        "WorkerStatus",
        "b64decode",
        "b64encode",
        "check_name",
        "check_parameters",
        "check_references",
        "closest_name",
        "compress_update",
        "decode_tensors",
        "decode_weights",
        "describe_document",
        "encode_weights",
        "load_yaml_documents",
        "manifest_for",
        "masked_blob",
        "now",
        "parameter_name_problem",
        "parameter_value_problem",
        "parse_documents",
        "parse_for_topic",
        "parse_resource",
        "read_header",
        "read_masked",
        "update_compression",
        "weights_digest",
        "weights_payload_offset",
        "weights_transfer",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC_API))
def test_public_api_is_pinned(module: str) -> None:
    """Each public module exports exactly the pinned names, and every one of them exists."""
    loaded = importlib.import_module(module)

    exported = list(loaded.__all__)

    assert exported == PUBLIC_API[module]
    assert [name for name in exported if not hasattr(loaded, name)] == []


def test_every_public_module_is_pinned() -> None:
    """A public (sub)package or module of ours that is not in the pin list is an API nobody decided on."""
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if any(p.startswith("_") for p in parts[1:] if p != "__init__") or parts[-1] == "__main__":
                continue
            found.add(".".join(p for p in parts if p != "__init__"))
    assert sorted(found - set(PUBLIC_API)) == []


def _sources() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if any(p.startswith(".") or p in ("build", "dist") for p in parts):
            continue
        yield path


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module `path` imports (``import a.b``, ``from a.b import c`` as a.b and a.b.c), with its line."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


def test_no_private_module_is_imported_from_outside_its_package() -> None:
    """`pkg._private` belongs to pkg: other packages, tests, examples and benchmarks use the public API."""
    offenders = []
    for path in _sources():
        home = path.relative_to(REPO).parts[0]
        for name, line in _imports(path):
            parts = name.split(".")
            if parts[0] in PACKAGES and parts[0] != home and any(p.startswith("_") for p in parts[1:]):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert offenders == []


def test_packages_import_only_the_layers_below_them() -> None:
    """schemas <- runtime <- broker <- {cloud_aggregator, edge_trainer, flctl}; no cycles, no service-to-service."""
    offenders = []
    for package, allowed in ALLOWED.items():
        for path in (REPO / package).rglob("*.py"):
            for name, line in _imports(path):
                top = name.split(".")[0]
                if top in PACKAGES and top != package and top not in allowed:
                    offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert offenders == []


def test_the_worker_apis_load_no_paho_no_tensorflow_no_broker() -> None:
    """A training or aggregation script imports only what it needs: the worker APIs stay light."""
    code = (
        "import sys, edge_trainer, cloud_aggregator;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'paho', 'tensorflow', 'keras', 'broker'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_every_error_of_a_package_has_its_root() -> None:
    """One root exception per package: catching it catches everything the package raises on purpose."""
    import broker
    import cloud_aggregator
    import edge_trainer
    import flctl
    import runtime
    import schemas

    roots = {
        schemas: schemas.SchemaError,
        runtime: runtime.NodeRuntimeError,
        broker: broker.BrokerError,
        cloud_aggregator: cloud_aggregator.AggregatorError,
        edge_trainer: edge_trainer.EdgeTrainerError,
        flctl: flctl.FlctlError,
    }
    for module, root in roots.items():
        errors = [
            getattr(module, name)
            for name in module.__all__
            if isinstance(getattr(module, name), type) and issubclass(getattr(module, name), Exception)
        ]
        # Only the package's own errors: a re-export (edge_trainer offers schemas.PathEscapeError) keeps its root.
        own = [e for e in errors if e.__module__.split(".")[0] == module.__name__]
        strays = [e.__name__ for e in own if not issubclass(e, root)]
        assert strays == [], module.__name__
