"""flctl: kubectl's verbs (create, get, describe, delete, wait) for Sedna's resources, over MQTT.

Run it as the `flctl` console script, or in process with ``flctl.main(argv)`` (the same as
``flctl.cli.main``), which returns the exit code. `FlctlError` is the root of everything it raises.

Public, besides this package's root:

    flctl.cli        the command line (`main`, `build_parser`, `broker_options`)
    flctl.printers   how resources are shown: retained topics decoded into views, tables, describe
    flctl.provision  `flctl broker init`: PKI, ACL, passwords and node configs of a secured deployment
    flctl.synth      the synthetic magnetic-tile dataset and per-edge splits (numpy and pillow)
    flctl.cluster    `LocalCluster`: a whole deployment on one machine (demo, end-to-end and fault tests)
    flctl.residency  the data-residency check of `flctl audit`: edges' ledgers against the aggregator's

Every other module (a name starting with ``_``: the verbs, the broker client, the errors) is private.
"""

from __future__ import annotations

from flctl._errors import FlctlError
from flctl._version import __version__
from flctl.cli import main

__all__ = ["FlctlError", "__version__", "main"]
