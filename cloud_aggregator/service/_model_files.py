"""Writing the final global model under the node root (paths resolve through `schemas.NodeRoot`), as a version.

The cloud follows the edges' rule (`runtime._model_folder`, issue 9): the job run's final weights are
a version, ``<url>/versions/<job>-<uid8>-r<round>/<model>.npz`` plus ``<model>.json``; the url's own
``<model>.npz`` and ``<model>.json`` are the latest version's (hard links) and ``<url>/latest`` names
it. The archive is written under a temporary name unique to the writer (two jobs may finish at the
same time), then `runtime.write_version` runs the sequence both writers share under `runtime.model_lock`:
the version folder is built and renamed into place, the url's files are replaced (this module's step:
``.npz`` first, the ``.json`` that describes it last), ``latest`` is swapped, and old versions are pruned
(`runtime.keep_versions()`). A crash at any step leaves whole versions and a url whose files are a whole
model.
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
from runtime import keep_versions, version_name, write_version
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
    keep: int | None = None,
) -> Path:
    """Write the version ``<url>/versions/<version>/<model_name>.npz`` (one array per tensor name) and its
    ``<model_name>.json``, make it the url's latest, keep the newest `keep` versions; return the version's ``.npz``.

    The archive is what ``np.savez`` writes (readable with ``np.load``, no pickle), with tensor names as
    keys in layout order (a repeated name gets ``_<index>``). ``meta`` must name the ``job``, its
    ``uid`` and the ``round``: they name the version (`runtime.version_name`).
    """
    folder = NodeRoot(root).resolve(url, f'Model "{model_name}" url')
    job = str(meta.get("job") or "")
    try:
        version = version_name(job, str(meta.get("uid") or ""), int(meta.get("round") or 0))
        keep = keep_versions() if keep is None else keep
    except ValueError as exc:
        raise ControllerError(f"cannot write the model under {url}: {exc}") from exc
    keys = _unique_names(names, len(arrays))
    # Unique per writer: two jobs finishing together wrote the same "<name>.npz.tmp" and interleaved.
    tag = f".tmp-{job[:64]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{model_name}.npz{tag}"
    tmp_side = folder / f".{model_name}.json{tag}"
    npz, side = f"{model_name}.npz", f"{model_name}.json"

    def fill(building: Path) -> None:
        os.link(tmp, building / npz)
        os.link(tmp_side, building / side)

    def replace_url() -> None:  # the url's own files, one by one
        os.replace(tmp, folder / npz)
        os.replace(tmp_side, folder / side)  # last: it describes the .npz now at the url

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in zip(keys, arrays, strict=True):
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        document = {**meta, "version": version, "file": npz, "keys": keys}
        tmp_side.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

        # The edge's sequence and lock too, in case both write under one root.
        target = write_version(
            folder,
            version,
            fill=fill,
            replace_url=replace_url,
            keep=keep,
            recover=lambda: _remove_dead_writers_files(folder, model_name),
        )
    except (OSError, TimeoutError) as exc:
        raise ControllerError(f"cannot write the model to {folder}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return target / npz


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
