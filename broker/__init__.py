"""The medium: the MQTT session (paho-mqtt 2.x, MQTT v5), chunked transfer, node connection settings.

`broker.mosquitto` is the broker server itself (configuration, launcher, `fl-broker`). The public API
is re-exported here (see docs/dev/internal-apis.md); the modules behind it are private.
"""

from broker._args import add_mqtt_arguments, mqtt_settings_from_args, node_config_from_args, node_from_args
from broker._errors import BrokerError, ConnectError, PayloadTooLarge, PublishError, TransferError
from broker._nodeconfig import NODE_CONFIG_ENV, BrokerAddress, NodeConfig, NodeTls, load_node_config
from broker._session import Inbound, Inbox, MqttSettings, PublishResult, Session
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
    "Assembler",
    "BlobSender",
    "BrokerAddress",
    "BrokerError",
    "CompletedTransfer",
    "ConnectError",
    "Inbound",
    "Inbox",
    "MqttSettings",
    "NodeConfig",
    "NodeTls",
    "PayloadTooLarge",
    "PublishError",
    "PublishResult",
    "Session",
    "TransferError",
    "add_mqtt_arguments",
    "chunk_index",
    "load_node_config",
    "manifest_from_payload",
    "mqtt_settings_from_args",
    "new_transfer_id",
    "node_config_from_args",
    "node_from_args",
    "transfer_key",
]
