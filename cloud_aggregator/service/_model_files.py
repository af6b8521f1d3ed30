"""Writing the final global model under the node root (paths resolve through `schemas.NodeRoot`).

Two jobs may name the same Model and finish at the same time (issue 8): the model files are written
under temporary names unique to the writer, then the folder is chosen and the files renamed into it
under `runtime.model_lock`. The folder follows `runtime.job_model_folder`: when the url holds another
job's model of this name (its ``<model_name>.json`` names another job), this job's goes to
``<url>/jobs/<job>/`` and the returned path says so; no job replaces another job's model.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import ControllerError
from runtime import job_model_folder, model_lock
from schemas import NodeRoot

__all__ = ["write_model"]


def _unique_names(names: Sequence[str], count: int) -> list[str]:
    names = list(names) if len(names) == count else [f"w{i}" for i in range(count)]
    seen: set[str] = set()
    out: list[str] = []
    for i, name in enumerate(names):
        key = name if name not in seen else f"{name}_{i}"
        seen.add(key)
        out.append(key)
    return out


def write_model(
    root: Path,
    *,
    url: str,
    model_name: str,
    arrays: Sequence[npt.NDArray[Any]],
    names: Sequence[str],
    meta: Mapping[str, Any],
) -> Path:
    """Write ``<url under root>/<model_name>.npz`` (one array per tensor name) and ``<model_name>.json``.

    The archive is what ``np.savez`` writes (readable with ``np.load``, no pickle), with tensor names as
    keys in layout order (a repeated name gets ``_<index>``). Both files are written to a temporary
    name first and renamed, so a reader never sees half a model. ``meta["job"]`` decides the folder
    (the module docstring): the url, or ``<url>/jobs/<job>/`` when the url holds another job's model.
    Returns the ``.npz`` path.
    """
    folder = NodeRoot(root).resolve(url, f'Model "{model_name}" url')
    job = str(meta.get("job") or "")
    keys = _unique_names(names, len(arrays))
    # Unique per writer: two jobs finishing together wrote the same "<name>.npz.tmp" and interleaved.
    tag = f".tmp-{job[:64]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{model_name}.npz{tag}"
    tmp_side = folder / f".{model_name}.json{tag}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in zip(keys, arrays, strict=True):
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        with model_lock(folder):  # the lock the edge takes too, in case both write under one root
            _remove_dead_writers_files(folder, model_name)
            target = job_model_folder(folder, job, _owner(folder / f"{model_name}.json")) if job else folder
            target.mkdir(parents=True, exist_ok=True)
            npz = target / f"{model_name}.npz"
            document = {**meta, "file": npz.name, "keys": keys}
            tmp_side.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, npz)
            os.replace(tmp_side, target / f"{model_name}.json")  # last: it names the job the folder now belongs to
    except (OSError, TimeoutError) as exc:
        raise ControllerError(f"cannot write the model to {folder}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return npz


def _remove_dead_writers_files(folder: Path, model_name: str) -> None:
    """Temporary files of a writer that crashed (``.<name>.npz.tmp-<job>.<pid>.<random>``, its pid gone)."""
    for path in folder.glob(f".{model_name}.*.tmp-*"):
        pid = path.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def _owner(side: Path) -> str | None:
    """The job named by a model's ``.json`` side file, None when there is none (or it is not ours)."""
    try:
        job = json.loads(side.read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        return None
    return job if isinstance(job, str) and job else None
