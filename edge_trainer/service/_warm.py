"""The edge's warm worker pool: training scripts start with TensorFlow already imported (opt-in).

``fl-edge-trainer --warm-worker`` (or ``warm_worker: true`` in node.yaml) keeps one spawned interpreter
that has imported what the example training scripts import before their first line runs: numpy,
TensorFlow, keras, and this package's worker API. It holds their memory (TensorFlow's import is some
300-500 MB) while it waits. See `runtime.WarmPool` for when a run still starts cold.
"""

from __future__ import annotations

from pathlib import Path

from structlog.typing import FilteringBoundLogger

from runtime import WarmPool

__all__ = ["PRELOAD", "edge_warm_pool"]

# Order matters little; tensorflow first because keras and the worker API import it anyway.
PRELOAD = ("numpy", "tensorflow", "keras", "edge_trainer")


def edge_warm_pool(root: Path, log: FilteringBoundLogger) -> WarmPool:
    """The pool of an edge service whose node root is `root`; its warm worker's start-up output goes to
    ROOT/logs/warm-worker.log. Started here, so the first job is warm when it comes late enough."""
    pool = WarmPool(PRELOAD, log_path=root / "logs" / "warm-worker.log", log=log)
    pool.start()
    return pool
