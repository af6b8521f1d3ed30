"""`python -m cloud_aggregator`: the same as `fl-cloud-aggregator`."""

import sys

from cloud_aggregator.cli import main

sys.exit(main())
