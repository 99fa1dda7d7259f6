"""Pictures for the README and the model card, made by the project itself with the bundled model.

- samples.png: unconditional samples (SDEdit from t0 = 1, the paper's ancestral sampler).
- masked_edit.png: a masked edit (guide, mask, outputs; the kept region is the input's pixels).

    python -m bench.readme_figures [--model emoji] [--out docs/images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.realism_faithfulness import contact_sheet, grid_sheet
from models.imageio import open_image, prepare_guide, prepare_mask
from models.loader import load_model
from models.sdedit import sdedit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    res = model.resolution

    grey = torch.full((3, res, res), 0.5)
    images = sdedit(model, grey, t0=1.0, samples=args.samples, seed=args.seed)
    grid_sheet(images).save(args.out / "samples.png")

    guide = prepare_guide(open_image("examples/smiley.png"), res)
    mask = prepare_mask(open_image("examples/smiley-mouth-mask.png"), res)
    edits = sdedit(model, guide, mask, t0=0.6, samples=4, seed=args.seed)
    shown_mask = mask.expand(3, -1, -1)
    contact_sheet([[guide, shown_mask, *edits]],
                  ["guide", "mask", "t0=0.6", "", "", ""], scale=3).save(args.out / "masked_edit.png")
    print(f"wrote {args.out / 'samples.png'} and {args.out / 'masked_edit.png'}")


if __name__ == "__main__":
    main()
