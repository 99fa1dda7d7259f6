"""Images and masks in and out: PIL <-> tensors, with one documented resize policy.

Guides: any PIL mode. EXIF orientation is applied first; transparency is composited on white
(emoji and stroke paintings are drawn on white); the result is RGB (or L for one-channel
models). Masks: any image; converted to 8-bit grayscale (transparency counts as black = keep)
and thresholded: value >= 128 -> 1 (may change), below -> 0 (keep).

Resize policy, applied identically to guide and mask so they stay aligned:
- "crop" (default): scale the shorter side to the model's resolution, centre-crop the other;
- "pad": scale the longer side to the resolution, pad the rest with white (mask: keep);
- "stretch": scale both sides to the resolution, ignoring the aspect ratio.
Images are resampled with Lanczos (area-averaging when shrinking), masks with nearest
neighbour, so a mask stays binary. An image already at the resolution is not touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_MODES = ("crop", "pad", "stretch")
MASK_THRESHOLD = 128


class ImageInputError(ValueError):
    """An input file that is not a usable image, with a message that says which and why."""


def open_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{path}: not a readable image ({exc})") from exc
    return image


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Apply EXIF orientation and composite any transparency onto `background`."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        base = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(base, image.convert("RGBA")).convert("RGB")
    return image


def _geometry(image: Image.Image, resolution: int, mode: str, resample: Image.Resampling,
              fill: int | tuple[int, ...]) -> Image.Image:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    size = (resolution, resolution)
    if image.size == size:
        return image
    if mode == "stretch":
        return image.resize(size, resample)
    if mode == "crop":
        return ImageOps.fit(image, size, method=resample)
    return ImageOps.pad(image, size, method=resample, color=fill)


def prepare_guide(image: Image.Image, resolution: int, channels: int = 3,
                  resize: str = "crop") -> torch.Tensor:
    """A PIL image as a (C, H, W) float tensor in [0, 1] at the model's resolution."""
    image = _flatten(image, (255, 255, 255)).convert("RGB" if channels == 3 else "L")
    fill = (255, 255, 255) if channels == 3 else 255
    image = _geometry(image, resolution, resize, Image.Resampling.LANCZOS, fill)
    return to_tensor(image)


def prepare_mask(image: Image.Image, resolution: int, resize: str = "crop") -> torch.Tensor:
    """Any image as a binary (1, H, W) float mask: 1 where the edit may change pixels."""
    image = _flatten(image, (0, 0, 0)).convert("L")
    image = _geometry(image, resolution, resize, Image.Resampling.NEAREST, 0)
    array = np.asarray(image) >= MASK_THRESHOLD
    return torch.from_numpy(array.astype(np.float32))[None]


def guide_image(image: Image.Image, channels: int = 3) -> Image.Image:
    """A PIL image as guides are read, before any resize: oriented, on white, RGB (or L)."""
    return _flatten(image, (255, 255, 255)).convert("RGB" if channels == 3 else "L")


def mask_array(image: Image.Image) -> np.ndarray:
    """Any image as a binary (H, W) bool mask at its own size: True where the edit may change."""
    return np.asarray(_flatten(image, (0, 0, 0)).convert("L")) >= MASK_THRESHOLD


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """A (C, H, W) tensor in [0, 1] as an 8-bit PIL image (rounded, so inputs round-trip)."""
    array = (tensor.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
