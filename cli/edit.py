"""Edit an image locally with SDEdit: guide (+ mask) -> realistic images in OUTDIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.rules import ALL_SAMPLERS, DEFAULT_MODEL, EditParameters, parse


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


def parameters(args: argparse.Namespace, **extra: object) -> EditParameters:
    """The parsed options as EditParameters; ValueError with 'field: message' if out of range."""
    names = ("t0", "steps", "sampler", "eta", "repeats", "samples", "seed")
    values = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    values.update({k: v for k, v in extra.items() if v is not None})
    return parse(EditParameters, **values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guide", type=Path, help="guide image: stroke painting, composite or photo")
    parser.add_argument("--mask", type=Path,
                        help="mask image: white (>= 128) may change, black is kept exactly")
    parameter_arguments(parser)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="bundled model name, diffusers UNet2DModel folder or hub id "
                             f"(default {DEFAULT_MODEL})")
    parser.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop",
                        help="how a guide of another size is fitted to the model (default crop)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")


def fail(message: str) -> int:
    print(f"sdedit: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from jobs.rules import RuleViolation, check
    from models.imageio import ImageInputError, open_image, prepare_guide, prepare_mask, to_image
    from models.loader import ModelLoadError, load_model
    from models.sdedit import sdedit

    try:
        params = parameters(args)
    except ValueError as exc:
        return fail(str(exc))
    try:
        guide_image = open_image(args.guide)
        mask_image = open_image(args.mask) if args.mask else None
    except ImageInputError as exc:
        return fail(str(exc))
    if mask_image is not None and mask_image.size != guide_image.size:
        return fail(f"mask size {mask_image.size[0]}x{mask_image.size[1]} does not match guide "
                    f"size {guide_image.size[0]}x{guide_image.size[1]}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_model(args.model, device=device)
    except ModelLoadError as exc:
        return fail(str(exc))
    try:
        check(params, model.sde.family, model.sde.num_levels)
    except RuleViolation as exc:
        return fail(str(exc))
    guide = prepare_guide(guide_image, model.resolution, model.channels, args.resize)
    mask = prepare_mask(mask_image, model.resolution, args.resize) if mask_image else None
    with tqdm(total=1, desc="sdedit", unit="step", dynamic_ncols=True) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        images = sdedit(model, guide, mask, samples=params.samples, seed=params.seed,
                        progress=progress, **params.sampling().model_dump())
    args.out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        path = args.out / f"{args.guide.stem}-{k}.png"
        to_image(image).save(path)
        print(path)
    return 0
