"""Writing the final model at the Model url, in the Model format, as a new version (runs in the training script's process).

Layouts (``<url>`` is the resolved Model url; a url that ends with the format's file suffix is written
exactly there instead, e.g. ``/model/final.keras``, and the folder holding it plays the url's part):

    ckpt        <url>/model.ckpt.index + model.ckpt.data-*   tf.train.Checkpoint(model=keras_model)
    keras       <url>/model.keras                            model.save
    h5          <url>/model.weights.h5                       model.save_weights
    savedmodel  <url>/saved_model/                           model.export (Keras 3); "pb" is the same
    always      <url>/model.json                             job, uid, round, version, metrics, digest, files, ...

Every save is a version (`runtime.version_name`: ``<job>-<uid8>-r<round>``, issue 9): the files and
model.json go to ``<url>/versions/<version>/``, and the url itself holds the latest version's files
(hard links, no copy) and its ``latest`` pointer (``latest -> versions/<version>``), so Sedna scripts
that read ``/model/model.ckpt`` read the newest model and no job ever replaces another job's model.
`SavedModel.path` (the worker's ``modelPath``) names the version's artifact. Retention keeps the newest
`runtime.keep_versions()` versions of the url (see `runtime._model_folder`).

The checkpoint holds the model's variables and a *fresh* optimizer of the same kind and settings
(step 0, no slots), not the edge's own optimizer state: that state is local (Adam's moments of this
edge's data), so leaving it out makes every edge's final checkpoint hold the same values, while a
compiled model still restores it with ``tf.train.Checkpoint(model=m).read(prefix)`` and
``assert_existing_objects_matched()``.

An estimator without a Keras ``.model`` is saved Sedna's way, ``estimator.save(path)``.

Writes are atomic and ordered so that a crash at any step leaves whole models: the model is written to
a staging folder next to the url without a lock (the slow part); then `runtime.write_version` runs the
sequence the cloud's writer runs too, under `runtime.model_lock`: the version folder is built from
staging with hard links and renamed into ``versions/`` (a version is there whole or not at all), then
this module's step replaces the url: the ``latest`` symlink is put into staging, and staging replaces
the url folder with two renames (what the url held besides the model, ``versions/`` included, is
carried over as hard links), so the url's files, its model.json and ``latest`` change together. Last,
old versions are pruned. A url naming a file is replaced file by file instead (each file atomically,
model.json last, then ``latest``), so the folder around it, which may hold anything, is never moved.

Two jobs may save to the same Model url at the same time (issue 8): each writes its own version, the
url holds whichever was saved last. Staging folders are named after the job run and the writing
process (``.<name>.staging-<job>.<run>.<pid>.<random>``), and recovery removes only those of this job
run or of a process that no longer exists, so it never takes a live writer's staging for a crash's
leftover; an old model a crash left aside (only ever seen under the lock, so its writer is dead) is
put back. TensorFlow is imported here, lazily, and nowhere in the node service.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_trainer._errors import ModelSaveError
from runtime import (
    MODEL_LATEST,
    MODEL_VERSIONS_FOLDER,
    fsync_dir,
    fsync_tree,
    keep_versions,
    version_name,
    write_version,
)
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
    """Where the model went: `path` is the version's artifact (checkpoint prefix, file or folder) under
    ``versions/<version>/`` (`directory`); `latest` is the same artifact at the url."""

    path: Path
    directory: Path
    files: tuple[str, ...]
    metadata: Path
    version: str
    latest: Path


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
    run: str = "",
    metrics: Mapping[str, float] | None = None,
    keep: int | None = None,
) -> SavedModel:
    """Save `estimator`'s model at `url` in format `fmt` as the version of this job run and round; write
    model.json beside it; make it the url's latest; keep the newest `keep` versions (default:
    `runtime.keep_versions()`).

    `run` is the job run (its uid): it names the version, and staging folders carry it so recovery
    tells this run's leftovers from another run's work in progress. `metrics` (the last round's) go
    into model.json.
    """
    if fmt not in FORMATS:
        raise ModelSaveError(f"unknown model format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not job:
        raise ModelSaveError(f"no job name to save the model under (is {WorkerEnv.JOB_NAME} set?)")
    try:
        version = version_name(job, run, round_)
        keep = keep_versions() if keep is None else keep
    except ValueError as exc:
        raise ModelSaveError(f"cannot save the model: {exc}") from exc
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
    directory.parent.mkdir(parents=True, exist_ok=True)
    key = _run_key(job, run)
    staging = directory.parent / f".{directory.name}{_STAGING}{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        artifact = _write(estimator, staging, name, fmt)
        files = tuple(sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()))
        if not files:
            raise ModelSaveError(f"saving the model in format {fmt!r} wrote no file")
        meta = {
            "job": job,
            "uid": run or None,
            "round": round_,
            "version": version,
            "metrics": dict(metrics or {}),
            "format": fmt,
            "modelName": model_name,
            "path": artifact,
            "files": list(files),
            "digest": digest,
            "numTensors": num_tensors,
            "created": datetime.now(UTC).isoformat(),
        }
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        fsync_tree(staging)
        try:
            folder = _commit(staging, directory, version, key=key, keep=keep, file_form=file_form)
        except TimeoutError as exc:
            raise ModelSaveError(f"cannot save at Model url {url}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SavedModel(
        path=folder / artifact,
        directory=folder,
        files=files,
        metadata=folder / METADATA_FILE,
        version=version,
        latest=directory / artifact,
    )


def _commit(staging: Path, directory: Path, version: str, *, key: str, keep: int, file_form: bool) -> Path:
    """The version folder from staging (hard links), then the url's files and ``latest`` (`runtime.write_version`)."""

    def fill(building: Path) -> None:
        for entry in staging.iterdir():
            _link_into(entry, building / entry.name)

    def swap_folder() -> None:
        os.symlink(f"{MODEL_VERSIONS_FOLDER}/{version}", staging / MODEL_LATEST)
        _replace_dir(staging, directory)  # the url's files, model.json and latest change with one rename

    return write_version(
        directory,
        version,
        fill=fill,
        # A url naming a file: its folder may hold anything, so it is never moved; write_version sets latest.
        replace_url=(lambda: _replace_files(staging, directory)) if file_form else swap_folder,
        replaces_latest=not file_form,
        keep=keep,
        recover=lambda: _recover(directory, key),
    )


def _run_key(job: str, run: str) -> str:
    """`<job>.<hash of job and run>`: readable, unique per job run, and short enough for a file name."""
    digest = hashlib.sha256(f"{job}\0{run}".encode()).hexdigest()[:12]
    return f"{job[:64]}.{digest}"


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


def _recover(directory: Path, key: str) -> None:
    """Undo what a crashed save left (called under the folder's lock): put an old model back; remove staging
    folders of this job run (`key`) or of processes that are gone, never a live writer's."""
    parent, base = directory.parent, f".{directory.name}"
    olds = sorted(parent.glob(f"{base}{_OLD}*"))
    if olds and not directory.exists():
        os.rename(olds.pop(), directory)
    stale = [*olds, *(p for p in parent.glob(f"{base}{_STAGING}*") if _stale(p.name, f"{base}{_STAGING}", key))]
    if directory.is_dir():  # staging inside the folder: what saves of a url naming a file made before issue 8
        stale += directory.glob(f"{_STAGING}*")
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def _stale(name: str, prefix: str, key: str) -> bool:
    """Whether a staging folder is a leftover: this job run's, or one whose writer's process is gone.

    A folder named before issue 8 (``<prefix><random>``, no pid) counts as a leftover, as it did then.
    A reused pid keeps a dead writer's folder until that process ends too: a leak, never a loss.
    """
    parts = name.removeprefix(prefix).rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    owner, pid = parts[0], int(parts[1])
    if owner == key and pid != os.getpid():
        return True  # an earlier attempt of this run (a run's script runs once at a time on a node)
    if pid == os.getpid():
        return False  # this process is writing it (another thread)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


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
