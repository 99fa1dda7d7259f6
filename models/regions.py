"""Masked edits at the image's own resolution: crop around each mask region, edit, stitch back.

A masked edit only has to change the masked pixels, so instead of shrinking the whole photo to
the model's resolution, each region of the mask is cropped with some context, the crop is
resized to the model's resolution and edited, and the result is resized back and pasted into
the photo through the mask. Pixels outside the mask are the input's own, bit for bit, at full
resolution; the output has the input's size and mode.

Planning (`plan_regions`):
1. the mask's 8-connected regions (`mask_regions`); while there are more than `max_regions`,
   regions are looked for in a coarser copy of the mask (blocks of 2, 4, ... pixels), which
   joins the nearest ones first;
2. per region a crop box (`crop_box`): its bounding box plus `padding` of context on every
   side, grown to a square (the models are square) and kept inside the image; where the square
   does not fit, the box spans the image in that direction and the crop is stretched;
3. regions whose crop boxes overlap are merged until none do (`merge_regions`), so each masked
   pixel is edited by exactly one crop;
4. each crop becomes a guide (Lanczos, as models/imageio.py resizes guides) and a mask at the
   model's resolution. The model's mask marks every model pixel that any masked pixel falls
   in, so shrinking never loses a thin stroke; the full-resolution mask decides what is pasted.

Stitching (`stitch`): each result is resized to its box (Lanczos) and blended into the input
with weights that are 0 outside the mask, 1 deeper than `feather` pixels inside it, and ramp
up in between (the image border is not an edge: there is no seam to hide there); the blend is
converted to the input's mode and pasted through the mask.

Modes: L, RGB, RGBA and LA keep their mode, alpha copied unchanged (guides see transparency
composited on white, as everywhere else). P stays P with its own palette: edited pixels take
the nearest opaque palette colour without dithering (dithering spreads error into neighbours
and looks like noise on flat palette art), and pixels whose palette entry is not fully opaque
are left alone, as alpha is left alone in RGBA. 1, RGBX, CMYK, YCbCr, LAB and HSV are blended
in RGB and converted back by PIL. 16-bit and float images (I, I;16, F) are refused: the models
produce 8-bit colour, and pasting it would silently change the input's depth and scale.

Memory of a job: the tensors are regions x samples slots of C x R x R each (SlotBatch keeps a
handful of float32 tensors of that size per slot), whatever the photo's size; `max_regions`
bounds the regions. Outside torch, the photo is held once, decoded and oriented, as a PIL
image (at most SDEDIT_MAX_PIXELS x 4 bytes), and the mask as one bool per pixel; planning
briefly needs a few more bytes per pixel to read the mask (and a few int64 per horizontal run
of it: a painted mask has a few per row), and stitching works on one crop box at a time, in
uint8 except in the feather band, about 30 bytes per pixel of the box. Measured on a
16-megapixel RGB photo: 0.12 GB above the decoded inputs for a 600 x 600 box, 0.5 GB for a
mask covering everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from models.imageio import (
    RESIZE_MODES,
    ImageInputError,
    guide_image,
    mask_array,
    prepare_guide,
    prepare_mask,
    to_image,
)
from models.sdedit import Model, sdedit

# (left, top, right, bottom) with right and bottom exclusive: PIL's crop box.
Box = tuple[int, int, int, int]

DEFAULT_PADDING = 0.25  # context per side, as a fraction of the region's longer side
MIN_PADDING = 8  # pixels: even a dot needs surroundings for the model to match them
DEFAULT_FEATHER = 4  # pixels
MAX_REGIONS = 16
STITCH_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
LANCZOS = Image.Resampling.LANCZOS


# Connected regions of a binary mask, on its horizontal runs: a painted mask has a few runs
# per row, so this is far cheaper than a pass per pixel, and vectorised end to end.

@dataclass(frozen=True)
class _Runs:
    """Maximal horizontal runs of True pixels, in row-major order; `end` is exclusive."""

    row: np.ndarray
    start: np.ndarray
    end: np.ndarray


def _runs(mask: np.ndarray) -> _Runs:
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # +1 where a run starts, -1 just past where it ends
    row, start = np.nonzero(step == 1)
    return _Runs(row, start, np.nonzero(step == -1)[1])


def _connect(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over the edges (a, b): for every node, the smallest node it is connected to."""
    parent = np.arange(count)
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            return parent
        # Hook the larger root under the smaller one: parents only ever point to smaller
        # nodes, so no cycle can form, and each round removes at least one root.
        np.minimum.at(parent, np.maximum(root_a, root_b)[apart], np.minimum(root_a, root_b)[apart])
        while True:  # pointer jumping until every node points at its root again
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _label_runs(runs: _Runs, width: int) -> tuple[np.ndarray, int]:
    """Each run's 8-connected component, numbered in the order of their first pixels."""
    stride = width + 2  # row * stride + column orders runs row by row, whatever the column
    start_key = runs.row * stride + runs.start
    end_key = runs.row * stride + runs.end
    # A run touches the runs of the row above that start at or before its end and end at or
    # after its start (end is exclusive, so this includes diagonal neighbours): a contiguous
    # range [first, last) of the sorted runs.
    above = (runs.row - 1) * stride
    first = np.searchsorted(end_key, above + runs.start, "left")
    last = np.searchsorted(start_key, above + runs.end, "right")
    touching = np.maximum(last - first, 0)
    lower = np.repeat(np.arange(len(touching)), touching)
    offset = np.arange(touching.sum()) - np.repeat(np.cumsum(touching) - touching, touching)
    upper = np.repeat(first, touching) + offset
    roots, labels = np.unique(_connect(len(touching), upper, lower), return_inverse=True)
    return labels, len(roots)


def _regions(mask: np.ndarray, runs: _Runs, block: int) -> list[Box]:
    """mask_regions on the mask's runs, computed once by the caller for every block size."""
    if block == 1:
        labels, count = _label_runs(runs, mask.shape[1])
    else:
        coarse = np.logical_or.reduceat(mask, np.arange(0, mask.shape[0], block), axis=0)
        coarse = np.logical_or.reduceat(coarse, np.arange(0, mask.shape[1], block), axis=1)
        coarse_runs = _runs(coarse)
        coarse_labels, count = _label_runs(coarse_runs, coarse.shape[1])
        # Every run of the mask lies in one run of the coarse mask: the last one starting at
        # or before its first block.
        stride = coarse.shape[1] + 2
        keys = coarse_runs.row * stride + coarse_runs.start
        inside = np.searchsorted(keys, runs.row // block * stride + runs.start // block, "right") - 1
        labels = coarse_labels[inside]
    height, width = mask.shape
    left, top = np.full(count, width), np.full(count, height)
    right, bottom = np.zeros(count, np.int64), np.zeros(count, np.int64)
    np.minimum.at(left, labels, runs.start)
    np.minimum.at(top, labels, runs.row)
    np.maximum.at(right, labels, runs.end)
    np.maximum.at(bottom, labels, runs.row + 1)
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(left, top, right, bottom, strict=True)]


def mask_regions(mask: np.ndarray, block: int = 1) -> list[Box]:
    """Bounding boxes of the mask's 8-connected regions, in the order of their first pixels.

    block > 1 joins pixels whose block x block cells touch (regions nearer than about one
    block); the boxes stay tight around the mask's own pixels.
    """
    if mask.dtype != bool or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D bool array, got {mask.dtype} {mask.shape}")
    runs = _runs(mask)
    return _regions(mask, runs, block) if len(runs.row) else []


# Crop boxes: small pure functions of boxes and the image size (width, height).

def pad_box(box: Box, padding: float = DEFAULT_PADDING, min_padding: int = MIN_PADDING) -> Box:
    """The box with padding x its longer side (at least min_padding pixels) added on every side."""
    left, top, right, bottom = box
    margin = max(min_padding, math.ceil(padding * max(right - left, bottom - top)))
    return left - margin, top - margin, right + margin, bottom + margin


def clip_box(box: Box, size: tuple[int, int]) -> Box:
    """The part of the box inside the image."""
    left, top, right, bottom = box
    return max(left, 0), max(top, 0), min(right, size[0]), min(bottom, size[1])


def grow_to_square(box: Box) -> Box:
    """The smallest square holding the box, centred on it: the models' aspect ratio is 1."""
    left, top, right, bottom = box
    grow_x = max((bottom - top) - (right - left), 0)
    grow_y = max((right - left) - (bottom - top), 0)
    return (left - grow_x // 2, top - grow_y // 2,
            right + grow_x - grow_x // 2, bottom + grow_y - grow_y // 2)


def _fit_span(low: int, high: int, extent: int) -> tuple[int, int]:
    length = high - low
    if length >= extent:
        return 0, extent
    low = min(max(low, 0), extent - length)
    return low, low + length


def fit_inside(box: Box, size: tuple[int, int]) -> Box:
    """The box moved inside the image, same size; a side longer than the image's becomes it."""
    left, right = _fit_span(box[0], box[2], size[0])
    top, bottom = _fit_span(box[1], box[3], size[1])
    return left, top, right, bottom


def crop_box(region: Box, size: tuple[int, int], padding: float = DEFAULT_PADDING,
             min_padding: int = MIN_PADDING) -> Box:
    """The crop around a region: padded, clipped (there is no context beyond the image),
    squared, and kept inside the image. It always holds the region."""
    return fit_inside(grow_to_square(clip_box(pad_box(region, padding, min_padding), size)), size)


def boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def union_box(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def merge_regions(regions: Sequence[Box], size: tuple[int, int], padding: float = DEFAULT_PADDING,
                  min_padding: int = MIN_PADDING) -> list[tuple[Box, Box]]:
    """Regions whose crop boxes overlap merged until none do; (region, crop box) pairs.

    A merged region's crop is recomputed from the union of the regions, so it may reach a
    third region: hence the repetition until stable.
    """
    regions = list(regions)
    while True:
        crops = [crop_box(r, size, padding, min_padding) for r in regions]
        pair = next(((i, j) for i in range(len(crops)) for j in range(i + 1, len(crops))
                     if boxes_overlap(crops[i], crops[j])), None)
        if pair is None:
            return list(zip(regions, crops, strict=True))
        i, j = pair
        regions[i] = union_box(regions[i], regions.pop(j))


# Planning and stitching.

@dataclass(frozen=True)
class Region:
    """One crop of a masked edit: where it is, and what the model gets for it."""

    box: Box  # in the input after EXIF orientation
    guide: torch.Tensor  # (C, R, R) in [0, 1]
    mask: torch.Tensor  # (1, R, R), 1 where any masked pixel falls


@dataclass(frozen=True)
class RegionPlan:
    """The crops of one masked edit and what stitching needs: the input at full resolution."""

    image: Image.Image  # the input with EXIF orientation applied, in its own mode
    mask: np.ndarray  # (H, W) bool, True = may change
    regions: list[Region]
    resolution: int
    channels: int

    @property
    def guides(self) -> torch.Tensor:
        """(regions, C, R, R): the `guide` argument of sdedit()."""
        if not self.regions:
            return torch.empty(0, self.channels, self.resolution, self.resolution)
        return torch.stack([r.guide for r in self.regions])

    @property
    def masks(self) -> torch.Tensor:
        """(regions, 1, R, R): the `mask` argument of sdedit()."""
        if not self.regions:
            return torch.empty(0, 1, self.resolution, self.resolution)
        return torch.stack([r.mask for r in self.regions])


def _check_feather(feather: int) -> None:
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise ValueError(f"feather must be a non-negative integer (pixels), got {feather!r}")


def plan_regions(image: Image.Image, mask: Image.Image, resolution: int, channels: int = 3,
                 padding: float | None = None, *, min_padding: int = MIN_PADDING,
                 max_regions: int = MAX_REGIONS) -> RegionPlan:
    """The crops of a masked edit, with guides and masks at the model's resolution.

    padding: context per side as a fraction of a region's longer side (None: DEFAULT_PADDING),
    at least min_padding pixels. The mask is any image of the input's size (after EXIF
    orientation), read as models/imageio.py reads masks. An empty mask gives no regions.
    """
    padding = DEFAULT_PADDING if padding is None else padding
    if not (isinstance(padding, (int, float)) and math.isfinite(padding) and padding >= 0):
        raise ValueError(f"padding must be a non-negative fraction of the region, got {padding!r}")
    if not isinstance(min_padding, int) or min_padding < 0:
        raise ValueError(f"min_padding must be a non-negative integer, got {min_padding!r}")
    if not isinstance(max_regions, int) or max_regions < 1:
        raise ValueError(f"max_regions must be a positive integer, got {max_regions!r}")
    image = ImageOps.exif_transpose(image)  # as models/imageio.py reads every input
    if image.mode not in STITCH_MODES:
        raise ImageInputError(f"a {image.mode} image cannot be edited in place: the models produce "
                              f"8-bit colour; convert it to one of {STITCH_MODES} first")
    binary = mask_array(mask)
    if binary.shape != (image.height, image.width):
        raise ValueError(f"the mask is {binary.shape[1]}x{binary.shape[0]} but the image is "
                         f"{image.width}x{image.height} (after EXIF orientation)")
    runs = _runs(binary)
    boxes = _regions(binary, runs, 1) if len(runs.row) else []
    block = 1
    while len(boxes) > max_regions:
        block *= 2
        boxes = _regions(binary, runs, block)
    regions = []
    for _, box in merge_regions(boxes, image.size, padding, min_padding):
        left, top, right, bottom = box
        guide = prepare_guide(image.crop(box), resolution, channels, resize="stretch")
        inside = torch.from_numpy(binary[top:bottom, left:right]).float()[None, None]
        # Max pooling: a model pixel may change if any masked pixel falls in it.
        regions.append(Region(box, guide, F.adaptive_max_pool2d(inside, resolution)[0]))
    return RegionPlan(image, binary, regions, resolution, channels)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion; beyond the array counts as inside, so a border is not an edge."""
    padded = np.pad(mask, 1, constant_values=True)
    rows = padded[:-2] & padded[1:-1] & padded[2:]
    return rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]


def feather_weights(mask: np.ndarray, box: Box, feather: int) -> np.ndarray:
    """Paste weights over a box: 0 outside the mask; inside, (d + 1) / (feather + 1) for a pixel
    d erosions deep (chessboard distance to the nearest kept pixel, capped), so the ramp lies
    within `feather` pixels inside the mask edge and deeper pixels weigh exactly 1."""
    _check_feather(feather)
    left, top, right, bottom = box
    height, width = mask.shape
    # A margin of `feather` pixels: erosion reads that far, and the edges of the window (where
    # it is not the image border) only disturb the margin.
    x0, y0 = max(left - feather, 0), max(top - feather, 0)
    window = mask[y0:min(bottom + feather, height), x0:min(right + feather, width)]
    depth = window.astype(np.uint16)
    inner = window
    for _ in range(feather):
        inner = _erode(inner)
        depth += inner
    depth = depth[top - y0:bottom - y0, left - x0:right - x0]
    return depth.astype(np.float32) / np.float32(feather + 1)


def _palette_entries(image: Image.Image) -> tuple[np.ndarray, int]:
    """(256, 4) RGBA of every palette index, as PIL displays it, and the palette's length."""
    mode = image.palette.mode if image.palette is not None else "RGB"
    flat = image.getpalette(mode) or []
    lut = Image.frombytes("P", (256, 1), bytes(range(256)))
    lut.putpalette(flat, mode)
    if "transparency" in image.info:
        lut.info["transparency"] = image.info["transparency"]
    return np.asarray(lut.convert("RGBA"))[0], len(flat) // len(mode)


def _palette_patch(colour: Image.Image, original: Image.Image, image: Image.Image) -> Image.Image:
    entries, length = _palette_entries(image)
    indices = np.asarray(original)
    opaque = np.flatnonzero(entries[:length, 3] == 255)
    if len(opaque) == 0:
        return original  # no colour of this palette can be painted
    palette = Image.new("P", (1, 1))
    palette.putpalette(entries[opaque, :3].ravel().tolist())
    nearest = opaque[np.asarray(colour.convert("RGB").quantize(palette=palette,
                                                               dither=Image.Dither.NONE))]
    kept = entries[indices, 3] != 255
    return Image.frombytes("P", original.size, np.where(kept, indices, nearest).astype(np.uint8).tobytes())


def _in_mode(colour: Image.Image, original: Image.Image, image: Image.Image) -> Image.Image:
    """A blended crop (RGB or L) in the input's mode, alpha and palette taken from the input."""
    mode = original.mode
    if mode == "P":
        return _palette_patch(colour, original, image)
    if mode in ("RGBA", "LA"):
        patch = colour.convert(mode[:-1])
        patch.putalpha(original.getchannel("A"))
        return patch
    if mode in ("L", "RGB"):
        return colour.convert(mode)
    if mode == "1":
        return colour.convert("1", dither=Image.Dither.NONE)
    return colour.convert("RGB").convert(mode)


def stitch(plan: RegionPlan, results: Sequence[torch.Tensor],
           feather: int = DEFAULT_FEATHER) -> Image.Image:
    """Paste one edited crop per region (C, R, R) into the input: the input's size and mode,
    every pixel outside the mask bit-identical to the input (after EXIF orientation)."""
    _check_feather(feather)
    if len(results) != len(plan.regions):
        raise ValueError(f"{len(results)} results for {len(plan.regions)} regions")
    colour_mode = "RGB" if plan.channels == 3 else "L"
    out = plan.image.copy()
    for region, result in zip(plan.regions, results, strict=True):
        left, top, right, bottom = region.box
        weights = feather_weights(plan.mask, region.box, feather)
        blended = np.array(to_image(result).convert(colour_mode)
                           .resize((right - left, bottom - top), LANCZOS))
        original = plan.image.crop(region.box)
        # Only the feather band mixes: elsewhere in the mask the result is taken as it is, so
        # the float maths (and its memory) is confined to the band.
        band = (weights > 0) & (weights < 1)
        base = np.asarray(original.convert(colour_mode))[band].astype(np.float32)
        w = weights[band][:, None] if blended.ndim == 3 else weights[band]
        blended[band] = np.rint(base + w * (blended[band] - base)).astype(np.uint8)
        out.paste(_in_mode(Image.fromarray(blended), original, plan.image), (left, top),
                  Image.fromarray(weights > 0))
    return out


def restore_input_size(result: torch.Tensor, image: Image.Image, resize: str = "crop") -> Image.Image:
    """A whole-image edit (C, R, R) back at the input's size: the `full` path with
    output_size=input, undoing the resize policy the guide was fitted with.

    stretch: resized to the input's size. pad: the padding cut off, then resized. crop: resized
    to the centre square the model saw (to within half a pixel) and pasted into the input, read
    as guides are; the sides cropped away were never edited and are the input's.
    Returns the model's mode (RGB or L), as output_size=model does.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {resize!r}")
    original = guide_image(image, result.shape[0])
    width, height = original.size
    edited = to_image(result)
    if resize == "stretch":
        return edited.resize((width, height), LANCZOS)
    if resize == "pad":
        # Where ImageOps.pad put the picture: pad a white marker the same way and find it.
        marker = ImageOps.pad(Image.new("L", original.size, 255), edited.size,
                              Image.Resampling.NEAREST, color=0)
        return edited.crop(marker.getbbox()).resize((width, height), LANCZOS)
    side = min(width, height)
    original.paste(edited.resize((side, side), LANCZOS), ((width - side) // 2, (height - side) // 2))
    return original


@dataclass(frozen=True)
class EditPlan:
    """What a whole edit runs (guides and masks, one slot per guide and sample) and how its
    results become output images (`finish`): shared by the worker, the RQ task and the CLI."""

    guides: torch.Tensor  # (B, C, R, R)
    masks: torch.Tensor | None  # (B, 1, R, R)
    finish: Callable[[Sequence[torch.Tensor]], list[Image.Image]]
    # finish(results) takes the B * samples results in sdedit()'s order (guide-major) and
    # gives one output image per sample.


def plan_edit(image: Image.Image, mask: Image.Image | None, resolution: int, channels: int, *,
              samples: int, region: str = "auto", output_size: str = "model",
              padding: float | None = None, feather: int = DEFAULT_FEATHER,
              max_regions: int = MAX_REGIONS, resize: str = "crop") -> EditPlan:
    """The plan of one edit, following `region` (jobs.rules): `auto` crops around the mask when
    there is one, `masked` must have a mask, `full` fits the whole image to the model (then
    `output_size` says whether results stay at the model's size or go back to the input's)."""
    if region == "masked" and mask is None:
        raise ValueError("region 'masked' needs a mask")
    if mask is not None and region in ("auto", "masked"):
        plan = plan_regions(image, mask, resolution, channels, padding, max_regions=max_regions)
        _check_feather(feather)
        count = len(plan.regions)

        def stitched(results: Sequence[torch.Tensor]) -> list[Image.Image]:
            if not count:
                return [plan.image.copy() for _ in range(samples)]  # nothing may change
            return [stitch(plan, [results[b * samples + k] for b in range(count)], feather)
                    for k in range(samples)]

        return EditPlan(plan.guides, plan.masks, stitched)
    guide = prepare_guide(image, resolution, channels, resize)[None]
    model_mask = prepare_mask(mask, resolution, resize)[None] if mask is not None else None

    def whole(results: Sequence[torch.Tensor]) -> list[Image.Image]:
        if output_size == "input":
            return [restore_input_size(result, image, resize) for result in results]
        return [to_image(result) for result in results]

    return EditPlan(guide, model_mask, whole)


def edit_regions(model: Model, image: Image.Image, mask: Image.Image, *, t0: float = 0.5,
                 steps: int | None = None, sampler: str | None = None, eta: float = 0.0,
                 repeats: int = 1, samples: int = 1, seed: int = 0, padding: float | None = None,
                 feather: int = DEFAULT_FEATHER, max_regions: int = MAX_REGIONS,
                 **text: str | float | None) -> list[Image.Image]:
    """A masked edit at the input's resolution, in process: one output image per sample.

    All regions of all samples run as one batch (regions share forwards). Region b, sample k
    uses seed + b * samples + k, as sdedit() numbers its outputs. `text`: prompt,
    negative_prompt, guidance_scale for text-guided models (as sdedit() takes them).
    """
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    plan = plan_edit(image, mask, model.resolution, model.channels, samples=samples,
                     region="masked", padding=padding, feather=feather, max_regions=max_regions)
    if not len(plan.guides):
        return plan.finish([])
    edited = sdedit(model, plan.guides, plan.masks, t0=t0, steps=steps, sampler=sampler, eta=eta,
                    repeats=repeats, samples=samples, seed=seed, **text)
    return plan.finish(list(edited))
