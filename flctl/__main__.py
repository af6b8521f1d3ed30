"""`python -m flctl ...`: the same as the `flctl` console script."""

import sys

from flctl.cli import main

sys.exit(main())
