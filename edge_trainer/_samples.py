"""Which label lines are samples, what the loader skipped, and how a data error reaches the worker status.

The sample rule (issue 8; README "Datasets"). A label line is trained on when its image

1. has a sample extension: ``.jpg``, ``.jpeg``, ``.png`` or ``.bmp`` (any case);
2. is not a defect mask: a ``.png`` beside a ``.jpg``/``.jpeg``/``.bmp`` of the same stem is that
   image's ground-truth mask (the real Magnetic-tile set keeps one beside every tile);
3. is a tile, not a picture of the dataset: at most ``max_image_side`` pixels on its longer side
   (a worker parameter, default `MAX_IMAGE_SIDE` = 1024; ``0`` turns the check off). The real tiles
   are 103 to 632 px; the overview picture ``dataset.jpg`` that Sedna's ``2.txt`` names is 1888x1272.

Any other line is skipped, not failed: the loader counts it, writes it to worker.log, and the worker
API sends the count and the first `SHOWN_SKIPS` entries (``2.txt line 469: ...``) with its hello, so
they reach the worker status and the job's events. A missing, unreadable or malformed sample is a
data error instead (`DatasetError`, one line such as ``1.txt line 3: image x.jpg not found under
/data``): when it ends the script, `arm_data_error_report` sends that line to the service, which
makes it the worker's failure message; the traceback stays in worker.log.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import TracebackType

from PIL import Image

from edge_trainer._errors import DatasetError
from runtime import WorkerChannel
from schemas import WorkerEnv, WorkerFrame

__all__ = [
    "MAX_IMAGE_SIDE",
    "SAMPLE_EXTENSIONS",
    "SHOWN_SKIPS",
    "arm_data_error_report",
    "mark_reported",
    "max_image_side",
    "record_skip",
    "shown_path",
    "skip_reason",
    "skipped_samples",
]

SAMPLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_MASKED = (".jpg", ".jpeg", ".bmp")  # what a same-stem .png beside it is the mask of
MAX_IMAGE_SIDE = 1024
SHOWN_SKIPS = 5
_PARAMETER = "max_image_side"

_skips: list[str] = []  # every skip of this process, in order (the script is one job's worker)
_armed: list[bool] = []  # set once the hook is in place (a list: no global statement)


def max_image_side() -> int:
    """The ``max_image_side`` worker parameter (0: no limit), or `MAX_IMAGE_SIDE` when unset."""
    raw = os.environ.get(_PARAMETER) or os.environ.get(_PARAMETER.upper())
    if not raw:
        return MAX_IMAGE_SIDE
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise DatasetError(f"parameter {_PARAMETER} must be a whole number of pixels (0: no limit), got {raw!r}")
    return value


def skip_reason(path: Path, max_side: int) -> str | None:
    """Why the image at `path` is not a sample (the rule above), or None when it is one (or is missing)."""
    suffix = path.suffix.lower()
    if suffix not in SAMPLE_EXTENSIONS:
        return f"not a sample image (samples are {', '.join(SAMPLE_EXTENSIONS)})"
    if suffix == ".png":
        for sibling in path.parent.glob(f"{_glob_escape(path.stem)}.*"):
            if sibling.suffix.lower() in _MASKED:
                return f"a defect mask ({sibling.name} beside it is the image)"
    if max_side:
        try:
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
        except (OSError, ValueError):
            return None  # missing or unreadable: a data error, which loading the image reports
        if max(width, height) > max_side:
            return (
                f"{width}x{height} px is larger than a tile (at most {max_side} px a side, "
                f"parameter {_PARAMETER}): a picture of the dataset?"
            )
    return None


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def record_skip(entry: str) -> None:
    """Note one skipped line (``1.txt line 4: <path>: <reason>``) for the hello, and in worker.log."""
    _skips.append(entry)
    print(f"edge_trainer: skipped {entry}", file=sys.stderr)


def skipped_samples() -> tuple[int, list[str]]:
    """How many label lines this process skipped, and the first `SHOWN_SKIPS` of them."""
    return len(_skips), _skips[:SHOWN_SKIPS]


def shown_path(path: Path) -> str:
    """`path` as the user wrote it in a spec: under the node root, the url form (``/data``); else as is."""
    root = os.environ.get(WorkerEnv.NODE_ROOT)
    if root:
        with contextlib.suppress(ValueError, OSError):
            relative = path.resolve().relative_to(Path(root).resolve()).as_posix()
            return "/" if relative == "." else f"/{relative}"
    return str(path)


def mark_reported(exc: BaseException) -> None:
    """Say that `exc` went to the service already (the worker API sent it), so the exit hook does not."""
    exc.__dict__["_fl_reported"] = True


def arm_data_error_report() -> None:
    """In a script started by the node service: when a data error ends it, send its one line to the service.

    Data is loaded before ``FederatedLearning.train`` opens the worker channel, so the report goes through
    an excepthook on a duplicate of the channel's descriptor (the original stays free for ``train``). It
    runs only for an uncaught `DatasetError`: a script that catches one and goes on reports nothing.
    """
    if _armed or not os.environ.get(WorkerEnv.WORKER_FD):
        return
    _armed.append(True)
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, DatasetError) and not exc.__dict__.get("_fl_reported"):
            with contextlib.suppress(Exception):  # best effort: the exit code and worker.log still say it
                channel = WorkerChannel.from_fd(os.dup(int(os.environ[WorkerEnv.WORKER_FD])))
                try:
                    channel.send(WorkerFrame(type="error", message=str(exc)[:4000], error_kind="data"))
                finally:
                    channel.close()
        previous(kind, exc, tb)

    sys.excepthook = hook
