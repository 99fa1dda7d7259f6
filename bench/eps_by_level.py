"""Where along the noise levels a VP model is good or poor: eps error per level on held-out emoji.

For each level t: x_t = sqrt(abar) x_0 + sqrt(1 - abar) z from held-out images and fixed noise,
then the MSE of the model's eps, and the MSE of its x_0 estimate
(x_t - sqrt(1 - abar) eps) / sqrt(abar), next to two trivial estimates: doing nothing
(x_t / sqrt(abar)), and the mean training image (what E[x_0 | x_t] tends to as the noise grows;
a model worse than it at a high level paints layouts the data does not have).
The low levels decide whether outputs keep grain (the last steps of every edit); the high ones
decide the global layout of samples from t0 = 1.

    python -m bench.eps_by_level --models emoji runs/other_export [--count 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.realism_faithfulness import to_batch
from models.loader import load_model
from models.sde import VPSDE

LEVELS = (5, 20, 50, 100, 200, 400, 600, 800)


@torch.inference_mode()
def errors(model, x0: torch.Tensor, mean: torch.Tensor, level: int,
           seed: int = 0) -> dict[str, float]:
    """x0: (N, C, H, W) and mean: (C, H, W) in the model's [-1, 1] space."""
    sde = model.sde
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + level))
    levels = torch.full((len(x0),), level, dtype=torch.long)
    x_t = sde.perturb(x0, levels, z).float()
    eps = torch.cat([model.predict(x_t[i:i + 128], levels[i:i + 128])
                     for i in range(0, len(x0), 128)])
    a = float(sde.abar_at(torch.tensor(level)))
    x0_hat = (x_t - (1 - a) ** 0.5 * eps) / a ** 0.5
    return {"snr": a / (1 - a), "eps": float(((eps - z) ** 2).mean()),
            "x0": float(((x0_hat - x0) ** 2).mean()),
            "noisy": float(((x_t / a ** 0.5 - x0) ** 2).mean()),
            "mean": float(((mean - x0) ** 2).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["emoji"])
    parser.add_argument("--data", type=Path, default=Path("data/emoji/emoji.npz"))
    parser.add_argument("--count", type=int, default=128, help="held-out images")
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS))
    args = parser.parse_args()
    models = [load_model(name) for name in args.models]
    for model in models:
        if not isinstance(model.sde, VPSDE):
            parser.error(f"{model.name} is not a VP (eps) model")
    res = models[0].resolution
    data = np.load(args.data)
    heldout = data["heldout"][:args.count]
    x0 = models[0].sde.to_model(to_batch([Image.fromarray(im) for im in heldout], res))
    mean_image = Image.fromarray(data["train"].mean(axis=0).round().astype(np.uint8))
    mean = models[0].sde.to_model(to_batch([mean_image], res))[0]
    rows = {name: [errors(m, x0, mean, level) for level in args.levels]
            for name, m in zip(args.models, models, strict=True)}
    names = " | ".join(f"eps MSE `{n}`" for n in args.models)
    x0_names = " / ".join(f"`{n}`" for n in args.models)
    print(f"{len(x0)} held-out images at {res} px, fixed noise per level.\n")
    print(f"| level | SNR | {names} | x0 error {x0_names} / noisy / mean image |")
    print("|---" * (3 + len(args.models)) + "|")  # level, SNR, models, x0 errors
    for i, level in enumerate(args.levels):
        first = rows[args.models[0]][i]
        eps = " | ".join(f"{rows[n][i]['eps']:.4f}" for n in args.models)
        x0e = " / ".join(f"{rows[n][i]['x0']:.5f}" for n in args.models)
        trivial = f"{first['noisy']:.5f} / {first['mean']:.5f}"
        print(f"| {level} | {first['snr']:.3g} | {eps} | {x0e} / {trivial} |")


if __name__ == "__main__":
    main()
