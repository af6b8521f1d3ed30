"""Label files, image preprocessing and TxtDataParse (edge_trainer._data), on a tiny synthetic dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_trainer import (
    DatasetError,
    EdgeTrainerError,
    LabeledSample,
    TxtDataParse,
    load_dataset,
    load_image,
    parse_label_line,
    read_label_file,
)
from flctl.synth import SynthReport, synthesize

SIZE = (32, 48)  # small images: the whole module runs in about a second


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("synth"), scale=0.05, seed=3, size_range=SIZE)


def write_labels(folder: Path, text: str, name: str = "labels.txt") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def sedna_image_process(base: Path) -> Callable[[str], list[np.ndarray]]:
    """Sedna's example func: ``(image array, inverted one-hot label)`` for one line."""

    def func(line: str) -> list[np.ndarray]:
        file_path, label = line.split(",")
        data = load_image(base / file_path)
        return [data, np.array([0, 1] if int(label) == 0 else [1, 0])]

    return func


# -- read_label_file -------------------------------------------------------------------------------


def test_read_label_file_counts_match_the_generated_split(synth: SynthReport) -> None:
    """Every split file yields one sample per line, with as many defects as the generator wrote."""
    for name in ("1.txt", "2.txt", "test.txt"):
        samples = read_label_file(synth.label_file(name))
        assert len(samples) == synth.split_counts[name]
        assert sum(s.label for s in samples) == synth.split_defects[name]


def test_labels_are_binary_and_match_the_class_folder(synth: SynthReport) -> None:
    """Label 0 exactly for MT_Free images, 1 for every defect class."""
    for sample in read_label_file(synth.label_file("1.txt")):
        assert sample.label in (0, 1)
        assert (sample.label == 0) == ("/MT_Free/" in sample.relpath)


def test_paths_are_joined_with_the_label_files_folder(synth: SynthReport) -> None:
    """An image path is relative to the label file's folder and points at an existing .jpg."""
    sample = read_label_file(synth.label_file("2.txt"))[0]
    assert sample.path == synth.out_dir / sample.relpath
    assert sample.path.is_file() and sample.path.suffix == ".jpg"


def test_image_root_overrides_the_label_files_folder(synth: SynthReport, tmp_path: Path) -> None:
    """image_root (Sedna's original_dataset_url) replaces the folder paths are relative to."""
    moved = tmp_path / "labels.txt"
    moved.write_bytes(synth.label_file("1.txt").read_bytes())
    samples = read_label_file(moved, image_root=synth.out_dir)
    assert all(s.path.is_file() for s in samples)


# -- load_image / load_dataset ---------------------------------------------------------------------


def test_load_image_is_float32_rgb_128_in_unit_range(synth: SynthReport) -> None:
    """load_image returns float32 128x128x3 in [0, 1] from a grayscale JPEG."""
    sample = read_label_file(synth.label_file("1.txt"))[0]
    with Image.open(sample.path) as original:
        assert original.mode == "L"
    img = load_image(sample.path)
    assert img.shape == (128, 128, 3) and img.dtype == np.float32
    assert 0.0 <= float(img.min()) <= float(img.max()) <= 1.0
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_load_image_equals_sednas_pil_pipeline(synth: SynthReport) -> None:
    """Pixels equal PIL convert("RGB").resize((128, 128)) with the default filter, divided by 255."""
    path = read_label_file(synth.label_file("test.txt"))[0].path
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB").resize((128, 128)), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(load_image(path), expected)


def test_load_image_honours_size_as_width_height(synth: SynthReport) -> None:
    """size is (width, height) like PIL, so the array is height x width x 3."""
    path = read_label_file(synth.label_file("test.txt"))[0].path
    assert load_image(path, (20, 10)).shape == (10, 20, 3)


def test_load_image_unreadable_file_raises_dataset_error(tmp_path: Path) -> None:
    """A file that is not an image raises DatasetError naming it."""
    bogus = tmp_path / "not-an-image.jpg"
    bogus.write_text("hello")
    with pytest.raises(DatasetError, match=r"not-an-image\.jpg"):
        load_image(bogus)


def test_load_dataset_shapes_and_labels(synth: SynthReport) -> None:
    """load_dataset gives x (N,128,128,3) float32 in [0,1] and raw int labels y (N,)."""
    x, y = load_dataset(synth.label_file("test.txt"))
    n = synth.split_counts["test.txt"]
    assert x.shape == (n, 128, 128, 3) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) <= {0, 1} and int(y.sum()) == synth.split_defects["test.txt"]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a.jpg,2", "label must be 0 or 1"),
        ("a.jpg,", "label must be 0 or 1"),
        ("a.jpg, 1", "label must be 0 or 1"),
        ("a.jpg", "expected '<relative image path>,<0|1>'"),
        ("a.jpg,1,0", "expected '<relative image path>,<0|1>'"),
        (",1", "image path is empty"),
        ("/etc/passwd,1", "must be relative"),
        ("../outside.jpg,0", "'..' is not allowed"),
    ],
)
def test_bad_line_raises_dataset_error_naming_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    """A malformed line raises DatasetError whose message names the label file, the line and the rule."""
    (tmp_path / "ok.jpg").write_bytes(b"")
    labels = write_labels(tmp_path, f"ok.jpg,0\n\n{line}\n")
    with pytest.raises(DatasetError) as info:
        read_label_file(labels, check_images=False)
    message = str(info.value)
    assert message.startswith("labels.txt line 3: ")
    assert expected in message
    assert info.value.path == labels and info.value.line == 3


def test_dataset_error_belongs_to_the_edge_trainer_family() -> None:
    """DatasetError derives from EdgeTrainerError and keeps path and line."""
    err = DatasetError("boom", path="x.txt", line=4)
    assert isinstance(err, EdgeTrainerError)
    assert err.path == Path("x.txt") and err.line == 4


def test_missing_image_raises_naming_file_and_line(tmp_path: Path) -> None:
    """A line whose image does not exist raises DatasetError with the label file and the line."""
    labels = write_labels(tmp_path, "gone/missing.jpg,1\n")
    with pytest.raises(DatasetError) as info:
        read_label_file(labels)
    assert str(info.value) == f"labels.txt line 1: image gone/missing.jpg not found under {tmp_path}"
    assert info.value.line == 1


def test_missing_label_file_raises(tmp_path: Path) -> None:
    """A label file that does not exist raises DatasetError naming it."""
    with pytest.raises(DatasetError, match=r"label file .*nope\.txt not found"):
        read_label_file(tmp_path / "nope.txt")


def test_blank_lines_are_ignored_and_crlf_is_tolerated(tmp_path: Path) -> None:
    """Blank lines are skipped (still counted for line numbers) and a trailing CR is stripped."""
    (tmp_path / "a.jpg").write_bytes(b"")
    labels = write_labels(tmp_path, "\n\na.jpg,1\r\n   \n")
    assert read_label_file(labels) == [LabeledSample(path=tmp_path / "a.jpg", label=1, relpath="a.jpg")]


def test_parse_label_line_joins_with_base_dir() -> None:
    """parse_label_line keeps the relative path and joins it with base_dir, without touching disk."""
    sample = parse_label_line("Magnetic-tile-defect-datasets/MT_Free/Imgs/exp1_num_5907.jpg,0", "/data")
    assert sample.label == 0
    assert sample.path == Path("/data/Magnetic-tile-defect-datasets/MT_Free/Imgs/exp1_num_5907.jpg")


def test_load_dataset_names_the_line_of_a_broken_image(tmp_path: Path) -> None:
    """An existing but unreadable image fails load_dataset with the label file and line."""
    (tmp_path / "bad.jpg").write_text("not a jpeg")
    labels = write_labels(tmp_path, "\nbad.jpg,0\n")
    with pytest.raises(DatasetError, match=r"^labels\.txt line 2: image bad\.jpg cannot be read: ") as info:
        load_dataset(labels)
    assert info.value.line == 2


# -- TxtDataParse ----------------------------------------------------------------------------------


def test_txtdataparse_with_sedna_func_stacks_arrays(synth: SynthReport) -> None:
    """With Sedna's image_process, x is (N,128,128,3) and y the inverted one-hot (N,2)."""
    data = TxtDataParse(data_type="train", func=sedna_image_process(synth.out_dir))
    data.parse(synth.label_file("1.txt"))
    n = synth.split_counts["1.txt"]
    assert len(data) == data.num_examples() == n
    assert isinstance(data.x, np.ndarray) and data.x.shape == (n, 128, 128, 3)
    assert isinstance(data.y, np.ndarray) and data.y.shape == (n, 2)
    # raw 1 (defect) -> [1, 0]: column 0 counts the defects
    assert int(data.y[:, 0].sum()) == synth.split_defects["1.txt"]


def test_txtdataparse_without_func_keeps_paths_and_int_labels(synth: SynthReport) -> None:
    """Without func, x holds image paths (joined with the label folder) and y the 0/1 labels as lists."""
    data = TxtDataParse(data_type="train")
    data.parse(synth.label_file("2.txt"))
    assert isinstance(data.x, list) and isinstance(data.y, list)
    assert len(data.x) == synth.split_counts["2.txt"]
    assert all(Path(p).is_file() for p in data.x)
    assert sum(data.y) == synth.split_defects["2.txt"]


def test_txtdataparse_parses_several_files_in_order(synth: SynthReport) -> None:
    """parse(*files) concatenates the files in the given order."""
    data = TxtDataParse(data_type="train")
    data.parse(synth.label_file("1.txt"), synth.label_file("2.txt"))
    first = [str(s.path) for s in read_label_file(synth.label_file("1.txt"))]
    assert len(data) == synth.split_counts["1.txt"] + synth.split_counts["2.txt"]
    assert data.x[: len(first)] == first


def test_txtdataparse_test_type_collects_no_labels(synth: SynthReport) -> None:
    """data_type="test" fills x but leaves y empty, as Sedna does."""
    data = TxtDataParse(data_type="test")
    data.parse(synth.label_file("test.txt"))
    assert len(data) == synth.split_counts["test.txt"]
    assert len(data.y) == 0


def test_txtdataparse_none_file_gives_an_empty_falsy_dataset() -> None:
    """parse(None) (no TEST_DATASET_URL configured) leaves an empty dataset whose len() is 0."""
    data = TxtDataParse(data_type="eval", func=lambda line: [line, 0])
    data.parse(None)
    assert len(data) == 0 and not data


def test_txtdataparse_reparse_replaces_content(synth: SynthReport) -> None:
    """Each parse() replaces what an earlier parse() loaded."""
    data = TxtDataParse(data_type="train")
    data.parse(synth.label_file("1.txt"))
    data.parse(synth.label_file("test.txt"))
    assert len(data) == synth.split_counts["test.txt"]


def test_txtdataparse_func_gets_stripped_lines_and_empty_results_are_skipped(tmp_path: Path) -> None:
    """func receives each non-blank line stripped; an empty result skips the sample; use_raw keeps it whole."""
    labels = write_labels(tmp_path, "a.jpg,0\r\n\nb.jpg,1\n")
    seen: list[str] = []

    def func(line: str) -> Sequence[object]:
        seen.append(line)
        return [] if line.startswith("a") else (line, 1, "extra")

    data = TxtDataParse(data_type="train", func=func)
    data.parse(labels)
    assert seen == ["a.jpg,0", "b.jpg,1"]
    assert data.x == ["b.jpg,1"] and data.y == [1]
    data.parse(labels, use_raw=True)
    assert data.x == [("b.jpg,1", 1, "extra")] and data.y == []


def test_txtdataparse_validates_lines_before_calling_func(tmp_path: Path) -> None:
    """A malformed line raises DatasetError with file and line; func is never called with it."""
    labels = write_labels(tmp_path, "a.jpg,0\na.jpg,yes\n")
    calls: list[str] = []

    def func(line: str) -> list[object]:
        calls.append(line)
        return [line, 0]

    data = TxtDataParse(data_type="train", func=func)
    with pytest.raises(DatasetError, match=r"labels\.txt line 2: label must be 0 or 1"):
        data.parse(labels)
    assert calls == ["a.jpg,0"]


def test_txtdataparse_wraps_func_errors_with_the_location(tmp_path: Path) -> None:
    """A missing image inside func becomes a DatasetError naming the label file and line."""
    labels = write_labels(tmp_path, "\nmissing.jpg,1\n")
    data = TxtDataParse(data_type="train", func=sedna_image_process(tmp_path))
    with pytest.raises(
        DatasetError, match=rf"^labels\.txt line 2: image missing\.jpg not found under {tmp_path}$"
    ) as info:
        data.parse(labels)
    assert info.value.path == labels and info.value.line == 2


def test_txtdataparse_missing_label_file_raises(tmp_path: Path) -> None:
    """Unlike Sedna, which silently trains on nothing, a missing label file raises DatasetError."""
    with pytest.raises(DatasetError, match=r"label file .* not found"):
        TxtDataParse(data_type="train").parse(tmp_path / "absent.txt")


def test_txtdataparse_rejects_a_non_callable_func() -> None:
    """func must be callable (Sedna's ClassFactory names are not supported)."""
    with pytest.raises(TypeError):
        TxtDataParse(data_type="train", func="image_process")  # type: ignore[arg-type]
