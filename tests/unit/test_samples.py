"""Datasets laid out like the real one (issue 8): which label lines are samples, what is skipped, and
data errors that read as data errors (one line naming the label file, the line and the image)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_trainer import DatasetError, TxtDataParse, load_dataset, load_image, read_label_file
from flctl.synth import DATASET_DIRNAME, synthesize


def real_layout(root: Path) -> tuple[Path, list[str]]:
    """A tiny synthetic set in the real layout (a .png mask beside every .jpg tile), its label lines,
    plus the real set's traps: an overview picture, its .png, and the README."""
    report = synthesize(root, scale=0.01, seed=5, size_range=(16, 24))
    dataset = root / DATASET_DIRNAME
    Image.new("RGB", (1888, 40)).save(dataset / "dataset.jpg")  # wider than a tile, like the real 1888x1272
    Image.new("RGB", (1888, 40)).save(dataset / "dataset.png")
    (dataset / "README.md").write_text("# the dataset\n")
    lines = report.label_file("1.txt").read_text().splitlines()[:3]
    return dataset, lines


def labels(folder: Path, lines: list[str], name: str = "1.txt") -> Path:
    path = folder / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def image_process(base: Path) -> Callable[[str], list[np.ndarray]]:
    def func(line: str) -> list[np.ndarray]:
        path, label = line.split(",")
        return [load_image(base / path, (16, 16)), np.eye(2)[int(label)]]

    return func


def test_masks_overview_pictures_and_non_images_are_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each skip is one line in worker.log (stderr); the worker status gets them through the hello (integration)."""
    dataset, tiles = real_layout(tmp_path)
    mask = tiles[0].split(",")[0].removesuffix(".jpg") + ".png"
    label_file = labels(
        tmp_path,
        [
            tiles[0],
            f"{mask},1",  # line 2: the tile's defect mask
            f"{DATASET_DIRNAME}/dataset.jpg,1",  # line 3: Sedna's 2.txt line 469
            tiles[1],
            f"{DATASET_DIRNAME}/README.md,0",  # line 5
            tiles[2],
        ],
    )
    capsys.readouterr()

    data = TxtDataParse(data_type="train", func=image_process(tmp_path))
    data.parse(label_file)

    assert len(data) == 3 and np.asarray(data.x).shape == (3, 16, 16, 3)
    logged = [line.removeprefix("edge_trainer: skipped ") for line in capsys.readouterr().err.splitlines()]
    assert len(logged) == 3
    assert logged[0].startswith(f"1.txt line 2: {mask}: a defect mask (")
    assert logged[1].startswith(f"1.txt line 3: {DATASET_DIRNAME}/dataset.jpg: 1888x40 px is larger than a tile")
    assert logged[2].startswith(f"1.txt line 5: {DATASET_DIRNAME}/README.md: not a sample image")
    assert [s.relpath for s in read_label_file(label_file)] == [t.split(",")[0] for t in tiles]
    assert load_dataset(label_file, (16, 16))[0].shape == (3, 16, 16, 3)
    assert dataset.is_dir()


def test_a_png_without_a_jpg_beside_it_is_a_sample(tmp_path: Path) -> None:
    Image.new("L", (20, 20)).save(tmp_path / "tile.png")
    assert len(read_label_file(labels(tmp_path, ["tile.png,0"]))) == 1


def test_max_image_side_parameter_moves_or_turns_off_the_tile_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("L", (300, 20)).save(tmp_path / "wide.jpg")
    Image.new("L", (20, 20)).save(tmp_path / "small.jpg")
    label_file = labels(tmp_path, ["wide.jpg,0", "small.jpg,1"])
    assert len(read_label_file(label_file)) == 2
    monkeypatch.setenv("max_image_side", "256")
    assert [s.relpath for s in read_label_file(label_file)] == ["small.jpg"]
    monkeypatch.setenv("max_image_side", "0")
    Image.new("L", (5000, 4)).save(tmp_path / "wide.jpg")
    assert len(read_label_file(label_file)) == 2
    monkeypatch.setenv("max_image_side", "big")
    with pytest.raises(DatasetError, match="parameter max_image_side must be a whole number"):
        read_label_file(label_file)


def test_missing_image_is_one_line_in_the_users_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's message, word for word: the label file by name, the line, the image, the folder as a url."""
    root = tmp_path / "edge1"
    data = root / "data"
    (data / "MT_Free" / "Imgs").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("L", (20, 20)).save(data / "MT_Free" / "Imgs" / f"{name}.jpg")
    label_file = labels(data, ["MT_Free/Imgs/a.jpg,0", "MT_Free/Imgs/b.jpg,0", "MT_Free/Imgs/x.jpg,0"])
    monkeypatch.setenv("FL_NODE_ROOT", str(root))
    expected = "1.txt line 3: image MT_Free/Imgs/x.jpg not found under /data"

    with pytest.raises(DatasetError) as parsed:
        TxtDataParse(data_type="train", func=image_process(data)).parse(label_file)
    with pytest.raises(DatasetError) as read:
        read_label_file(label_file)

    assert str(parsed.value) == expected and str(read.value) == expected
    assert (parsed.value.path, parsed.value.line) == (label_file, 3)


def test_a_corrupt_image_is_a_one_line_data_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError, match=r"^1\.txt line 1: image bad\.jpg cannot be read: [^\n]+$"):
        TxtDataParse(data_type="train", func=image_process(tmp_path)).parse(labels(tmp_path, ["bad.jpg,1"]))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], "1.txt: no samples: the label file is empty"),
        (["", "  "], "1.txt: no samples: the label file is empty"),
        (["notes.txt,0", "other.md,1"], "1.txt: no samples: all 2 lines were skipped"),
    ],
)
def test_a_label_file_without_samples_is_a_data_error(tmp_path: Path, lines: list[str], expected: str) -> None:
    label_file = labels(tmp_path, lines)
    with pytest.raises(DatasetError, match=f"^{expected}"):
        TxtDataParse(data_type="train", func=image_process(tmp_path)).parse(label_file)
    with pytest.raises(DatasetError, match=f"^{expected}"):
        read_label_file(label_file)
