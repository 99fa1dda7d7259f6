"""Masked edits at the input's resolution: crop box maths, mask regions, bit-identical stitching."""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from models.imageio import ImageInputError, to_image
from models.network import ScoreModel
from models.regions import (
    LANCZOS,
    boxes_overlap,
    crop_box,
    edit_regions,
    feather_weights,
    fit_inside,
    grow_to_square,
    mask_regions,
    merge_regions,
    pad_box,
    plan_regions,
    restore_input_size,
    stitch,
)

EDIT = dict(t0=0.5, steps=2, seed=3)  # two forwards per edit: fast, and far from the input


def decoded(image: Image.Image) -> Image.Image:
    """The image encoded losslessly (PNG, or TIFF for modes PNG lacks) and decoded again."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA") else "TIFF")
    out = Image.open(io.BytesIO(buffer.getvalue()))
    out.load()
    return out


def mask_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8) * 255)


def random_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8))
    if mode == "P":
        return rgba.convert("RGB").quantize(64, dither=Image.Dither.NONE)
    return rgba if mode == "RGBA" else rgba.convert(mode)


def disc(size: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    y, x = np.mgrid[: size[1], : size[0]]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def flood_fill_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """8-connected regions by breadth-first search, pixel by pixel: the slow obvious reference."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    boxes = []
    for y0 in range(height):
        for x0 in range(width):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            seen[y0, x0] = True
            queue, box = deque([(y0, x0)]), [x0, y0, x0 + 1, y0 + 1]
            while queue:
                y, x = queue.popleft()
                box = [min(box[0], x), min(box[1], y), max(box[2], x + 1), max(box[3], y + 1)]
                for ny in range(max(y - 1, 0), min(y + 2, height)):
                    for nx in range(max(x - 1, 0), min(x + 2, width)):
                        if mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            boxes.append(tuple(box))
    return boxes


def counting(model: ScoreModel) -> tuple[ScoreModel, list[int]]:
    """The model with a network that records the batch size of every forward."""
    sizes: list[int] = []

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return model.network(x, t)

    return ScoreModel(network=network, sde=model.sde, resolution=model.resolution,
                      channels=model.channels, name=model.name), sizes


def assert_kept_outside(out: Image.Image, image: Image.Image, mask: np.ndarray) -> None:
    """Size and mode are the input's, every pixel outside the mask is the input's, bit for bit,
    and the edit changed something inside the mask (so the check is not vacuous)."""
    assert out.size == image.size and out.mode == image.mode
    got, want = np.asarray(out), np.asarray(image)
    assert np.array_equal(got[~mask], want[~mask])
    assert not np.array_equal(got[mask], want[mask])


# Crop box maths.

def test_padding_is_a_fraction_of_the_longer_side_per_side():
    assert pad_box((100, 100, 200, 140), padding=0.25, min_padding=8) == (75, 75, 225, 165)


def test_padding_is_at_least_min_padding_pixels():
    assert pad_box((10, 10, 14, 12), padding=0.25, min_padding=8) == (2, 2, 22, 20)
    assert pad_box((10, 10, 14, 12), padding=0.0, min_padding=0) == (10, 10, 14, 12)


def test_grow_to_square_centres_the_square_on_the_box():
    assert grow_to_square((10, 20, 30, 25)) == (10, 13, 30, 33)
    assert grow_to_square((0, 0, 5, 10)) == (-2, 0, 8, 10)  # odd growth: the extra pixel on the right
    assert grow_to_square((3, 3, 9, 9)) == (3, 3, 9, 9)


def test_fit_inside_moves_the_box_in_and_keeps_its_size():
    assert fit_inside((-5, 90, 15, 110), (100, 100)) == (0, 80, 20, 100)


def test_fit_inside_spans_the_image_where_the_box_is_longer_than_it():
    assert fit_inside((-10, 5, 50, 65), (30, 200)) == (0, 5, 30, 65)


@pytest.mark.parametrize("region", [(0, 0, 4, 4), (95, 40, 100, 45), (40, 0, 60, 3),
                                    (10, 10, 90, 20), (0, 0, 100, 80)])
def test_crop_box_is_a_square_inside_the_image_holding_the_region(region):
    size = (100, 80)
    left, top, right, bottom = crop_box(region, size, padding=0.25, min_padding=8)
    assert min(left, top) >= 0 and right <= size[0] and bottom <= size[1]
    assert left <= region[0] and top <= region[1] and right >= region[2] and bottom >= region[3]
    if max(region[2] - region[0], region[3] - region[1]) < 60:  # a padded square fits
        assert right - left == bottom - top


def test_crop_box_spans_a_narrow_image_and_is_as_square_as_it_allows():
    # A wide region in a short image: the crop takes the image's full height.
    assert crop_box((20, 10, 180, 20), (200, 30), padding=0.25, min_padding=8) == (0, 0, 200, 30)
    assert crop_box((20, 10, 80, 20), (200, 30), padding=0.0, min_padding=0) == (20, 0, 80, 30)


def test_regions_whose_crops_overlap_are_merged_until_none_do():
    size = (400, 100)
    # a and b are close; their merged crop is taller and then reaches c, which alone
    # overlaps neither.
    a, b, c = (10, 50, 20, 60), (30, 50, 40, 60), (20, 20, 30, 24)
    assert boxes_overlap(crop_box(a, size), crop_box(b, size))
    assert not any(boxes_overlap(crop_box(c, size), crop_box(r, size)) for r in (a, b))
    merged = merge_regions([a, b, c], size, padding=0.25, min_padding=8)
    assert [region for region, _ in merged] == [(10, 20, 40, 60)]


def test_far_apart_regions_keep_their_own_crops():
    merged = merge_regions([(10, 10, 20, 20), (300, 300, 310, 310)], (400, 400), 0.25, 8)
    assert [crop for _, crop in merged] == [(2, 2, 28, 28), (292, 292, 318, 318)]


# Regions of a mask.

def test_mask_regions_match_a_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random((rng.integers(1, 25), rng.integers(1, 25))) < rng.random() * 0.6
        assert mask_regions(mask) == flood_fill_boxes(mask)


def test_diagonal_neighbours_and_a_u_shape_are_one_region():
    diagonal = np.eye(5, dtype=bool)
    assert mask_regions(diagonal) == [(0, 0, 5, 5)]
    u_shape = np.zeros((6, 7), bool)
    u_shape[:, 1] = u_shape[:, 5] = u_shape[5, 1:6] = True  # two arms joined on the last row
    assert mask_regions(u_shape) == [(1, 0, 6, 6)]


def test_coarse_blocks_join_nearby_regions_and_keep_their_boxes_tight():
    mask = np.zeros((20, 40), bool)
    mask[3:5, 3:6] = mask[3:5, 8:10] = mask[15:18, 30:35] = True
    assert mask_regions(mask) == [(3, 3, 6, 5), (8, 3, 10, 5), (30, 15, 35, 18)]
    assert mask_regions(mask, block=4) == [(3, 3, 10, 5), (30, 15, 35, 18)]


def test_more_regions_than_max_regions_are_joined_nearest_first():
    mask = np.zeros((300, 300), bool)
    mask[10:12, 10:12] = mask[10:12, 15:17] = mask[250:252, 250:252] = True
    image = Image.new("RGB", (300, 300))
    separate = plan_regions(image, mask_image(mask), 16, padding=0.0, min_padding=1)
    assert len(separate.regions) == 3
    joined = plan_regions(image, mask_image(mask), 16, padding=0.0, min_padding=1, max_regions=2)
    assert [r.box for r in joined.regions] == [(9, 7, 18, 16), (249, 249, 253, 253)]


# Planning.

def test_plan_gives_guides_and_binary_masks_at_the_model_resolution():
    image = random_image("RGB", (120, 90))
    mask = disc((120, 90), (30, 30), 10) | disc((120, 90), (100, 70), 6)
    plan = plan_regions(image, mask_image(mask), 16, channels=3)
    assert plan.guides.shape == (2, 3, 16, 16) and plan.masks.shape == (2, 1, 16, 16)
    assert float(plan.guides.min()) >= 0 and float(plan.guides.max()) <= 1
    assert set(plan.masks.unique().tolist()) == {0.0, 1.0}
    assert plan_regions(image, mask_image(mask), 8, channels=1).guides.shape == (2, 1, 8, 8)


def test_a_thin_stroke_is_not_lost_when_the_crop_is_shrunk():
    mask = np.zeros((400, 400), bool)
    mask[200, 20:380] = True  # one pixel high, in a 380-pixel crop shrunk to 16 pixels
    plan = plan_regions(Image.new("RGB", (400, 400)), mask_image(mask), 16)
    (region,) = plan.regions
    left, top, right, bottom = region.box
    rows = ((np.arange(top, bottom)[mask[top:bottom, left:right].any(1)] - top) * 16) // (bottom - top)
    cols = ((np.arange(left, right)[mask[top:bottom, left:right].any(0)] - left) * 16) // (right - left)
    assert bool(region.mask[0][np.ix_(rows, cols)].all()) and not bool(region.mask.all())


def test_a_mask_of_another_size_is_refused():
    with pytest.raises(ValueError, match="mask is 20x10 but the image is 10x20"):
        plan_regions(Image.new("RGB", (10, 20)), Image.new("L", (20, 10)), 16)


def test_sixteen_bit_images_are_refused():
    with pytest.raises(ImageInputError, match="I;16"):
        plan_regions(Image.new("I;16", (10, 10)), Image.new("L", (10, 10), 255), 16)


def test_an_empty_mask_returns_the_input_without_running_the_model(vp_model):
    model, forwards = counting(vp_model)
    image = random_image("RGB", (30, 20))
    (out,) = edit_regions(model, image, Image.new("L", (30, 20), 0), **EDIT)
    assert forwards == [] and np.array_equal(np.asarray(out), np.asarray(image))


# Stitching.

def test_deep_pixels_are_the_results_and_the_feather_ramps_only_inside_the_mask_edge():
    image = Image.new("RGB", (60, 50), (200, 100, 40))
    mask = np.zeros((50, 60), bool)
    mask[10:40, 15:45] = True
    plan = plan_regions(image, mask_image(mask), 16)
    out = np.asarray(stitch(plan, [torch.zeros(3, 16, 16)], feather=3)).astype(int)
    assert np.array_equal(out[~mask], np.asarray(image)[~mask])
    assert (out[13:37, 18:42] == 0).all()  # deeper than 3 pixels: the (black) result
    for depth, row in enumerate([10, 11, 12]):  # 1/4, 2/4, 3/4 of the result from the edge in
        assert out[row, 30].tolist() == np.rint(np.array([200, 100, 40]) * (3 - depth) / 4).tolist()


def test_feather_weights_treat_the_image_border_as_no_edge():
    mask = np.zeros((10, 10), bool)
    mask[:, :4] = True  # touches the left, top and bottom borders
    weights = feather_weights(mask, (0, 0, 10, 10), feather=2)
    assert weights[5].tolist() == pytest.approx([1, 1, 2 / 3, 1 / 3, 0, 0, 0, 0, 0, 0])
    assert weights[0, 0] == 1 and weights[9, 0] == 1


def test_a_whole_image_mask_gives_the_result_resized_to_the_input():
    image = random_image("RGB", (45, 31))
    plan = plan_regions(image, Image.new("L", image.size, 255), 16)
    assert [r.box for r in plan.regions] == [(0, 0, 45, 31)]
    result = torch.rand(3, 16, 16)
    out = stitch(plan, [result], feather=4)
    assert np.array_equal(np.asarray(out), np.asarray(to_image(result).resize((45, 31), LANCZOS)))


def test_a_whole_image_mask_edits_every_pixel_at_the_input_size(vp_model):
    image = random_image("RGB", (45, 31))
    (out,) = edit_regions(vp_model, image, Image.new("L", image.size, 255), **EDIT)
    assert out.size == image.size
    assert (np.asarray(out) != np.asarray(image)).any(axis=2).mean() > 0.9


def with_exif_rotation(image: Image.Image) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=90)
    return Image.open(io.BytesIO(buffer.getvalue()))


CASES = {
    "odd size RGB": ("RGB", (37, 23), [((10, 11), 6)]),
    "L": ("L", (41, 29), [((20, 14), 7)]),
    "RGBA": ("RGBA", (33, 27), [((16, 13), 8)]),
    "LA": ("LA", (33, 27), [((16, 13), 8)]),
    "palette": ("P", (35, 25), [((17, 12), 8)]),
    "CMYK": ("CMYK", (31, 21), [((15, 10), 6)]),
    "mask touching the border": ("RGB", (39, 25), [((0, 0), 9), ((38, 24), 6)]),
    "two far-apart regions": ("RGB", (301, 157), [((20, 20), 6), ((280, 140), 9)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pixels_outside_the_mask_are_bit_identical_at_full_resolution(vp_model, case):
    mode, size, discs = CASES[case]
    image = random_image(mode, size)
    mask = np.zeros((size[1], size[0]), bool)
    for centre, radius in discs:
        mask |= disc(size, centre, radius)
    (out,) = edit_regions(vp_model, image, mask_image(mask), feather=2, **EDIT)
    out = decoded(out)
    assert_kept_outside(out, image, mask)
    if mode in ("RGBA", "LA"):  # alpha is copied, inside the mask too
        assert np.array_equal(out.getchannel("A"), image.getchannel("A"))


def test_palette_images_keep_their_palette_and_their_transparent_pixels():
    image = random_image("P", (40, 30))
    image.info["transparency"] = 7
    mask = disc((40, 30), (20, 15), 12)
    plan = plan_regions(image, mask_image(mask), 16)
    out = decoded(stitch(plan, [torch.rand(3, 16, 16)], feather=0))
    assert out.mode == "P" and out.getpalette() == image.getpalette()
    got, want = np.asarray(out), np.asarray(image)
    assert np.array_equal(got[~mask], want[~mask])
    transparent = mask & (want == 7)
    assert transparent.any() and (got[transparent] == 7).all()
    assert (got[mask & (want != 7)] != 7).all()  # edits never paint the transparent colour
    assert not np.array_equal(got[mask], want[mask])


def test_exif_rotated_jpegs_are_edited_as_displayed(vp_model):
    jpeg = with_exif_rotation(random_image("RGB", (38, 26)))
    shown = ImageOps.exif_transpose(jpeg)
    assert shown.size == (26, 38)
    mask = disc(shown.size, (8, 30), 6)  # drawn on the image as displayed
    (out,) = edit_regions(vp_model, jpeg, mask_image(mask), **EDIT)
    assert_kept_outside(decoded(out), shown, mask)


def test_regions_of_one_image_share_forwards(vp_model):
    model, forwards = counting(vp_model)
    size = (301, 157)
    mask = disc(size, (20, 20), 6) | disc(size, (280, 140), 9)
    outs = edit_regions(model, random_image("RGB", size), mask_image(mask), samples=2, **EDIT)
    assert len(outs) == 2
    assert forwards == [4, 4]  # two steps, each one forward of 2 regions x 2 samples


def test_samples_differ_inside_the_mask_and_agree_outside(vp_model):
    image = random_image("RGB", (37, 23))
    mask = disc((37, 23), (18, 11), 7)
    first, second = (np.asarray(o) for o in edit_regions(vp_model, image, mask_image(mask),
                                                          samples=2, **EDIT))
    assert np.array_equal(first[~mask], second[~mask])
    assert not np.array_equal(first[mask], second[mask])


def test_the_same_seed_gives_the_same_output(vp_model):
    image = random_image("RGB", (301, 157))
    mask = mask_image(disc((301, 157), (20, 20), 6) | disc((301, 157), (280, 140), 9))
    again = dict(EDIT)
    runs = [edit_regions(vp_model, image, mask, **again)[0] for _ in range(2)]
    again["seed"] += 1
    other = edit_regions(vp_model, image, mask, **again)[0]
    assert np.array_equal(np.asarray(runs[0]), np.asarray(runs[1]))
    assert not np.array_equal(np.asarray(runs[0]), np.asarray(other))


# The whole-image path at the input's size.

def test_stretch_resizes_the_result_to_the_input_size():
    result = torch.rand(3, 16, 16)
    out = restore_input_size(result, Image.new("RGB", (50, 20)), "stretch")
    assert np.array_equal(np.asarray(out), np.asarray(to_image(result).resize((50, 20), LANCZOS)))


def test_pad_cuts_the_padding_off_before_resizing():
    result = torch.zeros(3, 16, 16)
    result[1, 4:12] = 1.0  # where ImageOps.pad put a 40x20 picture: rows 4-11 of 16
    out = np.asarray(restore_input_size(result, Image.new("RGB", (40, 20)), "pad"))
    assert out.shape == (20, 40, 3) and (out == [0, 255, 0]).all()


def test_crop_pastes_the_centre_square_and_keeps_the_cropped_off_sides():
    image = random_image("RGB", (50, 20))
    out = np.asarray(restore_input_size(torch.zeros(3, 16, 16), image, "crop"))
    assert out.shape == (20, 50, 3)
    assert (out[:, 15:35] == 0).all()
    assert np.array_equal(out[:, :15], np.asarray(image)[:, :15])
    assert np.array_equal(out[:, 35:], np.asarray(image)[:, 35:])
