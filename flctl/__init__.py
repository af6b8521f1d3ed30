"""flctl: kubectl's verbs (create, get, describe, delete) for Sedna's resources, over MQTT.

Run it as the `flctl` console script, or in process with ``flctl.cli.main(argv)``, which returns the
exit code. The modules behind it are private; `FlctlError` is the root of everything it raises.
"""

from __future__ import annotations

from flctl._errors import FlctlError

__version__ = "0.1.0"

__all__ = ["FlctlError", "__version__"]
