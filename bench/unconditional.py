"""How emoji-like are a model's unconditional samples (SDEdit from t0 = 1)? Numbers beside the picture.

For each model: N samples with the paper's ancestral sampler from pure noise, then
- white background: the share of images whose border is mostly white. 99 % of the training
  emoji are drawn on white; an undertrained model paints frame-filling colour fields instead, which this
  counts directly.
- KID (x 1e3) to the held-out emoji in two feature spaces of bench/features.py: *local*
  (patches: outlines, shading, texture) and *pooled* (the whole image: which emoji-like thing
  it is). Lower is more emoji-like.
The same numbers for N training images (real emoji, other identities than the held-out ones)
give the floor. All sets are scored on the same subsets (paired), so differences between
models are less noisy than the std of each value.

    python -m bench.unconditional --models emoji runs/other_export [--count 128] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bench.features import kid_values, load_or_train, local_features
from bench.realism_faithfulness import grid_sheet, to_batch
from models.loader import load_model
from models.sdedit import sdedit

WHITE = 0.9  # a border pixel is white if all channels are above this ([0, 1] RGB)
BORDER = 2  # border width in pixels at 32 px


def white_background(images: torch.Tensor, border_fraction: float = 0.5) -> np.ndarray:
    """Per image: True if at least `border_fraction` of the border pixels are white.

    images: (N, 3, H, W) in [0, 1]; the border is BORDER pixels wide at 32 px, scaled with H."""
    width = max(1, BORDER * images.shape[-1] // 32)
    white = (images > WHITE).all(dim=1)  # (N, H, W)
    frame = torch.ones_like(white[0])
    frame[width:-width, width:-width] = False
    share = (white & frame).flatten(1).sum(1) / frame.sum()
    return (share >= border_fraction).numpy()


@torch.inference_mode()
def pooled_features(net, images: torch.Tensor) -> np.ndarray:
    return torch.cat([net.features(images[i:i + 256]) for i in range(0, len(images), 256)]).numpy()


def score(images: torch.Tensor, net, real_local: np.ndarray, real_pooled: np.ndarray) -> dict:
    local = kid_values(real_local, local_features(net, images), subset_size=1000)
    pooled = kid_values(real_pooled, pooled_features(net, images), subset_size=100)
    return {"white_background": float(white_background(images).mean()),
            "kid_local": float(local.mean()), "kid_local_std": float(local.std()),
            "kid_pooled": float(pooled.mean()), "kid_pooled_std": float(pooled.std())}


def sample(model, count: int, seed: int, batch: int = 64) -> torch.Tensor:
    grey = torch.full((3, model.resolution, model.resolution), 0.5)
    out = []
    for start in tqdm(range(0, count, batch), desc="sampling", unit="batch"):
        n = min(batch, count - start)
        out.append(sdedit(model, grey, t0=1.0, samples=n, seed=seed + start))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["emoji"])
    parser.add_argument("--data", type=Path, default=Path("data/emoji/emoji.npz"))
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write unconditional.md/.json here")
    parser.add_argument("--sheets", type=Path, default=None,
                        help="write a contact sheet of each model's first 48 samples here")
    parser.add_argument("--features-cache", type=Path, default=Path("runs/features/identity.pt"))
    args = parser.parse_args()

    data = np.load(args.data)
    first = load_model(args.models[0])
    res = first.resolution
    train = to_batch([Image.fromarray(im) for im in data["train"]], res)
    net = load_or_train(args.features_cache, train, data["train_names"], res)
    heldout = to_batch([Image.fromarray(im) for im in data["heldout"]], res)
    real_local, real_pooled = local_features(net, heldout), pooled_features(net, heldout)

    rng = np.random.default_rng(args.seed)
    floor = train[torch.from_numpy(rng.choice(len(train), args.count, replace=False))]
    rows = {"training emoji (real)": score(floor, net, real_local, real_pooled)}
    for name in args.models:
        model = first if name == args.models[0] else load_model(name)
        images = sample(model, args.count, args.seed)
        rows[f"samples of `{name}`"] = score(images, net, real_local, real_pooled)
        if args.sheets is not None:
            args.sheets.mkdir(parents=True, exist_ok=True)
            grid_sheet(images[:48]).save(args.sheets / f"samples-{Path(name).name}.png")

    lines = [f"{args.count} images per row at {res} px; samples: 1000 ancestral steps from t0 = 1, "
             f"seeds {args.seed}..{args.seed + args.count - 1}. KID x 1e3 to the "
             f"{len(heldout)} held-out emoji (mean ± std over 50 subsets; lower is more "
             "emoji-like).", "",
             "| images | white background | KID local | KID pooled |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['white_background']:.0%} | {r['kid_local'] * 1e3:.1f} ± "
                     f"{r['kid_local_std'] * 1e3:.1f} | {r['kid_pooled'] * 1e3:.1f} ± "
                     f"{r['kid_pooled_std'] * 1e3:.1f} |")
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "unconditional.md").write_text("\n".join(lines) + "\n")
        (args.out / "unconditional.json").write_text(json.dumps(
            {"count": args.count, "seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
