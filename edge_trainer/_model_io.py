"""Writing the final model at the Model url, in the Model format (runs in the training script's process).

Layouts (``<url>`` is the resolved Model url; a url that ends with the format's file suffix is written
exactly there instead, e.g. ``/model/final.keras``):

    ckpt        <url>/model.ckpt.index + model.ckpt.data-*   tf.train.Checkpoint(model=keras_model)
    keras       <url>/model.keras                            model.save
    h5          <url>/model.weights.h5                       model.save_weights
    savedmodel  <url>/saved_model/                           model.export (Keras 3); "pb" is the same
    always      <url>/model.json                             job, round, format, files, digest, ...

The checkpoint holds the model's variables and a *fresh* optimizer of the same kind and settings
(step 0, no slots), not the edge's own optimizer state: that state is local (Adam's moments of this
edge's data), so leaving it out makes every edge's final checkpoint hold the same values, while a
compiled model still restores it with ``tf.train.Checkpoint(model=m).read(prefix)`` and
``assert_existing_objects_matched()``.

An estimator without a Keras ``.model`` is saved Sedna's way, ``estimator.save(path)``.

Writes are atomic: everything goes to a staging folder next to the target, which then replaces the
target folder with two renames (files already in the target that are not part of the new model are
carried over as hard links). A crash leaves either the old model or the new one, never half of one;
a later save puts an old model back that a crash left aside, and removes stale staging folders.
A url naming a file is replaced file by file instead (each file atomically, model.json last), so the
folder around it, which may hold anything, is never moved.
TensorFlow is imported here, lazily, and nowhere in the node service.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_trainer._errors import ModelSaveError
from runtime import fsync_dir
from schemas import WorkerEnv

__all__ = ["FORMATS", "SavedModel", "save_model"]

# format -> (default artifact name in the model folder, url suffixes that mean "write exactly here")
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ckpt": ("model.ckpt", (".ckpt",)),
    "keras": ("model.keras", (".keras",)),
    "h5": ("model.weights.h5", (".h5",)),
    "savedmodel": ("saved_model", ()),
    "pb": ("saved_model", ()),
}
METADATA_FILE = "model.json"
_STAGING = ".staging-"
_OLD = ".old-"


@dataclass(frozen=True)
class SavedModel:
    """Where the model went: `path` is the artifact (checkpoint prefix, file or folder)."""

    path: Path
    directory: Path
    files: tuple[str, ...]
    metadata: Path


def save_model(
    estimator: Any,
    url: str | Path,
    fmt: str,
    *,
    job: str,
    round_: int,
    digest: str,
    num_tensors: int,
    model_name: str | None = None,
) -> SavedModel:
    """Save `estimator`'s model at `url` in format `fmt`, atomically; write model.json beside it."""
    if fmt not in FORMATS:
        raise ModelSaveError(f"unknown model format {fmt!r}: expected one of {', '.join(FORMATS)}")
    default_name, suffixes = FORMATS[fmt]
    target = Path(url)
    if suffixes and target.name.endswith(suffixes) and target.name not in suffixes:
        directory, name = target.parent, target.name
    else:
        directory, name = target, default_name
    if directory.exists() and not directory.is_dir():
        raise ModelSaveError(
            f"Model url {directory} is a file; expected a folder or a path ending in {suffixes or '/'}"
        )
    node_root = os.environ.get(WorkerEnv.NODE_ROOT)
    if node_root and directory.resolve() == Path(node_root).resolve():
        raise ModelSaveError(f"Model url {url} is the node root itself; give the model its own folder, e.g. /model")
    file_form = directory != target  # the url names the file itself
    (directory if file_form else directory.parent).mkdir(parents=True, exist_ok=True)
    _recover(directory)
    tag = uuid.uuid4().hex[:12]
    staging = directory / f"{_STAGING}{tag}" if file_form else directory.parent / f".{directory.name}{_STAGING}{tag}"
    staging.mkdir()
    try:
        artifact = _write(estimator, staging, name, fmt)
        files = tuple(sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()))
        if not files:
            raise ModelSaveError(f"saving the model in format {fmt!r} wrote no file")
        meta = {
            "job": job,
            "round": round_,
            "format": fmt,
            "modelName": model_name,
            "path": artifact,
            "files": list(files),
            "digest": digest,
            "numTensors": num_tensors,
            "created": datetime.now(UTC).isoformat(),
        }
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _sync_tree(staging)
        if file_form:
            _replace_files(staging, directory)
        else:
            _replace_dir(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SavedModel(path=directory / artifact, directory=directory, files=files, metadata=directory / METADATA_FILE)


# -- writing -----------------------------------------------------------------------------------


def _write(estimator: Any, staging: Path, name: str, fmt: str) -> str:
    """Write the model into `staging`; return the artifact's name relative to it."""
    model = getattr(estimator, "model", None)
    if model is None or not hasattr(model, "weights"):
        return _write_with_estimator(estimator, staging, name)
    try:
        if fmt == "ckpt":
            _write_checkpoint(model, staging / name)
        elif fmt == "keras":
            model.save(str(staging / "model.keras"))
            os.replace(staging / "model.keras", staging / name)
        elif fmt == "h5":
            # Keras 3 insists on the ".weights.h5" suffix; the url may name the file otherwise.
            model.save_weights(str(staging / "model.weights.h5"))
            os.replace(staging / "model.weights.h5", staging / name)
        else:
            model.export(str(staging / name))
    except ModelSaveError:
        raise
    except Exception as exc:  # TensorFlow and Keras raise many kinds; the user needs the reason
        raise ModelSaveError(f"saving the Keras model as {fmt!r} failed: {type(exc).__name__}: {exc}") from exc
    return name


def _write_with_estimator(estimator: Any, staging: Path, name: str) -> str:
    save = getattr(estimator, "save", None)
    if not callable(save):
        raise ModelSaveError("the estimator has neither a Keras .model nor a save(path) method")
    try:
        returned = save(str(staging / name))
    except Exception as exc:
        raise ModelSaveError(f"estimator.save failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(returned, (str, os.PathLike)):
        path = Path(returned)
        if path.is_relative_to(staging):
            return path.relative_to(staging).as_posix()
    return name


def _write_checkpoint(model: Any, prefix: Path) -> None:
    import keras
    import tensorflow as tf

    optimizer = getattr(model, "optimizer", None)
    fresh = None
    if optimizer is not None:
        try:
            fresh = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
        except Exception as exc:  # a custom optimizer without a config: save the weights alone
            print(f"edge_trainer: optimizer left out of the checkpoint: {exc}", file=sys.stderr)

    class _WeightsView(tf.__internal__.tracking.Trackable):  # type: ignore[misc]
        """The model's checkpoint children, with a fresh optimizer in place of the trained one."""

        def _trackable_children(self, save_type: str = "checkpoint", **kwargs: Any) -> dict[str, Any]:
            children = dict(model._trackable_children(save_type, **kwargs))
            children.pop("optimizer", None)
            if fresh is not None:
                children["optimizer"] = fresh
            return children

    tf.train.Checkpoint(model=_WeightsView()).write(str(prefix))


# -- atomic replacement ------------------------------------------------------------------------


def _recover(directory: Path) -> None:
    """Undo what a crash in an earlier save left: put an old model back, remove stale staging."""
    parent, base = directory.parent, f".{directory.name}"
    olds = sorted(parent.glob(f"{base}{_OLD}*"))
    if olds and not directory.exists():
        os.rename(olds.pop(), directory)
    stale = [*olds, *parent.glob(f"{base}{_STAGING}*")]
    if directory.is_dir():
        stale += directory.glob(f"{_STAGING}*")
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def _replace_files(staging: Path, directory: Path) -> None:
    """A url naming a file: move each new file in (each atomically), checkpoint index and model.json last."""
    names = sorted(
        (p.name for p in staging.iterdir() if p.name != METADATA_FILE), key=lambda n: (n.endswith(".index"), n)
    )
    for name in [*names, METADATA_FILE]:
        os.replace(staging / name, directory / name)
    fsync_dir(directory)


def _replace_dir(staging: Path, directory: Path) -> None:
    if not directory.exists():
        os.rename(staging, directory)
        fsync_dir(directory.parent)
        return
    produced = {p.name for p in staging.iterdir()}
    for entry in directory.iterdir():
        if entry.name not in produced and not entry.name.startswith((_STAGING, _OLD)):
            _link_into(entry, staging / entry.name)
    old = directory.parent / f".{directory.name}{_OLD}{uuid.uuid4().hex[:12]}"
    os.rename(directory, old)
    os.rename(staging, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def _link_into(src: Path, dst: Path) -> None:
    """Carry a file or folder the user keeps in the model folder into the new one (hard links, no copy)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _sync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)
