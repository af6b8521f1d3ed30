"""The broker server: Mosquitto 2.0 configuration rendered from one dataclass, a local launcher, `fl-broker`.

`BrokerConfig` / `TlsListener` hold every setting and limit, `render_config` writes mosquitto.conf,
`Bridge` is a site broker's link to the cloud broker (a `connection` section),
`LocalBroker` runs one Mosquitto process for tests, the demo and `fl-broker run`.
"""

from broker.mosquitto._bridge import Bridge, BridgeTopic, render_bridge_topics
from broker.mosquitto._config import BrokerConfig, TlsListener, render_config
from broker.mosquitto._launcher import LocalBroker, find_mosquitto, find_mosquitto_passwd, port_open

__all__ = [
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
]
