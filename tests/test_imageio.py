"""Image and mask input: modes, transparency, EXIF orientation, resize policy, mask threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.imageio import (
    ImageInputError,
    open_image,
    prepare_guide,
    prepare_mask,
    to_image,
    to_tensor,
)


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    guide = prepare_guide(image, 16)
    assert guide.shape == (3, 16, 16)
    assert guide[:, 5, 5].tolist() == [1.0, 1.0, 1.0]
    assert guide[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "LA", "CMYK"])
def test_any_mode_becomes_rgb_in_unit_range(mode):
    image = Image.new("RGB", (16, 16), (10, 120, 250)).convert(mode)
    guide = prepare_guide(image, 16)
    assert guide.shape == (3, 16, 16)
    assert float(guide.min()) >= 0.0 and float(guide.max()) <= 1.0


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert prepare_guide(image, 16).min() == 1.0


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (32, 16), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 16, 16))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=100)
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    guide = prepare_guide(loaded, 16, resize="stretch")
    # After rotation the white half is on top.
    assert guide[:, 2, 8].mean() > 0.9 and guide[:, 13, 8].mean() < 0.1


def test_resize_policies():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red left quarter
    crop = prepare_guide(image, 16, resize="crop")
    pad = prepare_guide(image, 16, resize="pad")
    stretch = prepare_guide(image, 16, resize="stretch")
    assert crop[0, 8, 0] < 0.1  # the red quarter is cropped away
    assert pad[:, 0, 8].tolist() == [1.0, 1.0, 1.0]  # white padding on top
    assert stretch[0, 8, 0] > 0.9 and stretch[0, 8, 15] < 0.1
    with pytest.raises(ValueError, match="resize mode"):
        prepare_guide(image, 16, resize="zoom")


def test_mask_threshold_and_transparency():
    image = Image.new("L", (16, 16), 127)
    image.paste(128, (0, 0, 8, 16))
    mask = prepare_mask(image, 16)
    assert mask.shape == (1, 16, 16)
    assert mask[0, :, :8].eq(1).all() and mask[0, :, 8:].eq(0).all()
    transparent = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    assert prepare_mask(transparent, 16).sum() == 0


def test_mask_stays_binary_when_resized():
    image = Image.new("L", (64, 64), 0)
    image.paste(255, (10, 10, 40, 50))
    mask = prepare_mask(image, 16)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_eight_bit_images_round_trip_exactly():
    data = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8)
    image = Image.fromarray(data.numpy())
    assert torch.equal(torch.from_numpy(np.array(to_image(to_tensor(image)))), data)


def test_unreadable_files_say_why(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        open_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageInputError, match="not a readable image"):
        open_image(bad)
