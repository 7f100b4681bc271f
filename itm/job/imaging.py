"""Pure image logic: MD5, safe decoding, exact (R + G + B) // 3 grayscale, PNG encoding.

No Ray and no MongoDB here, so every step can be read and tested alone. The rule for
each kind of source is the table "Grayscale, exactly" of docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import SupportsIndex

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from itm.outcomes import Failure, Reason

# Pillow's formats that it decodes itself, in this process. Image.open tries only
# these, in Pillow's own order (some formats have no signature and must come late).
ACCEPTED_FORMATS = frozenset(
    {
        "AVIF", "BLP", "BMP", "CUR", "DCX", "DDS", "DIB", "FITS", "FLI", "FTEX", "GBR",
        "GIF", "ICNS", "ICO", "IM", "IMT", "JPEG", "JPEG2000", "MCIDAS", "MSP", "PCD",
        "PCX", "PIXAR", "PNG", "PPM", "PSD", "QOI", "SGI", "SPIDER", "SUN", "TGA",
        "TIFF", "WEBP", "XBM", "XPM", "XVTHUMB",
    }
)  # fmt: skip
# The rest of Pillow's formats, and why not: a test keeps the two sets equal to
# Pillow's, so that a new Pillow format is a decision, not an accident.
REFUSED_FORMATS = {
    "EPS": "Pillow renders it by running Ghostscript on the file's PostScript",
    "IPTC": "Pillow opens its embedded payload with every format it knows, EPS included",
    "WMF": "Pillow renders it through Windows' GDI or a handler of the application",
    "BUFR": "Pillow reads only its header; the pixels need a handler of the application",
    "GRIB": "Pillow reads only its header; the pixels need a handler of the application",
    "HDF5": "Pillow reads only its header; the pixels need a handler of the application",
    "MPEG": "Pillow reads only its header: it has no decoder for it",
}
# Pillow modes of integer samples wider than 8 bits: 16-bit PNG, TIFF, JPEG 2000,
# FITS, IM (I;16), 16-bit PGM (scaled by Pillow to 0..65535) and signed TIFF (I).
_WIDE = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
ORIENTATION = 0x0112  # the EXIF tag
# Rows are converted in strips of about this many pixels: the temporaries of a
# conversion stay small, so a decode peaks at the decoded image plus the gray one.
STRIP_PIXELS = 1 << 20
# zlib's run-length strategy: on the grayscale of real photos (benchmarks/bench_png.py)
# it is both faster and smaller than the default strategy at level 1.
PNG_STRATEGY = zlib.Z_RLE
SIGNATURE = 12  # bytes of an unknown file's start that a detail shows
_BOMB = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class GrayImage:
    """The stored form of an image: its grayscale PNG and the size after EXIF orientation.

    Pickled with the PNG out of band: a process that reads a group of them from Ray's
    object store maps the PNGs in place instead of copying each one (a writer reads a
    whole group to store its share of it), so there ``png`` is a read-only buffer.
    """

    png: bytes
    width: int
    height: int
    mode: str  # "L", or "LA" when the source has transparency

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[object, ...]:
        png: object = pickle.PickleBuffer(self.png) if int(protocol) >= 5 else self.png
        return (GrayImage, (png, self.width, self.height, self.mode))


def _buffer(data: bytes | memoryview | np.ndarray) -> bytes | memoryview:
    """The bytes of ``data`` without a copy (an array's own memoryview)."""
    return data.data if isinstance(data, np.ndarray) else data


def md5_hex(data: bytes | memoryview | np.ndarray) -> str:
    """Lowercase hex MD5 of the downloaded bytes (any buffer; no copy)."""
    return hashlib.md5(_buffer(data)).hexdigest()


def _open_order() -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in Image.ID if name in ACCEPTED_FORMATS)


def guess_format(head: bytes) -> str | None:
    """The format whose signature ``head`` has: a refused one first (a file may have the
    signatures of several), then the first of the others in Pillow's order."""
    Image.init()
    for name in sorted(Image.ID, key=lambda name: name not in REFUSED_FORMATS):
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(head) is True:
                return name
        except Exception:  # a signature check that chokes on a few bytes: not that format
            continue
    return None


def _about(data: bytes | memoryview) -> str:
    """What a detail says of bytes no decoder took: their size and their first bytes."""
    return f"{len(data):,} bytes starting {bytes(data[:SIGNATURE])!r}"


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's own bomb check made ``--max-pixels``: it runs at open and wherever a
    decoder picks a size of its own (an ICO or ICNS entry, a TIFF tile, a GIF frame),
    and its warning, past one limit, is an error here."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _bomb(exc: Exception, what: str, max_pixels: int) -> Failure:
    found = _BOMB.search(str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels"
    return Failure(
        Reason.DECOMPRESSION_BOMB, f"{what} of {pixels}, over --max-pixels {max_pixels:,}"
    )


def open_image(data: bytes | memoryview | np.ndarray, max_pixels: int) -> ImageFile.ImageFile:
    """Identify the image and read its header; no pixel is decoded yet.

    Only ``ACCEPTED_FORMATS`` are tried. The pixel count is checked from the header,
    so a small file that claims a huge canvas (a decompression bomb) costs nothing.
    Call it, and load the image, inside ``_pixel_limit`` (``grayscale_png`` does).
    """
    buffer = _buffer(data)
    try:
        return Image.open(io.BytesIO(buffer), formats=_open_order())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, guess_format(bytes(buffer[:16])) or "an image", max_pixels) from None
    except UnidentifiedImageError:
        guessed = guess_format(bytes(buffer[:16]))
        if guessed in REFUSED_FORMATS:
            raise Failure(
                Reason.UNSUPPORTED_FORMAT, f"{guessed} is refused: {REFUSED_FORMATS[guessed]}"
            ) from None
        if guessed is None:
            raise Failure(
                Reason.NOT_AN_IMAGE, f"no image format itm accepts: {_about(buffer)}"
            ) from None
        raise Failure(
            Reason.NOT_AN_IMAGE, f"{guessed} signature, but no valid header: {_about(buffer)}"
        ) from None
    # A variant Pillow does not decode (NotImplementedError) or a header it chokes on.
    except Exception as exc:
        guessed = guess_format(bytes(buffer[:16])) or "image"
        raise Failure(
            Reason.NOT_AN_IMAGE,
            f"{guessed} header Pillow cannot read ({len(buffer):,} bytes): "
            f"{type(exc).__name__}: {exc}",
        ) from None


def _load(image: ImageFile.ImageFile, max_pixels: int, size: int) -> None:
    """Decode the first frame (of an animated GIF, WebP or PNG too) of ``size`` bytes."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(
            exc, f"{image.format} data whose decoder asks for an image", max_pixels
        ) from None
    # Pillow signals corrupt data with many exception types, truncation included.
    except Exception as exc:
        raise Failure(
            Reason.NOT_AN_IMAGE, f"{image.format} data Pillow cannot decode ({size:,} bytes): {exc}"
        ) from None


def decode(data: bytes | memoryview | np.ndarray, max_pixels: int) -> Image.Image:
    """The decoded first frame of a raster image, as the file stores it (see ``to_gray``
    for its orientation); raises ``Failure`` on bad data."""
    with _pixel_limit(max_pixels):
        image = open_image(data, max_pixels)
        _load(image, max_pixels, len(_buffer(data)))
    return image


def gray_of_rgb(rgb: np.ndarray) -> np.ndarray:
    """Exact ``(R + G + B) // 3`` of an HxWx3 uint8 array, vectorized.

    Three uint16 planes added in place: about 8x faster than ``sum(axis=2)``,
    whose reduction over the short last axis numpy does pixel by pixel.
    """
    total = rgb[..., 0].astype(np.uint16)
    total += rgb[..., 1]
    total += rgb[..., 2]
    total //= 3
    return total.astype(np.uint8)


def _gray_strip(strip: Image.Image, alpha: bool) -> np.ndarray:
    """The gray (and alpha) of some rows of the image."""
    if strip.mode in _WIDE:
        # Wider samples are read on the 16-bit scale, whatever the container: their
        # high byte. A tRNS value marks transparent pixels, as in 8-bit PNGs.
        values = np.asarray(strip)
        gray: np.ndarray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        if not alpha:
            return gray
        opaque = values != strip.info["transparency"]
        return np.dstack((gray, opaque.astype(np.uint8) * 255))
    if strip.mode == "LA":
        return np.asarray(strip)
    if alpha:
        rgba = np.asarray(strip.convert("RGBA"))
        return np.dstack((gray_of_rgb(rgba[..., :3]), rgba[..., 3]))
    if strip.mode in ("L", "1"):  # already one channel: (v + v + v) // 3 == v
        return np.asarray(strip.convert("L"))
    return gray_of_rgb(np.asarray(strip.convert("RGB")))


# EXIF orientation → the numpy steps that show the image upright (as ImageOps.exif_transpose).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    8: np.rot90,
}


def to_gray(image: Image.Image) -> tuple[np.ndarray, str]:
    """The upright grayscale pixels of a decoded image, alpha kept: (array, "L" | "LA").

    Every mode goes through 8-bit RGB (Pillow's own conversion) except those whose
    gray is already one channel and samples wider than 8 bits, which keep their high
    byte on the 16-bit scale. The EXIF orientation is applied to the gray pixels
    (a quarter of an RGBA image's bytes), not to the decoded image.
    """
    alpha = image.has_transparency_data
    width, height = image.size
    out = np.empty((height, width, 2) if alpha else (height, width), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = image if (top, bottom) == (0, height) else image.crop((0, top, width, bottom))
        out[top:bottom] = _gray_strip(strip, alpha)
    upright = _UPRIGHT.get(image.getexif().get(ORIENTATION, 1))
    return (out if upright is None else np.ascontiguousarray(upright(out))), (
        "LA" if alpha else "L"
    )


def encode_png(pixels: np.ndarray, level: int) -> bytes:
    """PNG bytes of a gray (HxW, mode L) or gray+alpha (HxWx2, LA) uint8 array."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(
        out, format="PNG", compress_level=level, compress_type=PNG_STRATEGY
    )
    return out.getvalue()


def _any_turn(pixels: int) -> AbstractContextManager[object]:
    return nullcontext()


def grayscale_png(
    data: bytes | memoryview | np.ndarray,
    max_pixels: int,
    level: int,
    turn: Callable[[int], AbstractContextManager[object]] = _any_turn,
) -> GrayImage:
    """Downloaded bytes → the stored grayscale image; raises ``Failure`` on bad data.

    ``turn(pixels)`` is held while the pixels are decoded, converted and encoded:
    the job passes the node's large-decode lock, which bounds a node's memory.
    """
    with _pixel_limit(max_pixels):
        image = open_image(data, max_pixels)
        with turn(image.width * image.height):
            _load(image, max_pixels, len(_buffer(data)))
            pixels, mode = to_gray(image)
            del image  # the decoded image is freed before the PNG is encoded
            height, width = pixels.shape[:2]
            return GrayImage(encode_png(pixels, level), width, height, mode)
