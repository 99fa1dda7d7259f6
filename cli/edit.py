"""Edit an image locally with SDEdit: guide (+ mask) -> realistic images in OUTDIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "emoji"


def _t0(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"t0 must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"t0 must be in (0, 1], got {value:g}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guide", type=Path, help="guide image: stroke painting, composite or photo")
    parser.add_argument("--mask", type=Path,
                        help="mask image: white (>= 128) may change, black is kept exactly")
    parser.add_argument("--t0", type=_t0, default=0.5,
                        help="noise strength in (0, 1]: small = faithful, large = realistic "
                             "(default 0.5; useful range 0.3-0.6)")
    parser.add_argument("--steps", type=_positive,
                        help="reverse steps (default: every noise level from t0 down, as the paper)")
    parser.add_argument("--sampler", choices=["ancestral", "ddim", "pc"],
                        help="ancestral or ddim for VP models, pc for VE models (default: "
                             "ancestral / pc)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise, 0 to 1 (default 0)")
    parser.add_argument("--repeats", type=_positive, default=1,
                        help="K sequential re-noise/denoise passes (the official code uses 3)")
    parser.add_argument("-n", "--samples", type=_positive, default=1, help="outputs per guide")
    parser.add_argument("--seed", type=int, default=0, help="random seed (sample k uses seed + k)")
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

    from models.imageio import ImageInputError, open_image, prepare_guide, prepare_mask, to_image
    from models.loader import ModelLoadError, load_model
    from models.sdedit import EditParams, sdedit

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
    params = EditParams(t0=args.t0, steps=args.steps, sampler=args.sampler, eta=args.eta,
                        repeats=args.repeats)
    try:
        params.validate(model.sde.family)
    except ValueError as exc:
        return fail(str(exc))
    guide = prepare_guide(guide_image, model.resolution, model.channels, args.resize)
    mask = prepare_mask(mask_image, model.resolution, args.resize) if mask_image else None
    with tqdm(total=1, desc="sdedit", unit="forward", dynamic_ncols=True) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        images = sdedit(model, guide, mask, t0=params.t0, steps=params.steps,
                        sampler=params.sampler, eta=params.eta, repeats=params.repeats,
                        samples=args.samples, seed=args.seed, progress=progress)
    args.out.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        path = args.out / f"{args.guide.stem}-{k}.png"
        to_image(image).save(path)
        print(path)
    return 0
