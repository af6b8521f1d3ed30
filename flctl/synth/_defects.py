"""Drawing the five defect classes onto a tile: each returns the darkened image and the defect's mask.

Defects are multiplicative darkening (a pit or crack reflects less light) scaled by one contrast `c`,
so the knob stays physical. Images and masks are float64 in [0, 1] (row = y).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from flctl.synth._surface import FloatImage, blur

# Global defect contrast: scales how much every defect darkens the tile. Tuned with
# benchmarks/learnability.py (the example Estimator, 2 edges x 3 rounds x 1 epoch; balanced
# accuracy on test.txt over training and dataset seeds): 0.35 -> 0.65-0.69, 0.5 -> 0.79-0.85,
# 0.6 -> 0.80-0.95, 0.7 -> 0.96-0.98, 0.8 -> 0.97-0.98. 0.6 keeps the demo clearly learning
# without making the task trivial.
DEFAULT_CONTRAST = 0.6

Renderer = Callable[[np.random.Generator, FloatImage, float], tuple[FloatImage, FloatImage]]


def _darken(img: FloatImage, amount: FloatImage | float, c: float) -> FloatImage:
    """Darken by ``amount`` (a fraction of the local grey level, before contrast), never below black.

    ``c * amount`` is clipped to at most 95 % darkening (and, for the occasional brighter patch, a
    negative amount to at most 50 % brightening).
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
    return _darken(img, amount, c) + 0.03 * c * rim, blur(mask, 0.8)


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
    region = blur(np.asarray(region_img, dtype=np.float64) / 255.0, 0.7)
    rim_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(rim_img).line(fracture, fill=255, width=max(2, round(0.006 * (h + w))))
    rim = blur(np.asarray(rim_img, dtype=np.float64) / 255.0, 1.0) * (1 - region)
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
    mask = blur(np.asarray(layer, dtype=np.float64) / 255.0, 0.6)
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
    band = blur((dist < depth[along]).astype(np.float64), 0.8)
    fibres = blur(np.clip(0.5 + 0.25 * rng.normal(0.0, 1.0, size=(h, w)), 0, 1), 0.7) - 0.5
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


#: Defect class -> its renderer (MT_Free has none: a defect-free tile).
RENDERERS: Mapping[str, Renderer] = MappingProxyType(
    {
        "MT_Blowhole": _blowhole,
        "MT_Break": _break,
        "MT_Crack": _crack,
        "MT_Fray": _fray,
        "MT_Uneven": _uneven,
    }
)
