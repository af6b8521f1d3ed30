"""Shared by the fault tests' tiny worker scripts: the label file, the samples, the hold gates.

Copied next to each script in a node's /code folder (the script's folder is on its import path).

Samples: each non-empty line of the Dataset's label file is ``sample-<i>,<0|1>``; its feature vector is
drawn from a generator seeded with the line's CRC-32, so every run sees the same data without any file
but the label file.

Hold gates: the worker parameter ``hold_rounds`` (e.g. ``"2"``) makes the script wait, before its n-th
``train`` call, until ``<node root>/gates/round-<n>`` exists. n counts this process's train calls, which
is the round for a script that started with the job. The test opens a gate when it has set up the fault
it wants to happen in that round; the wait is bounded. A held script is busy as far as the worker API
knows (inside ``estimator.train``, reading no frame): if its node service dies, the API's watchdog
(`runtime.ServiceWatch`) ends it within about a second, which tests/faults/test_orphans.py checks.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

import numpy as np

GATE_TIMEOUT = 120.0


class Samples:
    """What ``FederatedLearning.train`` wants: ``len()``, plus ``x`` and ``y`` for the estimator."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.y)


def load_samples(label_file: str, features: int) -> Samples:
    lines = [line.strip() for line in Path(label_file).read_text().splitlines() if line.strip()]
    x = np.stack(
        [
            np.random.default_rng(zlib.crc32(line.encode())).standard_normal(features).astype(np.float32)
            for line in lines
        ]
    )
    y = np.array([int(line.rsplit(",", 1)[1]) for line in lines], dtype=np.int64)
    return Samples(x, y)


def hold_rounds() -> set[int]:
    from edge_trainer import Context

    raw = str(Context.get_parameters("hold_rounds", "") or "")
    return {int(part) for part in raw.split(",") if part.strip()}


def wait_gate(call: int) -> None:
    """Before the `call`-th train call: wait for its gate if the parameters hold that round."""
    if call not in hold_rounds():
        return
    gate = Path(os.environ["FL_NODE_ROOT"]) / "gates" / f"round-{call}"
    deadline = time.monotonic() + GATE_TIMEOUT
    while not gate.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"gate {gate} not opened within {GATE_TIMEOUT} s")
        time.sleep(0.05)


def record_update(call: int, start: list[np.ndarray], trained: list[np.ndarray]) -> None:
    """Keep what the `call`-th train call started from and sent (``<root>/recorded/<pid>-<call>.npz``: a
    restarted script counts its calls from 1 again, and the start weights say which round it was)."""
    folder = Path(os.environ["FL_NODE_ROOT"]) / "recorded"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{os.getpid()}-{call}.npz", "wb") as f:
        np.savez(f, *start, *trained)
