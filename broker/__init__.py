"""The medium: the MQTT session (paho-mqtt 2.x, MQTT v5), chunked transfer, node connection settings.

`broker.mosquitto` is the broker server itself (configuration, launcher, `fl-broker`). The public API
is re-exported here (see docs/dev/internal-apis.md); the modules behind it are private.
"""

from broker._assembler import Assembler, CompletedTransfer, chunk_index, manifest_from_payload, transfer_key
from broker._errors import BrokerError, ConnectError, PayloadTooLarge, PublishError, TransferError
from broker._messages import PACKET_HEADROOM, Inbound, Inbox, PublishObserver, PublishResult
from broker._nodeconfig import BrokerAddress, NodeConfig, NodeTls, load_node_config
from broker._options import (
    add_connection_options,
    add_mqtt_arguments,
    connection_flags,
    mqtt_settings_from_args,
    node_config_from_args,
    node_from_args,
    port_number,
)
from broker._paho_client import connect_properties, paho_client
from broker._paho_decode import decode_publish, paho_decode_publish
from broker._requests import RequestServer
from broker._sender import BlobSender, new_transfer_id
from broker._session import Session
from broker._settings import (
    FLCTL_ENV_PREFIX,
    NODE_CONFIG_ENV,
    SERVICE_ENV_PREFIX,
    ConnectionSettings,
    MqttSettings,
    node_config_from,
)

__all__ = [
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
]
