"""`copy_split`: one label file and exactly the images (and masks) it lists, e.g. one edge's share."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath


def _referenced_images(label_file: Path) -> list[tuple[int, PurePosixPath]]:
    """(line number, relative image path) pairs, validated so a copy can never escape ``dest_dir``."""
    paths: list[tuple[int, PurePosixPath]] = []
    for number, line in enumerate(label_file.read_text(encoding="utf-8").split("\n"), start=1):
        text = line.strip()
        if not text:
            continue
        rel, sep, label = text.rpartition(",")
        if not sep or not rel or label not in ("0", "1"):
            raise ValueError(f"{label_file}:{number}: expected '<relative image path>,<0|1>', got {text!r}")
        path = PurePosixPath(rel.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{label_file}:{number}: image path must be relative and inside the dataset: {rel!r}")
        paths.append((number, path))
    return paths


def copy_split(dataset_root: Path, label_file: Path, dest_dir: Path) -> int:
    """Copy ``label_file`` and exactly the images (and their masks) it references into ``dest_dir``.

    ``dataset_root`` is the folder the label file's paths are relative to (the one holding
    ``Magnetic-tile-defect-datasets``). Relative paths are preserved, so ``dest_dir/<label file>``
    is directly usable by an edge that must hold only its own share of the data. A mask (same
    name, ``.png``) is copied when present. Returns the number of distinct images copied; a
    missing image raises ``FileNotFoundError`` naming the label file and line.
    """
    dataset_root, label_file, dest_dir = Path(dataset_root), Path(label_file), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    copied: set[PurePosixPath] = set()
    for number, rel in _referenced_images(label_file):
        if rel in copied:
            continue
        src = dataset_root.joinpath(*rel.parts)
        if not src.is_file():
            raise FileNotFoundError(f"{label_file}:{number}: referenced image not found: {src}")
        dst = dest_dir.joinpath(*rel.parts)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        mask = src.with_suffix(".png")
        if mask.is_file():
            shutil.copyfile(mask, dst.with_suffix(".png"))
        copied.add(rel)
    shutil.copyfile(label_file, dest_dir / label_file.name)
    return len(copied)
