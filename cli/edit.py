"""Edit an image locally with SDEdit: guide (+ mask) -> realistic images in OUTDIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from jobs.rules import ALL_SAMPLERS, DEFAULT_MODEL, EditParameters, OutputSize, Region, parse


def parameter_arguments(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The edit parameters of jobs.rules as options; their ranges are checked by `parameters`.

    defaults=False leaves unset options out (`sdedit submit` lets the service fill them in).
    """
    fields = EditParameters.model_fields

    def default(name: str) -> object:
        return fields[name].default if defaults else None

    parser.add_argument("--t0", type=float, default=default("t0"),
                        help="noise strength in (0, 1]: small = faithful, large = realistic "
                             "(default 0.5; useful range 0.3-0.6)")
    parser.add_argument("--steps", type=int,
                        help="reverse steps (default: every noise level from t0 down, as the "
                             "paper; at most that many)")
    parser.add_argument("--sampler", choices=ALL_SAMPLERS,
                        help="ancestral or ddim for VP models, pc for VE models (default: "
                             "ancestral / pc)")
    parser.add_argument("--eta", type=float, default=default("eta"),
                        help="DDIM noise, 0 to 1 (default 0)")
    parser.add_argument("--repeats", type=int, default=default("repeats"),
                        help="K sequential re-noise/denoise passes (the official code uses 3)")
    parser.add_argument("-n", "--samples", type=int, default=default("samples"),
                        help="outputs per guide")
    parser.add_argument("--seed", type=int, default=default("seed"),
                        help="random seed (sample k uses seed + k)")
    parser.add_argument("--region", choices=get_args(Region), default=default("region"),
                        help="auto (default): with a mask, edit crops around its regions and "
                             "stitch them back at the image's own size; masked: the same, a mask "
                             "required; full: fit the whole image to the model")
    parser.add_argument("--output-size", dest="output_size", choices=get_args(OutputSize),
                        default=default("output_size"),
                        help="whole-image edits: results at the model's size (default) or the "
                             "input's")
    parser.add_argument("--padding", type=float, default=default("padding"),
                        help="crop-and-stitch: context per side, a fraction of the region "
                             "(default 0.25)")
    parser.add_argument("--feather", type=int, default=default("feather"),
                        help="crop-and-stitch: blend over this many pixels inside the mask edge "
                             "(default 4)")
    parser.add_argument("--prompt",
                        help="text-guided models (Stable Diffusion): what the edit should show")
    parser.add_argument("--negative-prompt", dest="negative_prompt",
                        help="text-guided models: what it should not show (default empty)")
    parser.add_argument("--guidance-scale", dest="guidance_scale", type=float,
                        help="text-guided models: classifier-free guidance weight, 1 = none "
                             "(default 7.5)")


def parameters(args: argparse.Namespace, **extra: object) -> EditParameters:
    """The parsed options as EditParameters; ValueError with 'field: message' if out of range."""
    names = ("t0", "steps", "sampler", "eta", "repeats", "samples", "seed", "region",
             "output_size", "padding", "feather", "prompt", "negative_prompt", "guidance_scale")
    values = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    values.update({k: v for k, v in extra.items() if v is not None})
    return parse(EditParameters, **values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guide", type=Path, help="guide image: stroke painting, composite or photo")
    parser.add_argument("--mask", type=Path,
                        help="mask image: white (>= 128) may change, black is kept exactly")
    parameter_arguments(parser)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="bundled model name, diffusers UNet2DModel folder, Stable "
                             f"Diffusion folder or hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop",
                        help="how a guide of another size is fitted to the model (default crop)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                        default="auto", help="network precision (default auto: float16 on CUDA, "
                                             "float32 on the CPU)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")


def fail(message: str) -> int:
    print(f"sdedit: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import ImageOps
    from tqdm import tqdm

    from jobs.rules import RuleViolation, check, check_mask
    from models.imageio import ImageInputError, open_image
    from models.loader import ModelLoadError, load_model, network_dtype
    from models.regions import plan_edit
    from models.sdedit import sdedit

    try:
        params = parameters(args)
        check_mask(params, args.mask is not None)
    except ValueError as exc:
        return fail(str(exc))
    try:
        guide_image = open_image(args.guide)
        mask_image = open_image(args.mask) if args.mask else None
    except ImageInputError as exc:
        return fail(str(exc))
    # Sizes as displayed (EXIF orientation applied), as the edit reads both images.
    shown = ImageOps.exif_transpose(guide_image).size
    if mask_image is not None and ImageOps.exif_transpose(mask_image).size != shown:
        mask_size = ImageOps.exif_transpose(mask_image).size
        return fail(f"mask size {mask_size[0]}x{mask_size[1]} does not match guide "
                    f"size {shown[0]}x{shown[1]}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_model(args.model, device=device, dtype=network_dtype(args.dtype, device))
    except ModelLoadError as exc:
        return fail(str(exc))
    try:
        check(params, model.sde.family, model.sde.num_levels, text=model.text)
    except RuleViolation as exc:
        return fail(str(exc))
    try:
        plan = plan_edit(guide_image, mask_image, model.resolution, model.channels,
                         samples=params.samples, region=params.region,
                         output_size=params.output_size, padding=params.padding,
                         feather=params.feather, resize=args.resize)
    except (ValueError, ImageInputError) as exc:
        return fail(str(exc))
    results = []
    if len(plan.guides):
        with tqdm(total=1, desc="sdedit", unit="step", dynamic_ncols=True) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            results = sdedit(model, plan.guides, plan.masks, samples=params.samples,
                             seed=params.seed, progress=progress, **params.sampling().model_dump())
    args.out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(plan.finish(list(results))):
        path = args.out / f"{args.guide.stem}-{k}.png"
        image.save(path)
        print(path)
    return 0
