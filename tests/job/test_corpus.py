"""A broad corpus of real and difficult image files through one real job.

Every file of ``tests/support/corpus.py`` is served on loopback and listed once in
``urls.txt``; one job runs on the session's Ray into the session's MongoDB. Each line
is then checked against an expectation written here from Pillow's own documented
conversions, not from itm's code: its outcome, its md5, and every stored pixel.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from pymongo.database import Database

from tests.support.corpus import KINDS, MAX_PIXELS, CorpusServer, Sample, corpus
from tests.support.jobs import run_itm, write_urls

# Pillow modes of integer samples wider than 8 bits. Pillow's own conversion of them
# clips at 255 (a 16-bit photo comes out white); the rule is their high byte instead.
WIDE = {"I;16", "I;16L", "I;16B", "I", "I;16N"}


def reference(data: bytes) -> tuple[str, np.ndarray | None, str]:
    """(outcome, stored pixels, mode) as Pillow's documented behaviour gives them.

    Outcome is "success", "decompression_bomb" (a header over the job's --max-pixels)
    or "not_an_image" here; the kinds refused for their format are in ``KINDS``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                return "decompression_bomb", None, ""
            image.load()  # the first frame; ICO and ICNS: their largest size
            upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        return "decompression_bomb", None, ""
    except Exception:
        return "not_an_image", None, ""
    if upright.mode in WIDE:
        values = np.asarray(upright).astype(np.int64)
        gray = (np.clip(values, 0, 65535) // 256).astype(np.uint8)
        if "transparency" not in image.info:
            return "success", gray, "L"
        alpha = np.where(values == image.info["transparency"], 0, 255).astype(np.uint8)
        return "success", np.dstack((gray, alpha)), "LA"
    if upright.has_transparency_data:
        rgba = np.asarray(upright.convert("RGBA")).astype(np.int64)
        gray = (rgba[..., 0] + rgba[..., 1] + rgba[..., 2]) // 3
        return "success", np.dstack((gray, rgba[..., 3])).astype(np.uint8), "LA"
    rgb = np.asarray(upright.convert("RGB")).astype(np.int64)
    return "success", ((rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) // 3).astype(np.uint8), "L"


def expected(sample: Sample) -> tuple[str, np.ndarray | None, str]:
    rule = KINDS[sample.kind]
    if rule in ("success", "as Pillow"):
        outcome = reference(sample.data)
        assert rule == "as Pillow" or outcome[0] == "success", sample.name
        return outcome
    return rule, None, ""


def stored_pixels(image: dict[str, Any]) -> tuple[np.ndarray, str]:
    png = Image.open(io.BytesIO(bytes(image["gray"])))
    assert png.format == "PNG"
    return np.asarray(png), png.mode


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return corpus()


def test_every_kind_has_samples(samples: list[Sample]) -> None:
    assert set(Counter(s.kind for s in samples)) == set(KINDS)


def test_every_line_is_exactly_what_pillow_documents(
    samples: list[Sample], mongo_uri: str, db: Database, ray_local: None, tmp_path: Path
) -> None:
    with CorpusServer(samples) as server:
        urls = write_urls(tmp_path, [f"{server.url}/{s.name}" for s in samples])
        assert run_itm(mongo_uri, db.name, urls, "--max-pixels", str(MAX_PIXELS)) == 0
    events = {e["line"]: e for e in db.events.find()}
    assert sorted(events) == list(range(1, len(samples) + 1))
    wrong = []
    yields: Counter[tuple[str, str]] = Counter()
    for line, sample in enumerate(samples, 1):
        event = events[line]
        outcome, pixels, mode = expected(sample)
        got = "success" if event["status"] == "success" else event["reason"]
        yields[(sample.kind, got)] += 1
        if got != outcome:
            wrong.append(f"{sample.name}: {got} ({event.get('detail')}), expected {outcome}")
            continue
        if outcome != "success":
            assert event["detail"] and "object at 0x" not in event["detail"], event
            continue
        assert event["md5"] == hashlib.md5(sample.data).hexdigest()
        image = db.images.find_one({"md5": event["md5"]})
        assert image is not None
        gray, stored_mode = stored_pixels(image)
        if stored_mode != mode or gray.shape != pixels.shape or not np.array_equal(gray, pixels):
            wrong.append(
                f"{sample.name}: stored {stored_mode} {gray.shape}, expected {mode} {pixels.shape}"
            )
        assert (image["width"], image["height"]) == (pixels.shape[1], pixels.shape[0])
    print("corpus:", dict(sorted(yields.items())))
    assert wrong == []
