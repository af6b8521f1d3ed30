"""The defect-free tile surface every sample starts from, and the harmless defect look-alikes on it.

Images are float64 in [0, 1] (row = y), masks float64 in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

FloatImage = npt.NDArray[np.float64]

# Amplitude scale of the defect-free surface texture (shading, grinding marks, mottling, noise,
# vignetting): the "background clutter" a defect must stand out from.
TEXTURE_STRENGTH = 1.0

# Probability scale of the defect look-alikes on every tile (dust specks, dark straight border).
NUISANCE_RATE = 1.0


def low_frequency(rng: np.random.Generator, h: int, w: int, cells: int) -> FloatImage:
    """Smooth random field in about [-1, 1]: a coarse random grid upsampled bicubically."""
    gh = max(2, round(cells * h / max(h, w)) + 1)
    gw = max(2, round(cells * w / max(h, w)) + 1)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    field = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float64)


def blur(mask: FloatImage, radius: float) -> FloatImage:
    """Gaussian blur of a [0, 1] array (through an 8-bit image: precision is ample for masks)."""
    img = Image.fromarray(np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64) / 255.0


def tile(rng: np.random.Generator, h: int, w: int) -> FloatImage:
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
    streak_amp = rng.uniform(0.015, 0.04) * (1.0 + 0.5 * low_frequency(rng, h, w, 3))

    mottling = rng.uniform(0.01, 0.03) * low_frequency(rng, h, w, 5)
    noise = rng.normal(0.0, rng.uniform(0.01, 0.03), size=(h, w))

    cx, cy = rng.uniform(0.3, 0.7, size=2)
    vignette = 1.0 - rng.uniform(0.05, 0.15) * ((u - cx) ** 2 + (v - cy) ** 2) / 0.5
    t = TEXTURE_STRENGTH
    result: FloatImage = (base + t * (shading + mottling + streaks * streak_amp)) * (
        1.0 - t * (1.0 - vignette)
    ) + t * noise
    return result


def nuisances(rng: np.random.Generator, img: FloatImage) -> FloatImage:
    """Harmless look-alikes found on defect-free tiles too, so no single cue gives the label away.

    Dust specks resemble tiny, faint blowholes; a dark, thin, *straight* border strip (the tile
    edge or background caught in the crop) resembles a break or fray, whose boundary is ragged.
    Applied to every class, so their presence says nothing about the label.
    """
    h, w = img.shape
    out = img.copy()
    scale = math.sqrt(h * w)
    if rng.random() < 0.4 * NUISANCE_RATE:
        yy, xx = np.ogrid[0:h, 0:w]
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(0.004, 0.01) * scale
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (r * r)
            out -= rng.uniform(0.05, 0.15) * np.exp(-d2)
    if rng.random() < 0.2 * NUISANCE_RATE:
        side = int(rng.integers(0, 4))
        depth = rng.uniform(0.01, 0.03)
        yy, xx = np.mgrid[0:h, 0:w]
        coord = [xx / w, 1 - xx / w, yy / h, 1 - yy / h][side]
        strip = blur((coord < depth).astype(np.float64), 1.0)
        out = out * (1 - strip) + strip * rng.uniform(0.05, 0.2)
    return out
