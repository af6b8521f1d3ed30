"""Top-k's error feedback on this node: the part of each update's delta that was not sent yet, on disk.

One file per job, ``ROOT/state/<job>/residual.npz`` (next to its outbox), holding the run's uid, the round
of the update it was left over from, and one float64 array per tensor. It is written (atomically) before
the update it belongs to is stored in the outbox, so a service restart adds it to the next update as if
nothing happened. Lost (deleted, unreadable, another run's, or a crash between writing it and storing
the update, which then is trained again): the next update starts from a zero residual and what it held is
never sent. Training goes on; that round is top-k without error feedback.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime import write_atomic
from schemas import check_name

__all__ = ["Residuals"]

_FILE = "residual.npz"


class Residuals:
    """The top-k residuals under ``state_dir`` (the outbox's), one per job."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def path(self, job: str) -> Path:
        return self.state_dir / check_name(job, "job name") / _FILE

    def load(self, job: str, uid: str) -> list[npt.NDArray[np.float64]] | None:
        """Run `uid`'s residual, or None (none, unreadable, or of another run: start from zero)."""
        try:
            with np.load(self.path(job), allow_pickle=False) as data:
                if str(data["uid"]) != uid:
                    return None
                count = int(data["count"])
                return [np.asarray(data[f"t{i}"], dtype=np.float64) for i in range(count)]
        except (OSError, KeyError, ValueError):
            return None

    def save(self, job: str, uid: str, round_: int, arrays: list[npt.NDArray[np.float64]]) -> None:
        """Replace the job's residual (raises OSError when it cannot be written)."""
        buffer = io.BytesIO()
        entries: dict[str, npt.NDArray[Any]] = {"uid": np.array(uid), "round": np.array(round_)}
        entries["count"] = np.array(len(arrays))
        entries.update((f"t{i}", a) for i, a in enumerate(arrays))
        np.savez(buffer, allow_pickle=False, **entries)
        path = self.path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())

    def clear(self, job: str) -> None:
        with contextlib.suppress(OSError):
            self.path(job).unlink(missing_ok=True)
