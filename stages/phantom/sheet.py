"""Contact sheets: a grid of images with a short caption under each, for `--preview FILE.png`.

Looking at a few dozen phantoms (or real images, or Grad-CAM overlays) side by side is the
quickest check that a rendered dataset looks like chest radiographs and that findings appear
where their labels say.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_CAPTION_HEIGHT = 14
_GAP = 2


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[str] | None = None,
                  columns: int = 4) -> Image.Image:
    """Tile uint8 images (grey (h, w) or colour (h, w, 3)) in rows of `columns`, captioned.

    Tiles are as large as the largest image; captions too long for a tile are shortened.
    """
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    if columns < 1:
        raise ValueError(f"columns must be positive, not {columns}")
    colour = any(np.asarray(image).ndim == 3 for image in images)
    mode = "RGB" if colour else "L"
    tile_height = max(np.asarray(image).shape[0] for image in images)
    tile_width = max(np.asarray(image).shape[1] for image in images)
    caption_height = _CAPTION_HEIGHT if captions is not None else 0
    rows = -(-len(images) // columns)
    sheet = Image.new(mode, (columns * (tile_width + _GAP) - _GAP,
                             rows * (tile_height + caption_height + _GAP) - _GAP))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    white = (255, 255, 255) if colour else 255
    for index, image in enumerate(images):
        left = (index % columns) * (tile_width + _GAP)
        top = (index // columns) * (tile_height + caption_height + _GAP)
        sheet.paste(Image.fromarray(np.asarray(image, dtype=np.uint8)).convert(mode), (left, top))
        if captions is not None:
            text = _fit(draw, captions[index], font, tile_width)
            draw.text((left + 1, top + tile_height + 1), text, fill=white, font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
         width: int) -> str:
    """`text`, cut and ended with '..' when it is wider than `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."
