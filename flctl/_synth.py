"""Synthetic magnetic-tile defect dataset in the real dataset's layout, plus Sedna-style label files.

The real dataset (``abin24/Magnetic-tile-defect-datasets.``, 1,344 grayscale JPEG tiles with PNG
masks) cannot ship with this repository, so the demo and the tests generate a stand-in that a
loader cannot tell apart structurally::

    <out>/Magnetic-tile-defect-datasets/MT_<Class>/Imgs/exp<k>_num_<id>.jpg   grayscale JPEG
    <out>/Magnetic-tile-defect-datasets/MT_<Class>/Imgs/exp<k>_num_<id>.png   8-bit mask, 0 = no defect
    <out>/1.txt, <out>/2.txt     one edge's training list each, like Sedna's data/1.txt and 2.txt
    <out>/test.txt               the held-out rest (about 22 %), never seen by an edge

Defects are drawn to be learnable but not trivial for Sedna's small CNN after the 128x128
downscale. Every tile, defective or not, carries the same surface texture (curvature shading,
grinding marks, mottling, noise, vignetting) and, at random, harmless look-alikes (dust specks
resembling tiny pits, a dark straight border resembling a break). Defects are multiplicative
darkening (pits, cracks, chipped-off areas, a ragged frayed band, blotches) scaled by one contrast
knob, tuned with ``benchmarks/learnability.py`` so that the demo's federated budget (2 edges x
3 rounds x 1 epoch, batch 32, Adam 0.001) reaches a balanced accuracy of about 0.8-0.95 on
``test.txt``: well above the 0.5 of a model that always answers "no defect" (accuracy ~0.70), and
well below perfect. Everything is a pure function of ``seed``, ``scale`` and ``size_range``.

numpy and pillow only: ``flctl`` must stay usable on machines without TensorFlow.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "CLASS_COUNTS",
    "DATASET_DIRNAME",
    "DEFECT_CLASSES",
    "SPLIT_FILES",
    "SynthReport",
    "copy_split",
    "synthesize",
]

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
_SIZE_RANGES: Mapping[str, tuple[tuple[int, int], tuple[int, int]]] = MappingProxyType(
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
_TEST_FRACTION = 300 / 1344

# Global defect contrast: scales how much every defect darkens the tile. Tuned with
# benchmarks/learnability.py (the example Estimator, 2 edges x 3 rounds x 1 epoch; balanced
# accuracy on test.txt over training and dataset seeds): 0.35 -> 0.65-0.69, 0.5 -> 0.79-0.85,
# 0.6 -> 0.80-0.95, 0.7 -> 0.96-0.98, 0.8 -> 0.97-0.98. 0.6 keeps the demo clearly learning
# without making the task trivial.
_DEFECT_CONTRAST = 0.6

# Amplitude scale of the defect-free surface texture (shading, grinding marks, mottling, noise,
# vignetting): the "background clutter" a defect must stand out from.
_TEXTURE_STRENGTH = 1.0

# Probability scale of the defect look-alikes on every tile (dust specks, dark straight border).
_NUISANCE_RATE = 1.0

# Marker written into the generated dataset folder. A rerun only clears a folder carrying it, so
# pointing ``out_dir`` at a real dataset can never delete real images.
_MARKER = "SYNTHETIC.md"

_JPEG_QUALITY = 90

FloatImage = npt.NDArray[np.float64]


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


# --------------------------------------------------------------------------------------------
# Texture and defect rendering. Images are float64 in [0, 1] (row = y), masks float64 in [0, 1].
# --------------------------------------------------------------------------------------------


def _low_frequency(rng: np.random.Generator, h: int, w: int, cells: int) -> FloatImage:
    """Smooth random field in about [-1, 1]: a coarse random grid upsampled bicubically."""
    gh = max(2, round(cells * h / max(h, w)) + 1)
    gw = max(2, round(cells * w / max(h, w)) + 1)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    field = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float64)


def _blur(mask: FloatImage, radius: float) -> FloatImage:
    """Gaussian blur of a [0, 1] array (through an 8-bit image: precision is ample for masks)."""
    img = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64) / 255.0


def _tile(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    """A defect-free tile surface: curvature shading, grinding marks, mottling, noise, vignetting."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = xx / max(w - 1, 1)
    v = yy / max(h - 1, 1)
    # One camera and one lighting set-up: the overall grey level varies only moderately.
    base = rng.uniform(0.44, 0.58)

    # The tiles are arc-shaped: light reflects off a band across the curvature.
    across = u if rng.random() < 0.5 else v
    shading = rng.uniform(0.02, 0.07) * np.cos(np.pi * (across - rng.uniform(0.3, 0.7)))

    # Grinding marks: dense parallel streaks, nearly axis-aligned, intensity varying along them.
    theta = (np.pi / 2) * rng.integers(0, 2) + rng.normal(0.0, 0.06)
    perpendicular = xx * -math.sin(theta) + yy * math.cos(theta)
    perpendicular -= perpendicular.min()
    streak_profile = rng.normal(0.0, 1.0, size=int(perpendicular.max()) + 2)
    streak_profile = np.convolve(streak_profile, np.ones(2) / 2, mode="same")
    streaks = streak_profile[perpendicular.astype(np.int64)]
    streak_amp = rng.uniform(0.015, 0.04) * (1.0 + 0.5 * _low_frequency(rng, h, w, 3))

    mottling = rng.uniform(0.01, 0.03) * _low_frequency(rng, h, w, 5)
    noise = rng.normal(0.0, rng.uniform(0.01, 0.03), size=(h, w))

    cx, cy = rng.uniform(0.3, 0.7, size=2)
    vignette = 1.0 - rng.uniform(0.05, 0.15) * ((u - cx) ** 2 + (v - cy) ** 2) / 0.5
    t = _TEXTURE_STRENGTH
    result: FloatImage = (base + t * (shading + mottling + streaks * streak_amp)) * (
        1.0 - t * (1.0 - vignette)
    ) + t * noise
    return result


def _nuisances(rng: np.random.Generator, img: FloatImage) -> FloatImage:
    """Harmless look-alikes found on defect-free tiles too, so no single cue gives the label away.

    Dust specks resemble tiny, faint blowholes; a dark, thin, *straight* border strip (the tile
    edge or background caught in the crop) resembles a break or fray, whose boundary is ragged.
    Applied to every class, so their presence says nothing about the label.
    """
    h, w = img.shape
    out = img.copy()
    scale = math.sqrt(h * w)
    if rng.random() < 0.4 * _NUISANCE_RATE:
        yy, xx = np.ogrid[0:h, 0:w]
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(0.004, 0.01) * scale
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r)
            out -= rng.uniform(0.05, 0.15) * np.exp(-d2)
    if rng.random() < 0.2 * _NUISANCE_RATE:
        side = int(rng.integers(0, 4))
        depth = rng.uniform(0.01, 0.03)
        yy, xx = np.mgrid[0:h, 0:w]
        coord = [xx / w, 1 - xx / w, yy / h, 1 - yy / h][side]
        strip = _blur((coord < depth).astype(np.float64), 1.0)
        out = out * (1 - strip) + strip * rng.uniform(0.05, 0.2)
    return out


def _darken(img: FloatImage, amount: FloatImage | float, c: float) -> FloatImage:
    """Darken by ``amount`` (a fraction of the local grey level, before contrast), never below black.

    Defects are modelled as multiplicative darkening (a pit or crack reflects less light), so
    the contrast knob ``c`` stays physical: ``c * amount`` is clipped to at most 95 % darkening
    (and, for the occasional brighter patch, a negative amount to at most 50 % brightening).
    """
    result: FloatImage = img * (1.0 - np.clip(c * np.asarray(amount), -0.5, 0.95))
    return result


def _blowhole(rng: np.random.Generator, img: FloatImage, c: float) -> tuple[FloatImage, FloatImage]:
    """Small dark round pits with a faint bright rim."""
    h, w = img.shape
    yy, xx = np.ogrid[0:h, 0:w]
    amount = np.zeros((h, w))
    rim = np.zeros((h, w))
    mask = np.zeros((h, w))
    scale = math.sqrt(h * w)
    for _ in range(int(rng.integers(3, 8))):
        r = rng.uniform(0.022, 0.048) * scale
        cy = rng.uniform(0.1, 0.9) * h
        cx = rng.uniform(0.1, 0.9) * w
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
        amount = np.maximum(amount, rng.uniform(0.55, 0.85) * np.clip(1.3 - d**2, 0.0, 1.0))
        rim = np.maximum(rim, np.exp(-(((d - 1.15) / 0.2) ** 2)))
        mask = np.maximum(mask, (d <= 1.0).astype(np.float64))
    return _darken(img, amount, c) + 0.03 * c * rim, _blur(mask, 0.8)


def _jagged(
    rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], n: int, amp: float
) -> list[tuple[float, float]]:
    """Points from ``start`` to ``end`` with random perpendicular offsets: a fracture line."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    nx, ny = -(y1 - y0) / length, (x1 - x0) / length
    offsets = np.cumsum(rng.normal(0.0, amp, size=n))
    offsets -= np.linspace(0.0, offsets[-1], n)  # pin both ends
    ts = np.linspace(0.0, 1.0, n)
    return [(x0 + t * (x1 - x0) + o * nx, y0 + t * (y1 - y0) + o * ny) for t, o in zip(ts, offsets, strict=True)]


def _break(rng: np.random.Generator, img: FloatImage, c: float) -> tuple[FloatImage, FloatImage]:
    """A chipped-off corner or a bite out of an edge: background shows through a jagged fracture."""
    h, w = img.shape
    jag = 0.012 * (h + w)
    corners = [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
    cx, cy = corners[int(rng.integers(0, 4))]
    sx = 1.0 if cx == 0 else -1.0  # direction pointing into the tile from that corner
    sy = 1.0 if cy == 0 else -1.0
    if rng.random() < 0.6:  # corner chip
        p_start = (cx + sx * rng.uniform(0.25, 0.55) * w, cy)
        p_end = (cx, cy + sy * rng.uniform(0.25, 0.55) * h)
        fracture = _jagged(rng, p_start, p_end, 14, jag)
        polygon = [(cx, cy), *fracture]
    else:  # bite out of the top/bottom (or left/right) edge through that corner
        along, half, depth = rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3)
        if rng.random() < 0.5:
            p_start, p_end = (w * (along - half), cy), (w * (along + half), cy)
            apex = (w * along, cy + sy * depth * h)
        else:
            p_start, p_end = (cx, h * (along - half)), (cx, h * (along + half))
            apex = (cx + sx * depth * w, h * along)
        fracture = _jagged(rng, p_start, apex, 8, jag) + _jagged(rng, apex, p_end, 8, jag)[1:]
        polygon = fracture
    region_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(region_img).polygon(polygon, fill=255)
    region = _blur(np.asarray(region_img, dtype=np.float64) / 255.0, 0.7)
    rim_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(rim_img).line(fracture, fill=255, width=max(2, round(0.006 * (h + w))))
    rim = _blur(np.asarray(rim_img, dtype=np.float64) / 255.0, 1.0) * (1 - region)
    # Background seen through the gap is dark; the fresh fracture face catches some light.
    gap = rng.uniform(0.75, 0.92) + rng.normal(0.0, 0.03, size=(h, w))
    out = _darken(img, gap * region, c) + 0.08 * c * rim
    return out, np.maximum(region, rim * 0.5)


def _crack(rng: np.random.Generator, img: FloatImage, c: float) -> tuple[FloatImage, FloatImage]:
    """One or two thin dark jagged lines, sometimes with a short branch."""
    h, w = img.shape
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 3))):
        x, y = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        angle = rng.uniform(0, 2 * math.pi)
        total = rng.uniform(0.35, 0.75) * max(h, w)
        step = max(2.0, 0.012 * max(h, w))
        points = [(x, y)]
        for _ in range(int(total / step)):
            angle += rng.normal(0.0, 0.35)
            x = min(max(x + step * math.cos(angle), 0.0), w - 1.0)
            y = min(max(y + step * math.sin(angle), 0.0), h - 1.0)
            points.append((x, y))
        width = max(2, round(rng.uniform(0.01, 0.02) * math.sqrt(h * w)))
        draw.line(points, fill=255, width=width, joint="curve")
        if rng.random() < 0.4 and len(points) > 4:
            bx, by = points[len(points) // 2]
            branch_angle = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
            reach = 0.15 * max(h, w)
            end = (bx + reach * math.cos(branch_angle), by + reach * math.sin(branch_angle))
            draw.line(_jagged(rng, (bx, by), end, 6, step * 0.4), fill=255, width=max(1, width - 1))
    mask = _blur(np.asarray(layer, dtype=np.float64) / 255.0, 0.6)
    return _darken(img, rng.uniform(0.6, 0.85) * mask, c), mask


def _fray(rng: np.random.Generator, img: FloatImage, c: float) -> tuple[FloatImage, FloatImage]:
    """A ragged, darker, fibrous band along one edge of the tile."""
    h, w = int(img.shape[0]), int(img.shape[1])
    yy, xx = np.mgrid[0:h, 0:w]
    side = int(rng.integers(0, 4))  # left, right, top, bottom
    dist = [xx, w - 1 - xx, yy, h - 1 - yy][side]  # distance from the chosen edge
    along = yy if side < 2 else xx  # position along that edge
    length, across = (h, w) if side < 2 else (w, h)
    base_depth = rng.uniform(0.1, 0.2) * across
    # Ragged boundary: a slow wander plus a rough, fibrous small-scale edge.
    wander = np.asarray(
        Image.fromarray(rng.uniform(-1, 1, size=(1, max(2, length // 25))).astype(np.float32)).resize(
            (length, 1), Image.Resampling.BICUBIC
        ),
        dtype=np.float64,
    )[0]
    rough = np.convolve(rng.normal(0.0, 1.0, size=length), np.ones(3) / 3, mode="same")
    depth = np.clip(base_depth * (1 + 0.35 * wander + 0.3 * rough), 0.3 * base_depth, 2.5 * base_depth)
    band = _blur((dist < depth[along]).astype(np.float64), 0.8)
    fibres = _blur(np.clip(0.5 + 0.25 * rng.normal(0.0, 1.0, size=(h, w)), 0, 1), 0.7) - 0.5
    amount = rng.uniform(0.55, 0.75) + 0.6 * fibres
    return _darken(img, amount * band, c), band


def _uneven(rng: np.random.Generator, img: FloatImage, c: float) -> tuple[FloatImage, FloatImage]:
    """Low-frequency brightness blotches, mostly darker than the surrounding surface.

    Flat-topped blobs (super-Gaussian) rather than plain Gaussians: uneven patches on the real
    tiles have a recognisable rim, which is also what a 3x3 convolution can pick up.
    """
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field_sum = np.zeros((h, w))
    for _ in range(int(rng.integers(2, 5))):
        sy, sx = rng.uniform(0.08, 0.2) * h, rng.uniform(0.08, 0.2) * w
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        sign = 1.0 if rng.random() < 0.75 else -0.6  # mostly darker, sometimes a brighter patch
        r2 = ((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2
        field_sum += sign * rng.uniform(0.4, 0.65) * np.exp(-((r2 / 2) ** 2))
    peak = float(np.abs(field_sum).max()) or 1.0
    mask = np.clip((np.abs(field_sum) / peak - 0.35) / 0.3, 0.0, 1.0)
    return _darken(img, field_sum, c), mask


_RENDERERS: Mapping[str, Callable[[np.random.Generator, FloatImage, float], tuple[FloatImage, FloatImage]]] = (
    MappingProxyType(
        {
            "MT_Blowhole": _blowhole,
            "MT_Break": _break,
            "MT_Crack": _crack,
            "MT_Fray": _fray,
            "MT_Uneven": _uneven,
        }
    )
)


def _render(
    class_name: str, seed: int, index: int, size_range: tuple[int, int] | None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Image and mask (uint8, same shape) of one sample; a pure function of its arguments."""
    class_index = list(CLASS_COUNTS).index(class_name)
    rng = np.random.default_rng([seed, class_index, index])
    if size_range is None:
        (w_lo, w_hi), (h_lo, h_hi) = _SIZE_RANGES[class_name]
    else:
        (w_lo, w_hi) = (h_lo, h_hi) = size_range
    w = int(rng.integers(w_lo, w_hi + 1))
    h = int(rng.integers(h_lo, h_hi + 1))
    img = _nuisances(rng, _tile(rng, h, w))
    mask = np.zeros((h, w))
    renderer = _RENDERERS.get(class_name)
    if renderer is not None:
        img, mask = renderer(rng, img, _DEFECT_CONTRAST)
    image_u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Real masks are 0 outside defects and spread over 0..255 inside (soft, not binary).
    mask_u8 = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image_u8, mask_u8


# --------------------------------------------------------------------------------------------
# Dataset layout and splits
# --------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _scaled_counts(scale: float) -> dict[str, int]:
    # At least one image per class so every class folder exists even at tiny test scales.
    return {name: max(1, _round_half_up(n * scale)) for name, n in CLASS_COUNTS.items()}


def _clear_previous(dataset_dir: Path) -> None:
    """Remove a previous synthetic run's images so stale files never mix with the new ones."""
    if not dataset_dir.exists():
        return
    if not (dataset_dir / _MARKER).is_file():
        if any(dataset_dir.iterdir()):
            raise FileExistsError(
                f"{dataset_dir} exists and was not generated by flctl (no {_MARKER}); "
                "refusing to write synthetic images into it"
            )
        return
    for class_name in CLASS_COUNTS:
        imgs = dataset_dir / class_name / "Imgs"
        if imgs.is_dir():
            for pattern in ("exp*_num_*.jpg", "exp*_num_*.png"):
                for stale in imgs.glob(pattern):
                    stale.unlink()


def synthesize(
    out_dir: Path,
    *,
    scale: float = 1.0,
    seed: int = 0,
    size_range: tuple[int, int] | None = None,
) -> SynthReport:
    """Write a synthetic magnetic-tile dataset and its ``1.txt``/``2.txt``/``test.txt`` into ``out_dir``.

    ``scale`` multiplies the real per-class counts (1.0 gives 1,344 images, about 520 lines per
    edge file). ``size_range=(lo, hi)`` draws both width and height from ``[lo, hi]`` instead of
    the real per-class ranges, so tests can write tiny images fast. Identical arguments give
    byte-identical label files and pixel-identical images.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if size_range is not None:
        lo, hi = size_range
        if not (8 <= lo <= hi):
            raise ValueError(f"size_range must satisfy 8 <= lo <= hi, got {size_range!r}")
    out_dir = Path(out_dir)
    dataset_dir = out_dir / DATASET_DIRNAME
    _clear_previous(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / _MARKER).write_text(
        "# Synthetic magnetic-tile dataset\n\n"
        f"Generated by flctl._synth.synthesize(scale={scale!r}, seed={seed!r}, size_range={size_range!r}).\n"
        "Same layout as abin24/Magnetic-tile-defect-datasets.; the images are NOT real tiles.\n",
        encoding="utf-8",
    )

    counts = _scaled_counts(scale)
    layout_rng = np.random.default_rng([seed, 1_000_003])
    # Unique ids across the whole dataset, drawn like the real ones (up to ~350000).
    ids = layout_rng.choice(350_000, size=sum(counts.values()), replace=False)
    id_iter = iter(int(i) for i in ids)

    splits: dict[str, list[str]] = {name: [] for name in SPLIT_FILES}
    split_defects = dict.fromkeys(SPLIT_FILES, 0)
    files: list[Path] = []
    extra_to_first = True
    for class_name, n in counts.items():
        imgs_dir = dataset_dir / class_name / "Imgs"
        imgs_dir.mkdir(parents=True, exist_ok=True)
        label = 0 if class_name == "MT_Free" else 1
        relpaths: list[str] = []
        for index in range(n):
            # The real file names use exp1..exp6 evenly, with a single exp0 in a few classes.
            exp = (
                0
                if index == 0 and class_name in ("MT_Fray", "MT_Free", "MT_Uneven")
                else int(layout_rng.integers(1, 7))
            )
            stem = f"exp{exp}_num_{next(id_iter)}"
            image, mask = _render(class_name, seed, index, size_range)
            jpg, png = imgs_dir / f"{stem}.jpg", imgs_dir / f"{stem}.png"
            Image.fromarray(image).save(jpg, format="JPEG", quality=_JPEG_QUALITY)
            Image.fromarray(mask).save(png, format="PNG")
            files += [jpg, png]
            relpaths.append(f"{DATASET_DIRNAME}/{class_name}/Imgs/{stem}.jpg")

        # Per-class stratified split: the held-out share first, the rest alternated between the
        # two edges so both see every class (as Sedna's 1.txt and 2.txt do).
        order = layout_rng.permutation(n)
        n_test = _round_half_up(n * _TEST_FRACTION)
        test_idx, train_idx = order[:n_test], order[n_test:]
        n_first = (len(train_idx) + (1 if extra_to_first else 0)) // 2
        if len(train_idx) % 2:
            extra_to_first = not extra_to_first  # alternate the odd sample so the files stay even
        for name, chosen in (("test.txt", test_idx), ("1.txt", train_idx[:n_first]), ("2.txt", train_idx[n_first:])):
            splits[name] += [f"{relpaths[i]},{label}" for i in chosen]
            split_defects[name] += label * len(chosen)

    for name, lines in splits.items():
        # Shuffle so classes interleave like the real files; Keras' validation_split takes the
        # LAST 20 % unshuffled, which must not be a single class.
        shuffled = [lines[i] for i in layout_rng.permutation(len(lines))]
        (out_dir / name).write_text("".join(line + "\n" for line in shuffled), encoding="utf-8", newline="\n")

    return SynthReport(
        out_dir=out_dir,
        seed=seed,
        scale=scale,
        class_counts=MappingProxyType(dict(counts)),
        split_counts=MappingProxyType({name: len(lines) for name, lines in splits.items()}),
        split_defects=MappingProxyType(split_defects),
        image_size_range=size_range,
        files=tuple(files),
    )


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
