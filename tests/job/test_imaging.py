"""Pure image logic: exact grayscale, every mode, and refusals, with no Ray and no MongoDB."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from itm.job.imaging import (
    ACCEPTED_FORMATS,
    REFUSED_FORMATS,
    _pixel_limit,
    decode,
    gray_of_rgb,
    grayscale_png,
    md5_hex,
    open_image,
)
from itm.outcomes import Failure
from tests.support.servers import bomb_png, jpeg, photo

SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"
PHOTOS = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"]
MAX_PIXELS = 100_000_000


def naive_gray(image: Image.Image) -> list[int]:
    """The definition, one pixel at a time: floor((R + G + B) / 3) on 8-bit RGB."""
    return [(r + g + b) // 3 for r, g, b in channel_values(image.convert("RGB"))]


def channel_values(image: Image.Image) -> list:
    """Pixel values as Python ints (tuples for several bands), row by row."""
    array = np.asarray(image)
    return array.reshape(-1, array.shape[2]).tolist() if array.ndim == 3 else array.ravel().tolist()


def stored(data: bytes) -> Image.Image:
    result = grayscale_png(data, MAX_PIXELS, level=1)
    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG"
    assert (image.width, image.height, image.mode) == (result.width, result.height, result.mode)
    return image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def test_md5_of_bytes_and_buffers() -> None:
    data = b"itm" * 1000
    expected = hashlib.md5(data).hexdigest()
    assert md5_hex(data) == expected
    assert md5_hex(np.frombuffer(data, dtype=np.uint8)) == expected


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (256, 300, 3)])
def test_gray_is_exact_on_random_arrays(shape: tuple[int, int, int]) -> None:
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    rgb[0, 0] = (255, 255, 255)  # 765 must not overflow
    expected = [(int(r) + int(g) + int(b)) // 3 for r, g, b in rgb.reshape(-1, 3)]
    assert gray_of_rgb(rgb).dtype == np.uint8
    assert gray_of_rgb(rgb).ravel().tolist() == expected


@pytest.mark.parametrize("name", PHOTOS)
def test_gray_is_exact_on_real_photos(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    source = Image.open(io.BytesIO(data))
    result = stored(data)
    assert result.size == source.size
    assert channel_values(result.getchannel(0)) == naive_gray(source)


def rgb_picture() -> Image.Image:
    return photo(3, 40, 30)


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("P", "GIF"),
        ("1", "PNG"),
        ("1", "BMP"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("YCbCr", "JPEG"),
    ],
)
def test_opaque_modes_give_exact_l(mode: str, fmt: str) -> None:
    source = rgb_picture().convert(mode)
    data = encoded(source, fmt)
    decoded = Image.open(io.BytesIO(data))
    result = stored(data)
    assert result.mode == "L"
    assert channel_values(result) == naive_gray(decoded)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_as_la(mode: str) -> None:
    rgba = rgb_picture().convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    source = rgba.convert(mode)
    data = encoded(source, "PNG")
    decoded = Image.open(io.BytesIO(data)).convert("RGBA")
    result = stored(data)
    assert result.mode == "LA"
    assert channel_values(result.getchannel("L")) == naive_gray(decoded)
    assert channel_values(result.getchannel("A")) == channel_values(decoded.getchannel("A"))


def test_palette_with_transparency_keeps_it() -> None:
    source = rgb_picture().convert("P")
    data = encoded(source, "GIF", transparency=0)
    result = stored(data)
    assert result.mode == "LA"
    alpha = np.asarray(result.getchannel("A"))
    assert (alpha == 0).any() and (alpha == 255).any()


def test_sixteen_bit_gray_keeps_the_high_byte() -> None:
    values = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 54
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    result = stored(encoded(source, "PNG"))
    assert result.mode == "L"
    assert np.array_equal(np.asarray(result), (values >> 8).astype(np.uint8))


@pytest.mark.parametrize(
    "fmt, options",
    [
        ("GIF", {}),
        ("WEBP", {"lossless": True}),
        ("PNG", {}),
    ],
)
def test_animated_images_give_their_first_frame(fmt: str, options: dict) -> None:
    frames = [photo(seed, 32, 24) for seed in (5, 6, 7)]
    data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], **options)
    decoded = Image.open(io.BytesIO(data))
    assert getattr(decoded, "n_frames", 1) == 3
    result = stored(data)
    assert channel_values(result.getchannel(0)) == naive_gray(decoded)


def test_exif_orientation_is_applied() -> None:
    source = photo(9, 60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    result = stored(encoded(source, "JPEG", exif=exif.tobytes(), quality=95))
    assert (result.width, result.height) == (20, 60)


@pytest.mark.parametrize("side", [12_000, 20_000])  # under and over Pillow's own limit
def test_decompression_bombs_are_refused_before_decoding(side: int) -> None:
    data = bomb_png(side)
    assert len(data) < 2_000_000
    with pytest.raises(Failure) as caught:
        decode(data, MAX_PIXELS)
    assert caught.value.reason == "decompression_bomb"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!doctype html><html><body>404</body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"%PDF-1.4 not an image",
        bytes(range(256)) * 10,
        jpeg()[:400],
        jpeg()[: len(jpeg()) // 2],
    ],
)
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(Failure) as caught:
        grayscale_png(data, MAX_PIXELS, level=1)
    assert caught.value.reason == "not_an_image"
    assert "object at 0x" not in caught.value.detail


def test_png_level_zero_stores_and_run_length_compresses() -> None:
    data = (SAMPLES / "grace_hopper.jpg").read_bytes()
    fast, small = grayscale_png(data, MAX_PIXELS, 0), grayscale_png(data, MAX_PIXELS, 1)
    assert len(fast.png) > fast.width * fast.height > 1.5 * len(small.png)
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(fast.png))), np.asarray(Image.open(io.BytesIO(small.png)))
    )


def test_the_format_lists_cover_pillows_formats() -> None:
    Image.init()
    assert ACCEPTED_FORMATS | set(REFUSED_FORMATS) == set(Image.OPEN)
    assert not ACCEPTED_FORMATS & set(REFUSED_FORMATS)


def test_eps_is_refused_by_its_signature() -> None:
    with pytest.raises(Failure) as caught:
        grayscale_png(encoded(rgb_picture(), "EPS"), MAX_PIXELS, level=1)
    assert caught.value.reason == "unsupported_format"
    assert "Ghostscript" in caught.value.detail


def test_max_pixels_above_pillows_own_limit_takes_effect() -> None:
    data = bomb_png(14_000)  # 196 M pixels: Pillow alone refuses over 2 x 89 M
    with _pixel_limit(200_000_000):
        assert open_image(data, 200_000_000).size == (14_000, 14_000)
    with pytest.raises(Failure) as caught:
        grayscale_png(data, 100_000_000, level=1)
    assert caught.value.reason == "decompression_bomb"
    assert "--max-pixels 100,000,000" in caught.value.detail


def test_sixteen_bit_gray_is_one_rule_whatever_the_container() -> None:
    values = np.arange(40 * 30, dtype=np.uint32).reshape(30, 40).astype(np.uint16) * 54
    pgm = b"P5\n40 30\n65535\n" + values.astype(">u2").tobytes()  # Pillow: mode I
    png = encoded(Image.fromarray(values), "PNG")  # Pillow: mode I;16
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    for data in (pgm, png):
        assert np.array_equal(np.asarray(stored(data)), (values >> 8).astype(np.uint8))


def test_sixteen_bit_gray_keeps_its_transparent_value() -> None:
    values = np.full((4, 5), 1000, dtype=np.uint16)
    values[1, 2] = 4660
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="PNG", transparency=4660)
    result = stored(out.getvalue())
    assert result.mode == "LA"
    gray = np.asarray(result.getchannel("L"))
    assert gray[1, 2] == 4660 >> 8 and (np.delete(gray.ravel(), 7) == 1000 >> 8).all()
    assert np.argwhere(np.asarray(result.getchannel("A")) == 0).tolist() == [[1, 2]]


def test_a_variant_pillow_does_not_decode_is_not_an_image() -> None:
    dds = bytearray(encoded(rgb_picture(), "DDS"))
    dds[80:84] = (0x80000).to_bytes(4, "little")  # pixel-format flags Pillow does not know
    with pytest.raises(Failure) as caught:
        grayscale_png(bytes(dds), MAX_PIXELS, level=1)
    assert caught.value.reason == "not_an_image"
    assert "NotImplementedError" in caught.value.detail
