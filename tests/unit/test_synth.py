"""The synthetic magnetic-tile dataset generator and the per-edge split copier (flctl.synth)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flctl.synth import (
    CLASS_COUNTS,
    DATASET_DIRNAME,
    DEFAULT_CONTRAST,
    DEFECT_CLASSES,
    SPLIT_FILES,
    SynthReport,
    copy_split,
    synthesize,
)

SIZE = (32, 48)
NAME = re.compile(r"exp[0-6]_num_\d+\.jpg")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("synth"), scale=0.05, seed=11, size_range=SIZE)


def label_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def relpaths(path: Path) -> set[str]:
    return {line.rsplit(",", 1)[0] for line in label_lines(path)}


def test_layout_matches_the_real_dataset(synth: SynthReport) -> None:
    """Six MT_*/Imgs folders of exp<k>_num_<id>.jpg grayscale JPEGs, each with a same-size 8-bit .png mask."""
    assert synth.dataset_dir == synth.out_dir / DATASET_DIRNAME
    assert sorted(p.name for p in synth.dataset_dir.iterdir() if p.is_dir()) == sorted(CLASS_COUNTS)
    for class_name, count in synth.class_counts.items():
        jpgs = sorted((synth.dataset_dir / class_name / "Imgs").glob("*.jpg"))
        assert len(jpgs) == count
        for jpg in jpgs:
            assert NAME.fullmatch(jpg.name)
            with Image.open(jpg) as img, Image.open(jpg.with_suffix(".png")) as mask:
                assert img.format == "JPEG" and img.mode == "L"
                assert mask.format == "PNG" and mask.mode == "L"
                assert mask.size == img.size
                assert SIZE[0] <= img.width <= SIZE[1] and SIZE[0] <= img.height <= SIZE[1]


def test_default_sizes_follow_the_real_ranges(tmp_path: Path) -> None:
    """Without size_range, widths and heights stay inside the real dataset's 103-632 x 222-403 px."""
    report = synthesize(tmp_path, scale=0.005, seed=1)
    for jpg in report.dataset_dir.glob("*/Imgs/*.jpg"):
        with Image.open(jpg) as img:
            assert 103 <= img.width <= 632 and 222 <= img.height <= 403


def test_counts_follow_the_scale(synth: SynthReport) -> None:
    """Per-class counts are the real ones (115/85/57/32/103/952) times scale, at least one each."""
    expected = {name: max(1, int(np.floor(n * 0.05 + 0.5))) for name, n in CLASS_COUNTS.items()}
    assert dict(synth.class_counts) == expected
    assert synth.total_images == sum(expected.values())


def test_full_scale_counts_and_split_sizes(tmp_path: Path) -> None:
    """At scale 1.0: 1,344 images as in the real set, about 520 lines per edge file, ~30 % defects."""
    report = synthesize(tmp_path, scale=1.0, seed=0, size_range=(8, 8))
    assert dict(report.class_counts) == dict(CLASS_COUNTS)
    assert sum(report.split_counts.values()) == 1344
    for name in ("1.txt", "2.txt"):
        assert 510 <= report.split_counts[name] <= 530
        assert 0.27 <= report.split_defects[name] / report.split_counts[name] <= 0.33
    assert 280 <= report.split_counts["test.txt"] <= 320


def test_same_seed_gives_identical_output(tmp_path: Path) -> None:
    """Two runs with the same seed write byte-identical label files, images and masks."""
    a = synthesize(tmp_path / "a", scale=0.03, seed=5, size_range=SIZE)
    b = synthesize(tmp_path / "b", scale=0.03, seed=5, size_range=SIZE)
    for name in SPLIT_FILES:
        assert a.label_file(name).read_bytes() == b.label_file(name).read_bytes()
    files_a = sorted(p.relative_to(a.out_dir) for p in a.files)
    assert files_a == sorted(p.relative_to(b.out_dir) for p in b.files)
    for rel in files_a:
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes()


def test_different_seeds_give_different_datasets(tmp_path: Path) -> None:
    """Another seed changes the file ids and the split."""
    a = synthesize(tmp_path / "a", scale=0.03, seed=5, size_range=SIZE)
    b = synthesize(tmp_path / "b", scale=0.03, seed=6, size_range=SIZE)
    assert a.label_file("1.txt").read_text() != b.label_file("1.txt").read_text()


def test_contrast_changes_only_the_defects(tmp_path: Path) -> None:
    """The contrast scales the defects alone: same files, splits and defect-free tiles, other defect pixels."""
    default = synthesize(tmp_path / "default", scale=0.03, seed=5, size_range=SIZE)
    explicit = synthesize(tmp_path / "explicit", scale=0.03, seed=5, size_range=SIZE, contrast=DEFAULT_CONTRAST)
    strong = synthesize(tmp_path / "strong", scale=0.03, seed=5, size_range=SIZE, contrast=1.0)
    assert default.contrast == DEFAULT_CONTRAST and strong.contrast == 1.0
    for name in SPLIT_FILES:
        assert default.label_file(name).read_bytes() == strong.label_file(name).read_bytes()
    for path in default.files:
        rel = path.relative_to(default.out_dir)
        assert path.read_bytes() == (explicit.out_dir / rel).read_bytes()
        if path.suffix == ".jpg" and rel.parts[1] == "MT_Free":
            assert path.read_bytes() == (strong.out_dir / rel).read_bytes()
    defect_images = [
        p.relative_to(default.out_dir) for p in default.files if p.suffix == ".jpg" and p.parts[-3] != "MT_Free"
    ]
    assert any((default.out_dir / rel).read_bytes() != (strong.out_dir / rel).read_bytes() for rel in defect_images)


@pytest.mark.parametrize("contrast", [-0.1, float("nan"), float("inf")])
def test_rejects_a_bad_contrast(tmp_path: Path, contrast: float) -> None:
    """A negative or non-finite contrast raises ValueError before anything is written."""
    with pytest.raises(ValueError, match="contrast"):
        synthesize(tmp_path / "out", contrast=contrast)
    assert not (tmp_path / "out").exists()


def test_masks_are_zero_for_free_tiles_and_mark_defects(synth: SynthReport) -> None:
    """MT_Free masks are all zero; every defect image has a non-empty mask."""
    for class_name in CLASS_COUNTS:
        for png in (synth.dataset_dir / class_name / "Imgs").glob("*.png"):
            with Image.open(png) as mask:
                peak = int(np.asarray(mask).max())
            if class_name == "MT_Free":
                assert peak == 0, png
            else:
                assert class_name in DEFECT_CLASSES and peak > 0, png


def test_split_files_are_disjoint_and_cover_every_image(synth: SynthReport) -> None:
    """1.txt, 2.txt and test.txt share no image and together list every generated image once."""
    splits = {name: label_lines(synth.label_file(name)) for name in SPLIT_FILES}
    sets = {name: relpaths(synth.label_file(name)) for name in SPLIT_FILES}
    for name, lines in splits.items():
        assert len(lines) == len(sets[name]) == synth.split_counts[name]
    assert not (sets["1.txt"] & sets["2.txt"]) and not (sets["1.txt"] & sets["test.txt"])
    assert not (sets["2.txt"] & sets["test.txt"])
    every = {p.relative_to(synth.out_dir).as_posix() for p in synth.dataset_dir.glob("*/Imgs/*.jpg")}
    assert set.union(*sets.values()) == every


def test_label_lines_have_sednas_shape(synth: SynthReport) -> None:
    """Lines read 'Magnetic-tile-defect-datasets/MT_<Class>/Imgs/<name>.jpg,<0|1>', label 0 only for MT_Free, LF endings."""
    pattern = re.compile(rf"{DATASET_DIRNAME}/(MT_\w+)/Imgs/exp\d_num_\d+\.jpg,([01])")
    for name in SPLIT_FILES:
        raw = synth.label_file(name).read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n")
        for line in label_lines(synth.label_file(name)):
            match = pattern.fullmatch(line)
            assert match, line
            assert (match.group(2) == "0") == (match.group(1) == "MT_Free")


def test_both_edges_get_defects_and_about_30_percent_overall(synth: SynthReport) -> None:
    """Each edge file holds both labels, and defects are roughly 30 % of all lines."""
    for name in ("1.txt", "2.txt"):
        assert 0 < synth.split_defects[name] < synth.split_counts[name]
    share = sum(synth.split_defects.values()) / sum(synth.split_counts.values())
    assert 0.22 <= share <= 0.38


def test_copy_split_copies_exactly_the_referenced_files(synth: SynthReport, tmp_path: Path) -> None:
    """copy_split copies the label file and only its images and masks, at the same relative paths."""
    dest = tmp_path / "edge1"
    count = copy_split(synth.out_dir, synth.label_file("1.txt"), dest)
    referenced = relpaths(synth.label_file("1.txt"))
    assert count == len(referenced) == synth.split_counts["1.txt"]
    copied = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    expected = {"1.txt"} | referenced | {r[: -len(".jpg")] + ".png" for r in referenced}
    assert copied == expected
    for rel in referenced:
        assert (dest / rel).read_bytes() == (synth.out_dir / rel).read_bytes()
    assert (dest / "1.txt").read_bytes() == synth.label_file("1.txt").read_bytes()


def test_copy_split_missing_image_names_file_and_line(synth: SynthReport, tmp_path: Path) -> None:
    """A label line whose image is absent fails with the label file and line number."""
    labels = tmp_path / "bad.txt"
    labels.write_text(f"{DATASET_DIRNAME}/MT_Free/Imgs/exp1_num_0.jpg,0\n")
    with pytest.raises(FileNotFoundError, match=r"bad\.txt:1:"):
        copy_split(synth.out_dir, labels, tmp_path / "dest")


def test_copy_split_refuses_paths_leaving_the_dataset(synth: SynthReport, tmp_path: Path) -> None:
    """A '..' or absolute image path is rejected instead of copying files from outside."""
    for line in ("../secret.jpg,0", "/etc/hostname,1"):
        labels = tmp_path / "evil.txt"
        labels.write_text(line + "\n")
        with pytest.raises(ValueError, match=r"evil\.txt:1:"):
            copy_split(synth.out_dir, labels, tmp_path / "dest")


def test_rerun_replaces_a_previous_synthetic_dataset(tmp_path: Path) -> None:
    """Generating again into the same folder leaves only the new run's images."""
    synthesize(tmp_path, scale=0.03, seed=1, size_range=SIZE)
    second = synthesize(tmp_path, scale=0.02, seed=2, size_range=SIZE)
    on_disk = {p for p in second.dataset_dir.glob("*/Imgs/*") if p.is_file()}
    assert on_disk == set(second.files)


def test_refuses_to_write_into_a_foreign_dataset_folder(tmp_path: Path) -> None:
    """An existing non-synthetic Magnetic-tile-defect-datasets folder is never touched."""
    real = tmp_path / DATASET_DIRNAME / "MT_Free" / "Imgs"
    real.mkdir(parents=True)
    (real / "exp1_num_1.jpg").write_bytes(b"real image")
    with pytest.raises(FileExistsError):
        synthesize(tmp_path, scale=0.01, seed=0, size_range=SIZE)
    assert (real / "exp1_num_1.jpg").read_bytes() == b"real image"


@pytest.mark.parametrize("kwargs", [{"scale": 0.0}, {"scale": -1.0}, {"size_range": (4, 8)}, {"size_range": (40, 30)}])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    """A non-positive scale or an inverted/too small size_range raises ValueError."""
    with pytest.raises(ValueError):
        synthesize(tmp_path, **kwargs)  # type: ignore[arg-type]
