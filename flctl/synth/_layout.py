"""The real dataset's facts the generator copies (classes, counts, sizes, file names) and `SynthReport`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from flctl.synth._defects import DEFAULT_CONTRAST

DATASET_DIRNAME = "Magnetic-tile-defect-datasets"

# Image counts of the real dataset at commit cc4eb530 (reference/sedna.md section 6).
CLASS_COUNTS: Mapping[str, int] = MappingProxyType(
    {
        "MT_Blowhole": 115,
        "MT_Break": 85,
        "MT_Crack": 57,
        "MT_Fray": 32,
        "MT_Uneven": 103,
        "MT_Free": 952,
    }
)
DEFECT_CLASSES: tuple[str, ...] = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
SPLIT_FILES: tuple[str, ...] = ("1.txt", "2.txt", "test.txt")

# Real width and height ranges per class (px), so resize distortions match the real data.
SIZE_RANGES: Mapping[str, tuple[tuple[int, int], tuple[int, int]]] = MappingProxyType(
    {
        "MT_Blowhole": ((105, 512), (231, 398)),
        "MT_Break": ((115, 632), (232, 392)),
        "MT_Crack": ((119, 606), (242, 403)),
        "MT_Fray": ((232, 616), (227, 372)),
        "MT_Uneven": ((113, 620), (238, 385)),
        "MT_Free": ((103, 618), (222, 388)),
    }
)

# Sedna's 1.txt + 2.txt list 1,044 images and leave 300 unlisted; keep that held-out share.
TEST_FRACTION = 300 / 1344


@dataclass(frozen=True)
class SynthReport:
    """What :func:`synthesize` wrote.

    ``class_counts`` maps each ``MT_*`` class to its number of images; ``split_counts`` and
    ``split_defects`` map each label file name (``1.txt``, ``2.txt``, ``test.txt``) to its number
    of lines and of label-1 (defect) lines.
    """

    out_dir: Path
    seed: int
    scale: float
    class_counts: Mapping[str, int]
    split_counts: Mapping[str, int]
    split_defects: Mapping[str, int]
    image_size_range: tuple[int, int] | None = None
    contrast: float = DEFAULT_CONTRAST
    files: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def dataset_dir(self) -> Path:
        """The ``Magnetic-tile-defect-datasets`` folder."""
        return self.out_dir / DATASET_DIRNAME

    @property
    def total_images(self) -> int:
        """Number of generated images (each has a mask too)."""
        return sum(self.class_counts.values())

    def __str__(self) -> str:
        classes = ", ".join(f"{name} {count}" for name, count in self.class_counts.items())
        splits = ", ".join(
            f"{name} {self.split_counts[name]} lines ({self.split_defects[name]} defects)" for name in SPLIT_FILES
        )
        return f"{self.total_images} images ({classes}); {splits}"

    def label_file(self, name: str) -> Path:
        """Path of one of the :data:`SPLIT_FILES`."""
        if name not in SPLIT_FILES:
            raise KeyError(f"unknown split file {name!r}, expected one of {SPLIT_FILES}")
        return self.out_dir / name
