"""Upload validation in the API: limits, types, corrupt data, decompression bombs; no torch."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from service.images import ImageRejected, inspect_image

LIMITS = dict(max_bytes=100_000, max_pixels=512 * 512)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_a_good_png_passes_with_its_size():
    info = inspect_image(encode(Image.new("RGB", (40, 30))), "image", **LIMITS)
    assert (info.width, info.height, info.format) == (40, 30, "PNG")


@pytest.mark.parametrize("data,status,message", [
    (b"x" * 100_001, 413, "exceeds the limit of 100000"),
    (b"", 422, "empty file"),
    (b"GIF89a but not really", 415, "not a recognised image"),
    (b"%PDF-1.4 hello", 415, "not a recognised image"),
])
def test_bad_uploads_are_refused_with_the_right_status(data, status, message):
    with pytest.raises(ImageRejected, match=message) as error:
        inspect_image(data, "image", **LIMITS)
    assert error.value.status == status


def test_a_decompression_bomb_is_refused_before_decoding():
    # A 1-bit 20000 x 20000 PNG is a few kB on disk and 400 megapixels decoded.
    bomb = encode(Image.new("1", (20_000, 20_000)))
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected, match="exceeds") as error:
        inspect_image(bomb, "image", **LIMITS)
    assert error.value.status == 413


def test_a_large_but_allowed_header_is_checked_against_the_setting():
    data = encode(Image.new("1", (1000, 1000)))
    with pytest.raises(ImageRejected, match="1000x1000 pixels exceeds the limit of 262144"):
        inspect_image(data, "image", **LIMITS)


def test_a_truncated_image_is_corrupt():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageRejected, match="corrupt") as error:
        inspect_image(data[: len(data) // 2], "mask", **LIMITS)
    assert error.value.status == 422


def test_an_unaccepted_format_is_unsupported():
    data = encode(Image.new("RGB", (8, 8)), "ICO")
    with pytest.raises(ImageRejected, match="ICO images are not accepted") as error:
        inspect_image(data, "image", **LIMITS)
    assert error.value.status == 415


def test_the_api_and_the_jobs_layer_import_no_torch():
    code = ("import sys, service.app, service.client, service.images, jobs.contract, "
            "jobs.settings, jobs.queue, jobs.rules, jobs.connection, cli.main; "
            "assert not {'torch', 'transformers'} & set(sys.modules), 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
