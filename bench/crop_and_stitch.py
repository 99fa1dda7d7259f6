"""Crop-and-stitch against the dense network over the whole photo: time per masked edit.

A 1024 x 1024 image with one centred square mask of 1 %, 5 % or 25 % of its area.
Crop-and-stitch (models/regions.py) plans a crop around the mask, runs the model at its own
resolution (32 px for the bundled emoji model, 256 px for the church-256 configuration with
random weights) and stitches the result back. The dense baseline runs the same UNet over the
whole image at its native resolution, as SIGE's dense baseline does (diffusers' UNet2DModel
takes any size divisible by its down-sampling factor; its attention layers make the dense cost
grow faster than the pixel count).

Dense forwards at 1024 px take seconds to minutes on a CPU, so per-edit times are computed,
not run: steps x the median time of one network forward (after a warm-up), plus, for
crop-and-stitch, the measured planning and stitching. The sampler's own update maths, a few %
of a forward (bench.step_overhead), is left out of both. --end-to-end also times one real
crop-and-stitch edit (edit_regions) to check the estimate. Note the two are not equal in
quality: the crop is resampled to the model's resolution (the "scale" column), the dense
network works at the photo's.

    python -m bench.crop_and_stitch [--configs emoji church-256] [--size 1024]
        [--areas 1 5 25] [--steps 50] [--reps 3] [--end-to-end] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image

from bench.networks import CONFIGS, random_vp_model
from bench.step_overhead import median_seconds
from models.loader import load_model
from models.network import ScoreModel
from models.regions import edit_regions, plan_regions, stitch

MODELS = ["emoji", *CONFIGS]


def build_model(name: str, device: str) -> ScoreModel:
    return random_vp_model(name, device) if name in CONFIGS else load_model(name, device)


def photo(size: int) -> Image.Image:
    """A smooth colour photo stand-in: gradients plus mild noise, the same on every run."""
    y, x = np.mgrid[:size, :size] / size
    rng = np.random.default_rng(0)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y)], axis=2) * 220
    rgb += rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def square_mask(size: int, area_percent: float) -> Image.Image:
    side = max(1, round(size * math.sqrt(area_percent / 100)))
    start = (size - side) // 2
    mask = np.zeros((size, size), np.uint8)
    mask[start:start + side, start:start + side] = 255
    return Image.fromarray(mask)


@torch.inference_mode()
def forward_seconds(model: ScoreModel, batch: int, size: int, reps: int) -> float:
    """Median time of one network forward on (batch, C, size, size); the level does not matter."""
    x = torch.randn(batch, model.channels, size, size, device=model.device)
    levels = torch.full((batch,), 500)

    def forward() -> None:
        model.predict(x, levels)
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    return median_seconds(forward, reps)


def plan_and_stitch_seconds(model: ScoreModel, image: Image.Image, mask: Image.Image,
                            reps: int) -> float:
    """Median time to plan the crops and stitch results (the guides stand in for them) back."""

    def plan_and_stitch() -> None:
        plan = plan_regions(image, mask, model.resolution, model.channels)
        stitch(plan, list(plan.guides))

    return median_seconds(plan_and_stitch, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["emoji", "church-256"], choices=MODELS)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--areas", nargs="+", type=float, default=[1, 5, 25],
                        help="mask area, percent of the image")
    parser.add_argument("--steps", type=int, default=50, help="network forwards per edit")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time one real crop-and-stitch edit per mask")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 128 px image, 2 steps, 1 rep, end to end")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.reps, args.end_to_end = 128, 2, 1, True
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"image={args.size}x{args.size} steps={args.steps} reps={args.reps}")
    print(f"per edit = {args.steps} forwards x the median forward time "
          "(+ planning and stitching for crop-and-stitch); sampler maths left out of both")
    header = (f"{'config':<11} {'R':>4} {'mask %':>6} {'crop box':>9} {'scale':>6} "
              f"{'crop fwd ms':>11} {'dense fwd ms':>12} {'plan+stitch ms':>14} "
              f"{'crop s/edit':>11} {'dense s/edit':>12} {'dense/crop':>10}")
    if args.end_to_end:
        header += f" {'measured s/edit':>15}"
    print(header)
    image = photo(args.size)
    for name in args.configs:
        model = build_model(name, args.device)
        size = model.resolution
        dense = forward_seconds(model, 1, args.size, args.reps)
        for area in args.areas:
            mask = square_mask(args.size, area)
            plan = plan_regions(image, mask, size, model.channels)
            crop = forward_seconds(model, len(plan.regions), size, args.reps)
            overhead = plan_and_stitch_seconds(model, image, mask, args.reps)
            crop_edit = args.steps * crop + overhead
            dense_edit = args.steps * dense
            left, top, right, bottom = plan.regions[0].box
            line = (f"{name:<11} {size:>4} {area:>6g} {right - left:>4}x{bottom - top:<4} "
                    f"{(right - left) / size:>6.2f} {crop * 1e3:>11.1f} {dense * 1e3:>12.1f} "
                    f"{overhead * 1e3:>14.1f} {crop_edit:>11.3f} {dense_edit:>12.3f} "
                    f"{dense_edit / crop_edit:>10.1f}")
            if args.end_to_end:
                start = time.perf_counter()
                edit_regions(model, image, mask, t0=0.5, steps=args.steps, seed=0)
                line += f" {time.perf_counter() - start:>15.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
