"""The paper's realism / faithfulness trade-off over t0, on held-out emoji turned into strokes.

Stroke inputs are made from held-out images the way the paper simulates stroke paintings:
a median filter removes detail, then colour quantisation leaves a few flat colours
(recipe in `strokes`). For each t0 the bundled model edits every stroke input once;
faithfulness is the L2 distance to the guide, realism the KID to the held-out images in the
feature space of bench/features.py (lower is more realistic). The stroke inputs' own KID is the
baseline. Writes a markdown table, a plot and a contact sheet.

    python -m bench.realism_faithfulness --out docs/results [--count 200] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from bench.features import embed, kid, load_or_train
from models.imageio import open_image, prepare_guide, to_image, to_tensor
from models.loader import load_model
from models.sdedit import sdedit

T0S = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SHEET_T0S = (0.3, 0.5, 0.7)
STROKE_COLOURS = 6
MEDIAN_SIZE = 5  # pixels at 64 px
HAND_MADE = ("heart", "smiley", "tree", "apple", "sun")  # flat-colour paintings in examples/


def strokes(image: np.ndarray, colours: int = STROKE_COLOURS) -> Image.Image:
    """A 64 px emoji as a flat stroke painting: median filter, then k-means colour quantisation."""
    smooth = Image.fromarray(image).filter(ImageFilter.MedianFilter(MEDIAN_SIZE))
    flat = smooth.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, kmeans=2)
    return flat.convert("RGB").filter(ImageFilter.ModeFilter(3))


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


def plot(results: list[dict], baseline: dict, path: Path) -> None:
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
    ax.set_xlabel("L2 distance to the guide (faithfulness; lower is more faithful)")
    ax.set_ylabel("KID to held-out emoji (lower is more realistic)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--data", type=Path, default=Path("data/emoji/emoji.npz"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--count", type=int, default=200, help="held-out images to edit")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hand", nargs="*", type=Path,
                        default=[Path("examples") / f"{n}.png" for n in HAND_MADE],
                        help="hand-made stroke paintings for the contact sheet")
    parser.add_argument("--features-cache", type=Path, default=Path("runs/features/classifier.pt"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = load_model(args.model)
    res = model.resolution
    data = np.load(args.data)
    train, heldout = data["train"], data["heldout"]
    categories = sorted(set(data["train_categories"]))
    labels = torch.tensor([categories.index(c) for c in data["train_categories"]])
    train_t = torch.stack([to_tensor(Image.fromarray(im)) for im in train])
    net = load_or_train(args.features_cache, train_t, labels, len(categories), res)
    held_t = torch.stack([to_tensor(Image.fromarray(im)) for im in heldout])
    held_labels = torch.tensor([categories.index(c) for c in data["heldout_categories"]])
    with torch.inference_mode():
        accuracy = float((net(held_t).argmax(1) == held_labels).float().mean())
    real = embed(net, to_batch([Image.fromarray(im) for im in heldout], res))

    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(heldout), min(args.count, len(heldout)), replace=False)
    guides = to_batch([strokes(heldout[i]) for i in chosen], res)
    baseline = {"t0": 0.0, "l2": 0.0}
    baseline["kid"], baseline["kid_std"] = kid(real, embed(net, guides))
    results = []
    outputs = {}
    for t0 in tqdm(T0S, desc="t0 sweep"):
        out = edit_all(model, guides, t0, args.steps, args.seed)
        outputs[t0] = out
        k, k_std = kid(real, embed(net, out))
        results.append({"t0": t0, "l2": float(l2_to_guide(out, guides).mean()), "kid": k,
                        "kid_std": k_std})

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"Model `{args.model}` ({res} px), {len(chosen)} held-out stroke inputs, "
             f"{args.steps} ancestral steps from t0, seed {args.seed}. KID x 1e3 in the feature "
             f"space of bench/features.py (held-out category accuracy {accuracy:.1%}).", "",
             "| input | t0 | L2 to guide | KID x 1e3 (± std) |", "|---|---|---|---|",
             f"| stroke inputs | - | 0 | {baseline['kid'] * 1e3:.2f} ± {baseline['kid_std'] * 1e3:.2f} |"]
    lines += [f"| SDEdit | {r['t0']:.1f} | {r['l2']:.3f} | {r['kid'] * 1e3:.2f} ± "
              f"{r['kid_std'] * 1e3:.2f} |" for r in results]
    (args.out / "realism_faithfulness.md").write_text("\n".join(lines) + "\n")
    (args.out / "realism_faithfulness.json").write_text(json.dumps(
        {"baseline": baseline, "results": results, "classifier_accuracy": accuracy,
         "count": len(chosen), "steps": args.steps, "model": args.model}, indent=2))
    plot(results, baseline, args.out / "realism_faithfulness.png")

    rows = [[guides[i]] + [outputs[t0][i] for t0 in SHEET_T0S] for i in range(8)]
    hand = [prepare_guide(open_image(p), res) for p in args.hand]
    if hand:
        hand_t = torch.stack(hand)
        edited = {t0: sdedit(model, hand_t, t0=t0, steps=args.steps, seed=args.seed)
                  for t0 in SHEET_T0S}
        rows += [[hand_t[i]] + [edited[t0][i] for t0 in SHEET_T0S] for i in range(len(hand))]
    header = ["strokes"] + [f"t0={t0}" for t0 in SHEET_T0S]
    contact_sheet(rows, header).save(args.out / "strokes_to_emoji.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
