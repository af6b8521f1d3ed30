"""The broker server: Mosquitto 2.0 configuration rendered from one dataclass, a local launcher, `fl-broker`.

`BrokerConfig` / `TlsListener` hold every setting and limit, `render_config` writes mosquitto.conf,
`LocalBroker` runs one Mosquitto process for tests, the demo and `fl-broker run`.
"""

from broker.mosquitto._config import BrokerConfig, TlsListener, render_config
from broker.mosquitto._launcher import LocalBroker, find_mosquitto, find_mosquitto_passwd, port_open

__all__ = [
    "BrokerConfig",
    "LocalBroker",
    "TlsListener",
    "find_mosquitto",
    "find_mosquitto_passwd",
    "port_open",
    "render_config",
]
