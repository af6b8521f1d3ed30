"""Writing the final global model under the node root (paths resolve through `schemas.NodeRoot`)."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import ControllerError
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
    name first and renamed, so a reader never sees half a model. Returns the ``.npz`` path.
    """
    folder = NodeRoot(root).resolve(url, f'Model "{model_name}" url')
    npz = folder / f"{model_name}.npz"
    side = folder / f"{model_name}.json"
    keys = _unique_names(names, len(arrays))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_name(npz.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in zip(keys, arrays, strict=True):
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        os.replace(tmp, npz)
        document = {**meta, "file": npz.name, "keys": keys}
        tmp_side = side.with_name(side.name + ".tmp")
        tmp_side.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_side, side)
    except OSError as exc:
        raise ControllerError(f"cannot write the model to {folder}: {exc}") from exc
    return npz
