"""Validate uploaded images without torch: size limits, real decoding, decompression bombs."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class ImageRejected(ValueError):
    """An upload the API refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# EXIF orientations that turn the image by 90 degrees: displayed width and height swap.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed: EXIF orientation applied
    height: int
    format: str


def inspect_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Check an upload: 413 too big, 415 not an accepted image, 422 corrupt.

    The header is read first, so a decompression bomb is refused before any pixel is decoded;
    then the whole image is decoded once, so a truncated file is caught here, not in the worker.
    """
    if len(data) > max_bytes:
        raise ImageRejected(413, f"{field}: {len(data)} bytes exceeds the limit of {max_bytes}")
    if not data:
        raise ImageRejected(422, f"{field}: empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"{field}: {exc}") from None
    except (UnidentifiedImageError, OSError):
        raise ImageRejected(415, f"{field}: not a recognised image; send one of "
                                 f"{', '.join(ACCEPTED_FORMATS)}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageRejected(415, f"{field}: {image.format} images are not accepted; send one of "
                                 f"{', '.join(ACCEPTED_FORMATS)}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(413, f"{field}: {width}x{height} pixels exceeds the limit of "
                                 f"{max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise ImageRejected(422, f"{field}: the image data is corrupt ({exc})") from None
    if image.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width=width, height=height, format=image.format)
