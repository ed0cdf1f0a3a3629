"""Decoding radiographs from whatever real files contain, into one square uint8 grid.

Images are stored square (the whole image resized to size x size) rather than cropped, so
features, Grad-CAM masks and phantom regions share one pixel grid per image; the original shape
is kept alongside. A file that cannot be decoded raises `ImageError`: it is never turned into a
black image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(Exception):
    """An unreadable image file; str() names the file and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit 'L' for 8-bit modes, 32-bit float 'F' scaled to 0..255 for deeper ones."""
    if image.mode in _HIGH_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        if high <= low:
            raise ValueError("image is a single flat value")
        return Image.fromarray((pixels - low) * (255.0 / (high - low)), mode="F")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in {"RGBA", "LA", "PA", "La", "RGBa"}:
        image = image.convert(image.mode[0] if image.mode[0] == "L" else "RGB")
    return image.convert("L")


def load_xray(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode `path` to a (size, size) uint8 array; also return the original (height, width).

    JPEGs are decoded at a reduced DCT scale when they are much larger than `size` (Pillow's
    draft mode), which makes 2000-px radiographs several times faster to read.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, "empty (0-byte) file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                original = (image.height, image.width)
                if image.format == "JPEG" and image.mode in {"L", "RGB", "YCbCr"}:
                    image.draft("L", (size, size))
                image.load()
                image = ImageOps.exif_transpose(image)
                gray = _to_grayscale(image)
                resized = gray.resize((size, size), Image.Resampling.BILINEAR)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file Pillow can read") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError(path, "image is implausibly large (decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(path, f"truncated or corrupt image ({error})") from None
    pixels = np.asarray(resized)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return pixels, original


def decode_many(paths: list[str], size: int) -> list[tuple[np.ndarray | None, tuple[int, int] | None, str | None]]:
    """(pixels, original shape, None) or (None, None, reason) per path: one worker task.

    Lives here, next to `load_xray`, so worker processes import nothing heavier than Pillow.
    """
    results = []
    for path in paths:
        try:
            pixels, original = load_xray(Path(path), size)
            results.append((pixels, original, None))
        except ImageError as error:
            results.append((None, None, error.reason))
    return results
