"""The paper's realism / faithfulness trade-off over t0, on held-out emoji turned into strokes.

The held-out emoji are split by base emoji into two disjoint halves: the *sources*, which are
turned into stroke paintings the way the paper simulates them (a median filter removes detail,
then colour quantisation leaves a few flat colours; recipe in `strokes`), and the *reference*,
the real images realism is measured against. For each t0 the model edits every stroke input
once; faithfulness is the L2 distance to the guide, realism the KID to the reference in the
feature space of bench/features.py (lower is more realistic). Baselines: the stroke inputs
themselves, and the real source images (the floor: real emoji that are simply other emoji).
Writes a markdown table, a JSON file, a plot and a contact sheet.

    python -m bench.realism_faithfulness --out docs/results [--steps 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from bench.features import kid_values, load_or_train, local_features
from models.imageio import open_image, prepare_guide, to_image
from models.loader import load_model
from models.sdedit import sdedit

T0S = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SHEET_T0S = (0.3, 0.5, 0.7)
STROKE_COLOURS = 4
MEDIAN_SIZE = 9  # pixels at 64 px: eyes, mouths and outlines go, as in a quick flat painting
SPLIT_SEED = 1
HAND_MADE = ("heart", "smiley", "tree", "apple", "sun")  # flat-colour paintings in examples/


def strokes(image: np.ndarray, colours: int = STROKE_COLOURS) -> Image.Image:
    """A 64 px emoji as a flat stroke painting: median filter, then k-means colour quantisation."""
    smooth = Image.fromarray(image).filter(ImageFilter.MedianFilter(MEDIAN_SIZE))
    flat = smooth.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, kmeans=2)
    return flat.convert("RGB").filter(ImageFilter.ModeFilter(3))


def split_by_base(names: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of the held-out set; skin-tone variants stay on one side."""
    bases = sorted({n.split("/")[0] for n in names})
    rng = np.random.default_rng(seed)
    first = set(rng.choice(bases, len(bases) // 2, replace=False))
    in_first = np.array([n.split("/")[0] in first for n in names])
    return np.flatnonzero(in_first), np.flatnonzero(~in_first)


def to_batch(images: list[Image.Image], resolution: int) -> torch.Tensor:
    return torch.stack([prepare_guide(im, resolution) for im in images])


def l2_to_guide(outputs: torch.Tensor, guides: torch.Tensor) -> np.ndarray:
    """Per-image L2 norm of the difference, RGB in [0, 1], at the model's resolution."""
    return (outputs - guides).flatten(1).norm(dim=1).numpy()


def edit_all(model, guides: torch.Tensor, t0: float, steps: int, seed: int,
             batch: int = 64) -> torch.Tensor:
    outs = []
    for start in range(0, len(guides), batch):
        outs.append(sdedit(model, guides[start:start + batch], t0=t0, steps=steps,
                           seed=seed + start))
    return torch.cat(outs)


def contact_sheet(rows: list[list[torch.Tensor]], header: list[str], scale: int = 2) -> Image.Image:
    size = rows[0][0].shape[-1] * scale
    pad, top = 4, 16
    sheet = Image.new("RGB", (len(header) * (size + pad) + pad, top + len(rows) * (size + pad) + pad),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(header):
        draw.text((pad + c * (size + pad), 2), text, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            tile = to_image(image).resize((size, size), Image.Resampling.NEAREST)
            sheet.paste(tile, (pad + c * (size + pad), top + pad + r * (size + pad)))
    return sheet


def grid_sheet(images: torch.Tensor, columns: int = 8, scale: int = 2) -> Image.Image:
    """A contact sheet of `images` in rows of `columns`, without a header."""
    cells = list(images)
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    return contact_sheet(rows, [""] * columns, scale=scale)


def plot(results: list[dict], baseline: dict, floor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    xs = [r["l2"] for r in results]
    ys = [r["kid"] for r in results]
    ax.plot(xs, ys, "o-", color="tab:blue", label="SDEdit outputs")
    for r in results:
        ax.annotate(f"t0={r['t0']:.1f}", (r["l2"], r["kid"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axhline(baseline["kid"], color="tab:red", ls="--", label="stroke inputs (L2 = 0)")
    ax.axhline(floor["kid"], color="tab:green", ls=":", label="real held-out emoji")
    ax.set_xlabel("L2 distance to the guide (faithfulness; lower is more faithful)")
    ax.set_ylabel("KID to held-out emoji (lower is more realistic)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


KID_SUBSET = 1000  # local feature vectors per KID subset


def kid_row(real: np.ndarray, net, images: torch.Tensor) -> dict:
    values = kid_values(real, local_features(net, images), subset_size=KID_SUBSET)
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "values": values}


def paired(row: dict, baseline: dict) -> dict[str, float]:
    """KID(row) - KID(stroke inputs) on the same subsets; `better` = share of subsets below 0."""
    delta = row["values"] - baseline["values"]
    return {"delta": float(delta.mean()), "delta_std": float(delta.std()),
            "better": float((delta < 0).mean())}


def degraded(images: np.ndarray) -> dict[str, list[Image.Image]]:
    """Real emoji made less real in known ways: the feature space must notice each."""
    noise = np.random.default_rng(0).normal(0.0, 0.1 * 255, images.shape)
    noisy = np.clip(images + noise, 0, 255).astype(np.uint8)
    return {"blurred (Gaussian, 1.5 px at 64 px)":
                [Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5)) for im in images],
            "noisy (Gaussian, std 0.1)": [Image.fromarray(im) for im in noisy]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--data", type=Path, default=Path("data/emoji/emoji.npz"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--count", type=int, default=None, help="stroke inputs (default: all)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--t0", nargs="*", type=float, default=list(T0S))
    parser.add_argument("--hand", nargs="*", type=Path,
                        default=[Path("examples") / f"{n}.png" for n in HAND_MADE],
                        help="hand-made stroke paintings for the contact sheet")
    parser.add_argument("--features-cache", type=Path, default=Path("runs/features/identity.pt"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    res = model.resolution
    data = np.load(args.data)
    train, heldout = data["train"], data["heldout"]
    net = load_or_train(args.features_cache, to_batch([Image.fromarray(im) for im in train], res),
                        data["train_names"], res)

    sources, reference = split_by_base(data["heldout_names"])
    sources = sources[:args.count]
    real = local_features(net, to_batch([Image.fromarray(heldout[i]) for i in reference], res))
    originals = to_batch([Image.fromarray(heldout[i]) for i in sources], res)
    guides = to_batch([strokes(heldout[i]) for i in sources], res)
    floor = {"t0": 0.0, "l2": float(l2_to_guide(originals, guides).mean()),
             **kid_row(real, net, originals)}
    baseline = {"t0": 0.0, "l2": 0.0, **kid_row(real, net, guides)}
    floor.update(paired(floor, baseline))
    checks = {}
    for name, images in degraded(heldout[sources]).items():
        batch = to_batch(images, res)
        r = {"t0": 0.0, "l2": float(l2_to_guide(batch, guides).mean()), **kid_row(real, net, batch)}
        checks[name] = {**r, **paired(r, baseline)}
    results = []
    outputs = {}
    for t0 in tqdm(args.t0, desc="t0 sweep"):
        out = edit_all(model, guides, t0, args.steps, args.seed)
        outputs[t0] = out
        r = {"t0": t0, "l2": float(l2_to_guide(out, guides).mean()), **kid_row(real, net, out)}
        results.append({**r, **paired(r, baseline)})

    def row(name: str, t0: str, r: dict) -> str:
        delta = (f"{r['delta'] * 1e3:+.2f} ± {r['delta_std'] * 1e3:.2f} ({r['better']:.0%})"
                 if "delta" in r else "-")
        return (f"| {name} | {t0} | {r['l2']:.2f} | {r['kid'] * 1e3:.1f} ± "
                f"{r['kid_std'] * 1e3:.1f} | {delta} |")

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"Model `{args.model}` ({res} px): {len(sources)} stroke inputs made from held-out "
             f"emoji, {args.steps} ancestral steps from t0, seed {args.seed}. Realism: KID x 1e3 "
             f"to {len(reference)} other held-out emoji in the local feature space of "
             "bench/features.py (lower is more realistic). Faithfulness: L2 to the guide "
             "(RGB in [0, 1]). Last column: KID minus the stroke inputs' KID on the same 50 "
             "subsets (mean ± std, share of subsets where the row is more realistic).", "",
             "| input | t0 | L2 to guide | KID x 1e3 (± std) | vs strokes, x 1e3 (paired) |",
             "|---|---|---|---|---|",
             row("real held-out emoji (the strokes' sources)", "-", floor),
             *[row(f"real held-out emoji, {name}", "-", r) for name, r in checks.items()],
             row("stroke inputs", "-", baseline)]
    lines += [row("SDEdit", f"{r['t0']:.1f}", r) for r in results]
    (args.out / "realism_faithfulness.md").write_text("\n".join(lines) + "\n")
    for r in (floor, baseline, *checks.values(), *results):
        r["values"] = [round(float(v), 6) for v in r["values"]]
    (args.out / "realism_faithfulness.json").write_text(json.dumps(
        {"floor": floor, "baseline": baseline, "checks": checks, "results": results,
         "sources": len(sources), "reference": len(reference), "steps": args.steps,
         "model": args.model}, indent=2))
    print("\n".join(lines))
    plot(results, baseline, floor, args.out / "realism_faithfulness.png")

    sheet_t0s = [t0 for t0 in SHEET_T0S if t0 in outputs]
    rows = [[guides[i]] + [outputs[t0][i] for t0 in sheet_t0s] for i in range(8)]
    hand = [prepare_guide(open_image(p), res) for p in args.hand]
    if hand:
        hand_t = torch.stack(hand)
        edited = {t0: sdedit(model, hand_t, t0=t0, steps=args.steps, seed=args.seed)
                  for t0 in sheet_t0s}
        rows += [[hand_t[i]] + [edited[t0][i] for t0 in sheet_t0s] for i in range(len(hand))]
    header = ["strokes"] + [f"t0={t0}" for t0 in sheet_t0s]
    contact_sheet(rows, header).save(args.out / "strokes_to_emoji.png")


if __name__ == "__main__":
    main()
