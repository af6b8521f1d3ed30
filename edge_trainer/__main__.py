"""``python -m edge_trainer``: the edge node service, as ``fl-edge-trainer``."""

import sys

from edge_trainer.cli import main

sys.exit(main())
