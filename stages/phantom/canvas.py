"""Resolution-independent drawing on a normalised, slightly rotated image grid.

Every shape is defined in anatomical coordinates (u towards the viewer's right, v downwards, both
0..1 of the image side), so one study renders the same picture at 64 or at 512 px. The grid is
rotated by the study's positioning angle, so anatomy, findings and their ground-truth regions
rotate together and stay aligned. Shapes are soft masks in [0, 1] with anti-aliased edges (a
smoothstep over a pixel or more), which avoids blurring whole layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Point = tuple[float, float]

_SUPERSAMPLE = 2  # strokes are drawn at twice the resolution and reduced, for anti-aliasing


@dataclass(frozen=True)
class Canvas:
    """The anatomical coordinates (u, v) of every pixel centre of a square image."""

    size: int
    angle: float
    u: np.ndarray
    v: np.ndarray

    @classmethod
    def create(cls, size: int, angle: float) -> Canvas:
        """A size x size grid whose anatomy is rotated by `angle` radians about the centre."""
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        x, y = np.meshgrid(centres, centres)
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        return cls(size, angle, cos * x + sin * y + 0.5, cos * y - sin * x + 0.5)

    @property
    def pixel(self) -> float:
        """One pixel in normalised units: the floor for edge widths and line thicknesses."""
        return 1.0 / self.size

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size, self.size), dtype=np.float32)

    def to_pixels(self, points: Sequence[Point], scale: int = 1) -> list[Point]:
        """Image coordinates (x, y) of anatomical points, for PIL drawing at `scale` x size."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        side = self.size * scale
        result = []
        for u, v in points:
            du, dv = u - 0.5, v - 0.5
            x, y = cos * du - sin * dv + 0.5, sin * du + cos * dv + 0.5
            result.append((x * side - 0.5, y * side - 0.5))
        return result


def ramp(distance: np.ndarray, width: float) -> np.ndarray:
    """Smoothstep from 0 (distance <= -width/2) to 1 (distance >= width/2): a soft inside test.

    Written with in-place operations: it is the renderer's most frequent call.
    """
    t = np.asarray(distance, dtype=np.float32) * np.float32(1.0 / width)
    t += np.float32(0.5)
    np.clip(t, 0.0, 1.0, out=t)
    result = t * np.float32(-2.0)
    result += np.float32(3.0)
    result *= t
    result *= t
    return result


def ellipse_radius(canvas: Canvas, centre: Point, radii: Point, tilt: float = 0.0) -> np.ndarray:
    """Normalised elliptical radius (1 on the outline); `tilt` turns the first axis towards +v."""
    du, dv = canvas.u - np.float32(centre[0]), canvas.v - np.float32(centre[1])
    if tilt:
        cos, sin = np.float32(math.cos(tilt)), np.float32(math.sin(tilt))
        du, dv = cos * du + sin * dv, cos * dv - sin * du
    return np.sqrt((du * np.float32(1 / radii[0])) ** 2 + (dv * np.float32(1 / radii[1])) ** 2)


def ellipse(canvas: Canvas, centre: Point, radii: Point, tilt: float = 0.0,
            edge: float = 0.0) -> np.ndarray:
    """Soft filled ellipse; `edge` widens its anti-aliased border (normalised units)."""
    radius = ellipse_radius(canvas, centre, radii, tilt)
    return ramp((1.0 - radius) * np.float32(min(radii)), max(edge, canvas.pixel))


def ellipsoid(canvas: Canvas, centre: Point, radii: Point, tilt: float = 0.0,
              edge: float = 0.0) -> np.ndarray:
    """Thickness of an ellipsoid seen through (1 at the centre): organs dense in the middle."""
    radius = ellipse_radius(canvas, centre, radii, tilt)
    inside = ramp((1.0 - radius) * np.float32(min(radii)), max(edge, canvas.pixel))
    return inside * np.sqrt(np.clip(1.0 - radius * radius, 0.0, 1.0) * 0.75 + 0.25)


def superellipse_depth(canvas: Canvas, centre: Point, radii: Point, power: float,
                       mirror: float = 1.0) -> np.ndarray:
    """Approximate signed distance inside (+) a superellipse |x/a|^p + |y/b|^p = 1.

    The implicit function is divided by its gradient, so the distance is close to Euclidean
    near the boundary whatever the aspect ratio. `mirror` = -1 flips u about the centre.
    """
    x = np.abs((canvas.u - np.float32(centre[0])) * np.float32(mirror / radii[0]))
    y = np.abs((canvas.v - np.float32(centre[1])) * np.float32(1 / radii[1]))
    x = np.maximum(x, 1e-6)
    y = np.maximum(y, 1e-6)
    xp, yp = x ** np.float32(power - 1), y ** np.float32(power - 1)
    radius = (xp * x + yp * y) ** np.float32(1 / power)
    gradient = radius ** np.float32(1 - power) * np.sqrt(
        (xp * np.float32(1 / radii[0])) ** 2 + (yp * np.float32(1 / radii[1])) ** 2)
    return (1.0 - radius) / np.maximum(gradient, 1e-6)


def strokes(canvas: Canvas, paths: Sequence[Sequence[Point]], width: float | Sequence[float],
            values: Sequence[float] | None = None, blur: float = 0.0) -> np.ndarray:
    """Polylines of `width` (normalised, at least one pixel; one or one per path), in [0, 1].

    `values` sets each path's intensity; `blur` is a Gaussian sigma in normalised units.
    """
    side = canvas.size * _SUPERSAMPLE
    image = Image.new("L", (side, side))
    draw = ImageDraw.Draw(image)
    widths = [width] * len(paths) if np.ndim(width) == 0 else width
    for index, path in enumerate(paths):
        value = 1.0 if values is None else values[index]
        draw.line(canvas.to_pixels(path, _SUPERSAMPLE), fill=round(255 * value),
                  width=max(_SUPERSAMPLE, round(widths[index] * side)), joint="curve")
    image = image.reduce(_SUPERSAMPLE)
    if blur * canvas.size >= 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur * canvas.size))
    return np.asarray(image, dtype=np.float32) * np.float32(1 / 255)


def bezier(points: Sequence[Point], samples: int = 24) -> list[Point]:
    """Points along the Bezier curve with control points `points` (smooth tubes and leads)."""
    t = np.linspace(0.0, 1.0, samples)[:, None, None]
    curve = np.broadcast_to(np.asarray(points, dtype=np.float64), (samples, len(points), 2))
    while curve.shape[1] > 1:  # de Casteljau: repeated linear interpolation
        curve = (1 - t) * curve[:, :-1] + t * curve[:, 1:]
    return [(float(u), float(v)) for u, v in curve[:, 0]]


def smooth_noise(canvas: Canvas, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise smooth over 1/cells of the image (texture)."""
    coarse = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize(
        (canvas.size, canvas.size), Image.Resampling.BICUBIC, box=(1, 1, cells + 2, cells + 2))
    return np.asarray(image, dtype=np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with a `sigma` in pixels (edge-padded); the detector's blur."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-3)) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    height, width = image.shape
    padded = np.pad(image, radius, mode="edge")
    rows = sum(tap * padded[:, i:i + width] for i, tap in enumerate(taps))
    return sum(tap * rows[i:i + height] for i, tap in enumerate(taps))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Boolean mask grown by `pixels` in every direction (square structuring element)."""
    if pixels <= 0:
        return mask.astype(bool)
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


def region(mask: np.ndarray, threshold: float = 0.5, grow: int = 0) -> np.ndarray:
    """Boolean region where a soft mask reaches `threshold`, grown by `grow` pixels.

    Never empty: a sign too small to reach the threshold keeps its peak pixel.
    """
    result = mask >= threshold
    if not result.any():
        result = np.zeros(mask.shape, dtype=bool)
        result[np.unravel_index(int(np.argmax(mask)), mask.shape)] = True
    return dilate(result, grow)
