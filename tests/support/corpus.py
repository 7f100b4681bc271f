"""A broad corpus of real and difficult image files, made when the tests start.

From Pillow itself (every mode it writes, with and without transparency, every EXIF
orientation, single and multi-frame, 16-bit in each container Pillow reads, truncated
and corrupted variants, bombs found at open and while decoding), from tifffile (signed
16-bit TIFF) and from the photos and images that scikit-image and matplotlib ship.
``KINDS`` says what each kind of file yields; docs/architecture.md ("Grayscale,
exactly") shows the same table, and ``tests/test_docs.py`` keeps the two equal.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.servers import Handler, LocalServer, bomb_png, photo

# What a kind of file yields: "success", a reason, or "as Pillow" (stored when
# Pillow decodes it, else not_an_image).
KINDS = {
    "color": "success",
    "gray": "success",
    "palette": "success",
    "alpha": "success",
    "transparent_value": "success",
    "wide_gray": "success",
    "wide_gray_trns": "success",
    "wide_color": "success",
    "float": "success",
    "oriented": "success",
    "frames": "success",
    "shipped": "as Pillow",
    "truncated": "as Pillow",
    "corrupted": "as Pillow",
    "not_an_image": "not_an_image",
    "variant": "not_an_image",
    "refused": "unsupported_format",
    "bomb_at_open": "decompression_bomb",
    "bomb_at_decode": "decompression_bomb",
}
MAX_PIXELS = 50_000_000  # the job's --max-pixels in the corpus test (the default)
SIZE = (24, 16)


@dataclass(frozen=True)
class Sample:
    name: str  # unique: the URL path that serves it
    kind: str
    data: bytes


def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(values: np.ndarray, color_type: int, trns: bytes | None = None) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16-bit gray only): big-endian rows."""
    height, width = values.shape[:2]
    rows = values.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    extra = chunk(b"tRNS", trns) if trns is not None else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def fits(values: np.ndarray) -> bytes:
    """A FITS file of 16-bit integers (BITPIX 16), header and data in 2,880-byte blocks."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                   16",
        "NAXIS   =                    2",
        f"NAXIS1  = {values.shape[1]:>20}",
        f"NAXIS2  = {values.shape[0]:>20}",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).encode()
    data = values.astype(">u2").tobytes()
    return header.ljust(-(-len(header) // 2880) * 2880) + data.ljust(-(-len(data) // 2880) * 2880)


def tiff_of(values: np.ndarray) -> bytes:
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(out, values)
    return out.getvalue()


def picture(seed: int = 1) -> Image.Image:
    return photo(seed, *SIZE)


def with_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return rgba


def wide_values(seed: int) -> np.ndarray:
    """16-bit gray over the whole range, with extremes: 0, 255, 256, 65535."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 65536, size=SIZE[::-1], dtype=np.uint16)
    values.flat[:4] = (0, 255, 256, 65535)
    return values


def _color() -> Iterator[tuple[str, bytes]]:
    rgb = picture(1)
    for number, (fmt, options) in enumerate(
        [
            ("JPEG", {"quality": 90}),
            ("PNG", {}),
            ("WEBP", {"lossless": True}),
            ("WEBP", {"quality": 80}),
            ("BMP", {}),
            ("TIFF", {}),
            ("TIFF", {"compression": "tiff_lzw"}),
            ("PPM", {}),
            ("TGA", {}),
            ("PCX", {}),
            ("SGI", {}),
            ("QOI", {}),
            ("IM", {}),
            ("JPEG2000", {}),
            ("AVIF", {}),
            ("DDS", {}),
        ]
    ):
        yield f"rgb-{number}-{fmt}", saved(rgb, fmt, **options)
    yield "cmyk-jpeg", saved(rgb.convert("CMYK"), "JPEG")
    yield "cmyk-tiff", saved(rgb.convert("CMYK"), "TIFF")
    yield "ycbcr-jpeg", saved(rgb.convert("YCbCr"), "JPEG")
    yield "lab-tiff", saved(rgb.convert("LAB"), "TIFF")
    yield "rgb-progressive-jpeg", saved(rgb, "JPEG", progressive=True)


def _gray() -> Iterator[tuple[str, bytes]]:
    gray = picture(2).convert("L")
    for fmt in ("PNG", "JPEG", "TIFF", "BMP", "PPM", "GIF", "WEBP", "TGA", "PCX", "SGI", "IM"):
        yield f"l-{fmt}", saved(gray, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    bilevel = gray.convert("1")
    for fmt in ("PNG", "BMP", "TIFF", "XBM", "PPM", "MSP", "PCX", "GIF"):
        yield f"1-{fmt}", saved(bilevel, fmt)
    yield "1-tiff-g4", saved(bilevel, "TIFF", compression="group4")


def _palette() -> Iterator[tuple[str, bytes]]:
    pal = picture(3).convert("P", palette=Image.Palette.ADAPTIVE, colors=37)
    for fmt in ("PNG", "GIF", "BMP", "TIFF", "PCX", "TGA", "IM"):
        yield f"p-{fmt}", saved(pal, fmt)


def _alpha() -> Iterator[tuple[str, bytes]]:
    rgba = with_alpha(picture(4))
    for fmt, options in [
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("TGA", {}),
        ("QOI", {}),
        ("SGI", {}),
        ("BMP", {}),
        ("DDS", {}),
        ("ICO", {"sizes": [SIZE]}),
        ("JPEG2000", {}),
    ]:
        yield f"rgba-{fmt}", saved(rgba, fmt, **options)
    yield "la-png", saved(rgba.convert("LA"), "PNG")
    yield "la-tiff", saved(rgba.convert("LA"), "TIFF")


def _transparent_value() -> Iterator[tuple[str, bytes]]:
    pal = picture(5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    yield "p-trns-png", saved(pal, "PNG", transparency=3)
    yield "p-trns-gif", saved(pal, "GIF", transparency=3)
    gray = picture(5).convert("L")
    yield "l-trns-png", saved(gray, "PNG", transparency=int(np.asarray(gray)[0, 0]))
    rgb = picture(5)
    yield "rgb-trns-png", saved(rgb, "PNG", transparency=tuple(np.asarray(rgb)[0, 0].tolist()))


def _wide_gray() -> Iterator[tuple[str, bytes]]:
    values = wide_values(6)
    sixteen = Image.fromarray(values)
    for fmt in ("PNG", "TIFF", "JPEG2000", "IM", "PPM"):
        yield f"i16-{fmt}", saved(sixteen, fmt)
    rows = values.astype(">u2").tobytes()
    yield "pgm-12bit", b"P5\n%d %d\n4095\n" % SIZE + (values >> 4).astype(">u2").tobytes()
    yield (
        "pgm-16bit-ascii",
        b"P2\n%d %d\n65535\n" % SIZE + b" ".join(b"%d" % v for v in values.ravel()),
    )
    yield "pgm-16bit", b"P5\n%d %d\n65535\n" % SIZE + rows
    yield "tiff-int16", tiff_of((values.astype(np.int32) - 32768).astype(np.int16))
    yield "tiff-uint16-tifffile", tiff_of(values)
    yield "tiff-int32", tiff_of(values.astype(np.int32) * 3)
    yield "fits-16", fits(values)


def _wide_gray_trns() -> Iterator[tuple[str, bytes]]:
    values = wide_values(7)
    values[::3, ::2] = 4660  # the transparent value, in a pattern
    yield "i16-trns-png", raw_png(values, 0, struct.pack(">H", 4660))


def _wide_color() -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(8)
    rgb = rng.integers(0, 65536, size=(*SIZE[::-1], 3), dtype=np.uint16)
    rgba = rng.integers(0, 65536, size=(*SIZE[::-1], 4), dtype=np.uint16)
    la = rng.integers(0, 65536, size=(*SIZE[::-1], 2), dtype=np.uint16)
    yield "rgb16-png", raw_png(rgb, 2)
    yield "rgba16-png", raw_png(rgba, 6)
    yield "la16-png", raw_png(la, 4)
    yield "rgb16-ppm", b"P6\n%d %d\n65535\n" % SIZE + rgb.astype(">u2").tobytes()
    yield "rgb16-tiff", tiff_of(rgb)


def _float() -> Iterator[tuple[str, bytes]]:
    values = np.random.default_rng(9).uniform(-20, 300, size=SIZE[::-1]).astype(np.float32)
    image = Image.fromarray(values)
    yield "f-tiff", saved(image, "TIFF")
    yield "f-spider", saved(image, "SPIDER")
    yield "f-pfm", saved(image, "PPM")  # mode F: Pillow writes PFM
    yield "f-im", saved(image, "IM")


def _oriented() -> Iterator[tuple[str, bytes]]:
    rgb = picture(10)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for fmt, image in [
            ("JPEG", rgb),
            ("PNG", rgb),
            ("WEBP", rgb),
            ("TIFF", rgb),
            ("PNG", with_alpha(rgb)),
        ]:
            options = {"lossless": True} if fmt == "WEBP" else {}
            name = f"orient{orientation}-{fmt}-{image.mode}"
            yield name, saved(image, fmt, exif=exif.tobytes(), **options)


def _frames() -> Iterator[tuple[str, bytes]]:
    frames = [picture(seed) for seed in (11, 12, 13)]
    first, rest = frames[0], frames[1:]
    yield "anim-gif", saved(first, "GIF", save_all=True, append_images=rest)
    yield "anim-png", saved(first, "PNG", save_all=True, append_images=rest)
    yield "anim-webp", saved(first, "WEBP", save_all=True, append_images=rest, lossless=True)
    yield "pages-tiff", saved(first, "TIFF", save_all=True, append_images=rest)
    yield "mpo", saved(first, "MPO", save_all=True, append_images=rest)
    yield "ico-sizes", saved(first, "ICO", sizes=[(8, 8), SIZE])
    yield "icns", saved(picture(14).resize((32, 32)), "ICNS")
    yield (
        "anim-gif-alpha",
        saved(with_alpha(first), "GIF", save_all=True, append_images=[with_alpha(f) for f in rest]),
    )


def shipped_files() -> list[Path]:
    """The images scikit-image and matplotlib ship in their wheels."""
    import matplotlib
    import skimage

    images = Path(skimage.__file__).parent / "data"
    found = [p for p in sorted(images.iterdir()) if p.suffix in (".png", ".jpg", ".gif", ".tif")]
    mpl = Path(matplotlib.get_data_path())
    found += sorted((mpl / "images").glob("*.png"))[:12]
    found += sorted((mpl / "sample_data").glob("*.[jp][pn]g"))
    return found


def _shipped() -> Iterator[tuple[str, bytes]]:
    for path in shipped_files():
        yield f"{path.parent.name}-{path.name}", path.read_bytes()


def _bases() -> list[tuple[str, bytes]]:
    """One file per format for the truncated and corrupted variants."""
    rgb = picture(15)
    return [
        (fmt, saved(rgb, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
        for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "JPEG2000", "TGA", "PCX")
    ]


def _truncated() -> Iterator[tuple[str, bytes]]:
    for fmt, data in _bases():
        yield f"cut-half-{fmt}", data[: len(data) // 2]
        yield f"cut-head-{fmt}", data[:20]


def _corrupted() -> Iterator[tuple[str, bytes]]:
    rng = np.random.default_rng(16)
    for fmt, data in _bases():
        body = bytearray(data)
        for offset in rng.integers(len(body) // 3, len(body), size=8):
            body[offset] ^= 0x5A
        yield f"flipped-{fmt}", bytes(body)
        head = bytearray(data)
        head[8:24] = rng.integers(0, 256, size=16, dtype=np.uint8).tobytes()
        yield f"header-{fmt}", bytes(head)


def _not_an_image() -> Iterator[tuple[str, bytes]]:
    yield "empty", b""
    yield "html", b"<!doctype html><html><body>Not found</body></html>"
    yield "svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    yield "pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
    yield "json", b'{"error": "not an image"}'
    yield "random", np.random.default_rng(17).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    yield "zip", b"PK\x03\x04" + bytes(60)


def _variant() -> Iterator[tuple[str, bytes]]:
    dds = bytearray(saved(picture(18), "DDS"))
    dds[80:84] = struct.pack("<I", 0x80000)  # pixel-format flags Pillow does not know
    yield "dds-unknown-flags", bytes(dds)
    fourcc = bytearray(saved(picture(18), "DDS"))
    fourcc[80:88] = struct.pack("<I", 4) + b"ZZZZ"  # a FourCC Pillow does not decode
    yield "dds-unknown-fourcc", bytes(fourcc)


def _refused() -> Iterator[tuple[str, bytes]]:
    yield "eps", saved(picture(19), "EPS")
    yield "eps-binary-header", b"\xc5\xd0\xd3\xc6" + bytes(28)
    yield "wmf", b"\xd7\xcd\xc6\x9a\x00\x00" + bytes(40)
    yield "mpeg", b"\x00\x00\x01\xb3" + bytes(40)
    yield "grib", b"GRIB\x00\x00\x00\x01" + bytes(40)
    yield "bufr", b"BUFR" + bytes(40)
    yield "hdf5", b"\x89HDF\r\n\x1a\n" + bytes(40)


def _bomb_at_open() -> Iterator[tuple[str, bytes]]:
    yield "bomb-png-8000", bomb_png(8000)  # 64 M pixels: over 50 M, under Pillow's own limit
    yield "bomb-png-20000", bomb_png(20_000)  # over Pillow's own limit too
    yield "bomb-gif", saved(Image.new("1", (10_000, 10_000)), "GIF")
    yield "bomb-tiff", saved(Image.new("1", (9000, 9000)), "TIFF", compression="group4")


def ico_with(png: bytes, side: int = 16) -> bytes:
    """An ICO whose directory says side x side while the PNG it holds is another size."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def _bomb_at_decode() -> Iterator[tuple[str, bytes]]:
    yield "ico-hiding-8000", ico_with(bomb_png(8000))
    yield "ico-hiding-20000", ico_with(bomb_png(20_000))


GENERATORS = {
    "color": _color,
    "gray": _gray,
    "palette": _palette,
    "alpha": _alpha,
    "transparent_value": _transparent_value,
    "wide_gray": _wide_gray,
    "wide_gray_trns": _wide_gray_trns,
    "wide_color": _wide_color,
    "float": _float,
    "oriented": _oriented,
    "frames": _frames,
    "shipped": _shipped,
    "truncated": _truncated,
    "corrupted": _corrupted,
    "not_an_image": _not_an_image,
    "variant": _variant,
    "refused": _refused,
    "bomb_at_open": _bomb_at_open,
    "bomb_at_decode": _bomb_at_decode,
}


def corpus() -> list[Sample]:
    """Every sample, named by kind and source, each name once."""
    samples = [
        Sample(f"{kind}/{name}", kind, data)
        for kind, make in GENERATORS.items()
        for name, data in make()
    ]
    assert len({s.name for s in samples}) == len(samples)
    return samples


class CorpusHandler(Handler):
    def do_GET(self) -> None:
        served: dict[str, bytes] = self.server.owner.files
        body = served.get(self.path.lstrip("/"))
        if body is None:
            self.reply(404, b"Not found")
        else:
            self.reply(200, body, "application/octet-stream")


class CorpusServer(LocalServer):
    """The corpus on loopback: ``/<kind>/<name>`` answers the sample's bytes."""

    def __init__(self, samples: list[Sample]) -> None:
        super().__init__(CorpusHandler)
        self.files = {sample.name: sample.data for sample in samples}
