"""Image decoding survives what real files contain, and never invents a black image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages.data.images import ImageError, load_xray
from tests.conftest import radiograph


def _assert_ramp(pixels: np.ndarray, size: int) -> None:
    assert pixels.shape == (size, size) and pixels.dtype == np.uint8
    assert pixels[:, : size // 4].mean() + 60 < pixels[:, -size // 4:].mean(), "content lost or flipped"


def test_8bit_grayscale(tmp_path):
    Image.fromarray(radiograph()).save(tmp_path / "a.png")
    pixels, original = load_xray(tmp_path / "a.png", 32)
    _assert_ramp(pixels, 32)
    assert original == (48, 40)


def test_16bit_grayscale_is_rescaled_to_full_range(tmp_path):
    ramp = (radiograph().astype(np.uint16) * 16)  # 12-bit values in a 16-bit PNG
    Image.fromarray(ramp).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    pixels, _ = load_xray(tmp_path / "a.png", 32)
    _assert_ramp(pixels, 32)
    assert pixels.max() >= 240 and pixels.min() <= 15


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes(tmp_path, mode):
    image = Image.fromarray(radiograph()).convert("RGB").convert(mode)
    image.save(tmp_path / "a.png")
    _assert_ramp(load_xray(tmp_path / "a.png", 32)[0], 32)


def test_palette_with_transparency(tmp_path):
    image = Image.fromarray(radiograph()).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "a.png", transparency=0)
    _assert_ramp(load_xray(tmp_path / "a.png", 32)[0], 32)


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(radiograph()).convert("CMYK").save(tmp_path / "a.jpg", quality=95)
    assert Image.open(tmp_path / "a.jpg").mode == "CMYK"
    _assert_ramp(load_xray(tmp_path / "a.jpg", 32)[0], 32)


@pytest.mark.parametrize("side", [4000, 64])
def test_huge_and_tiny_images(tmp_path, side):
    big = np.asarray(Image.fromarray(radiograph()).resize((side, side)))
    Image.fromarray(big).save(tmp_path / "a.jpg", quality=90)
    pixels, original = load_xray(tmp_path / "a.jpg", 128)
    _assert_ramp(pixels, 128)
    assert original == (side, side)


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"a\.png: empty \(0-byte\) file"):
        load_xray(tmp_path / "a.png", 32)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path, suffix):
    Image.fromarray(radiograph(200, 200)).save(tmp_path / f"a.{suffix}")
    data = (tmp_path / f"a.{suffix}").read_bytes()
    (tmp_path / f"a.{suffix}").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_xray(tmp_path / f"a.{suffix}", 32)


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_xray(tmp_path / "nope.png", 32)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image file"):
        load_xray(tmp_path / "notes.png", 32)


def test_real_radiographs(shared):
    files = sorted((shared / "data" / "real_cxr").glob("*.jpg"))
    assert len(files) >= 10
    for path in files:
        pixels, original = load_xray(path, 256)
        assert pixels.shape == (256, 256) and original == (2000, 2000)
        assert pixels.std() > 10, f"{path.name} decoded to a nearly flat image"
        full = np.asarray(Image.open(path).convert("L").resize((256, 256), Image.Resampling.BILINEAR), np.float32)
        assert np.abs(full - pixels).mean() < 3, f"{path.name}: reduced-scale decoding drifted from a full decode"
