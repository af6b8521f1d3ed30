"""The medium: Mosquitto configuration and launcher, the MQTT session, chunked transfer, the worker channel.

The public API is re-exported here (see docs/dev/internal-apis.md); the modules behind it are private.
"""

from broker._args import add_mqtt_arguments, mqtt_settings_from_args, node_config_from_args, node_from_args
from broker._channel import WorkerChannel, spawn_channel_pair
from broker._config import BrokerConfig, TlsListener, render_config
from broker._durable import TMP_PREFIX, fsync_dir, write_atomic
from broker._errors import BrokerError, ChannelClosed, ConnectError, PayloadTooLarge, PublishError, TransferError
from broker._launcher import LocalBroker, find_mosquitto
from broker._logging import configure_logging, get_logger
from broker._nodeconfig import NODE_CONFIG_ENV, BrokerAddress, NodeConfig, NodeTls, load_node_config
from broker._session import Inbound, MqttSettings, PublishResult, Session
from broker._transfer import (
    Assembler,
    BlobSender,
    CompletedTransfer,
    chunk_index,
    manifest_from_payload,
    new_transfer_id,
    transfer_key,
)

__all__ = [
    "NODE_CONFIG_ENV",
    "TMP_PREFIX",
    "Assembler",
    "BlobSender",
    "BrokerAddress",
    "BrokerConfig",
    "BrokerError",
    "ChannelClosed",
    "CompletedTransfer",
    "ConnectError",
    "Inbound",
    "LocalBroker",
    "MqttSettings",
    "NodeConfig",
    "NodeTls",
    "PayloadTooLarge",
    "PublishError",
    "PublishResult",
    "Session",
    "TlsListener",
    "TransferError",
    "WorkerChannel",
    "add_mqtt_arguments",
    "chunk_index",
    "configure_logging",
    "find_mosquitto",
    "fsync_dir",
    "get_logger",
    "load_node_config",
    "manifest_from_payload",
    "mqtt_settings_from_args",
    "new_transfer_id",
    "node_config_from_args",
    "node_from_args",
    "render_config",
    "spawn_channel_pair",
    "transfer_key",
    "write_atomic",
]
