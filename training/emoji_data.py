"""Build and load the Noto Emoji training set (64x64 RGB on white) for the bundled score model.

The images are Google's Noto Emoji PNGs (Apache License 2.0) as shipped in the npm package
``emoji-datasource-google@16.0.0`` (iamcal/emoji-data, MIT). Flags, Symbols and Component are
left out; skin-tone variants are kept. 10% of the *base* emoji (with all of their skin-tone
variants) are held out for evaluation, chosen with a fixed seed.

Usage::

    python -m training.emoji_data --out data/emoji                # fetches the package with npm pack
    python -m training.emoji_data --out data/emoji --package-dir /tmp/pkg/package
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
EXCLUDED_CATEGORIES = frozenset({"Flags", "Symbols", "Component"})
IMAGE_SIZE = 64
HELDOUT_FRACTION = 0.10
SPLIT_SEED = 20240516
NPZ_NAME = "emoji.npz"
APACHE_LICENSE_PATH = Path("/usr/share/common-licenses/Apache-2.0")

NOTICE_TEXT = f"""\
Emoji image data set (data/emoji/{NPZ_NAME})
============================================

The images in {NPZ_NAME} are derived from Noto Emoji by Google
(https://github.com/googlefonts/noto-emoji), licensed under the Apache License,
Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0). A copy of the licence is
in LICENSE-Apache-2.0.txt when it was available at build time.

They were obtained via the npm package {PACKAGE}@{VERSION}
(https://github.com/iamcal/emoji-data, by Cal Henderson / iamcal). That package's own
LICENSE file is the MIT License (copied here as LICENSE-emoji-data.txt); its README
states: "Android/Google/Noto images, are available under the Apache License 2.0"
(https://github.com/googlei18n/noto-emoji/blob/master/LICENSE).

Modifications: the 64x64 PNGs (img/google/64/) of all emoji outside the categories
Flags, Symbols and Component, including skin-tone variants, were alpha-composited onto
a white background and stored as RGB uint8 arrays, split into train / held-out sets.
Built by training/emoji_data.py.
"""


@dataclass(frozen=True)
class EmojiImage:
    """One image file of the package, tied to the base emoji it belongs to."""

    base: str  # short name of the base emoji (split unit)
    name: str  # short name, plus "/<skin tone code>" for skin-tone variants
    image: str  # file name under img/google/64/
    category: str


def fetch_package(dest: Path) -> Path:
    """Download and unpack the npm package into ``dest``; return the unpacked package folder."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{PACKAGE}@{VERSION}"
    out = subprocess.run(
        ["npm", "pack", spec, "--silent"], cwd=dest, check=True, capture_output=True, text=True
    )
    tgz = dest / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - old Pythons without extraction filters
            tar.extractall(dest)
    return dest / "package"


def list_images(package_dir: Path) -> list[EmojiImage]:
    """All Google 64px images of the kept categories, base emoji in ``sort_order``."""
    entries = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
    entries.sort(key=lambda e: e["sort_order"])
    images: list[EmojiImage] = []
    for e in entries:
        if e["category"] in EXCLUDED_CATEGORIES:
            continue
        base = e["short_name"]
        if e.get("has_img_google"):
            images.append(EmojiImage(base, base, e["image"], e["category"]))
        for key, var in sorted((e.get("skin_variations") or {}).items()):
            if var.get("has_img_google"):
                images.append(EmojiImage(base, f"{base}/{key}", var["image"], e["category"]))
    return images


def load_rgb_on_white(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Read a PNG, composite its alpha onto white and return (size, size, 3) uint8."""
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def split_bases(bases: list[str], fraction: float, seed: int) -> set[str]:
    """Pick ``round(fraction * len(bases))`` held-out base emoji with a fixed seed."""
    unique = sorted(set(bases))
    rng = np.random.default_rng(seed)
    n_held = round(fraction * len(unique))
    picked = rng.permutation(len(unique))[:n_held]
    return {unique[i] for i in picked}


def build(package_dir: Path, out_dir: Path, seed: int = SPLIT_SEED) -> Path:
    """Build ``out_dir/emoji.npz`` plus NOTICE and licence files; return the npz path."""
    images = list_images(package_dir)
    img_dir = package_dir / "img" / "google" / str(IMAGE_SIZE)
    held = split_bases([im.base for im in images], HELDOUT_FRACTION, seed)
    parts: dict[str, list[EmojiImage]] = {"train": [], "heldout": []}
    for im in images:
        parts["heldout" if im.base in held else "train"].append(im)

    arrays: dict[str, np.ndarray] = {}
    for split, items in parts.items():
        arrays[split] = np.stack([load_rgb_on_white(img_dir / im.image) for im in items])
        arrays[f"{split}_names"] = np.array([im.name for im in items])
        arrays[f"{split}_images"] = np.array([im.image for im in items])
        arrays[f"{split}_categories"] = np.array([im.category for im in items])

    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / NPZ_NAME
    tmp = out_dir / (NPZ_NAME + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(npz)

    (out_dir / "NOTICE").write_text(NOTICE_TEXT, encoding="utf-8")
    pkg_license = package_dir / "LICENSE"
    if pkg_license.is_file():
        shutil.copyfile(pkg_license, out_dir / "LICENSE-emoji-data.txt")
    if APACHE_LICENSE_PATH.is_file():
        shutil.copyfile(APACHE_LICENSE_PATH, out_dir / "LICENSE-Apache-2.0.txt")

    n_bases = len({im.base for im in images})
    print(
        f"{len(images)} images from {n_bases} base emoji: "
        f"train {len(parts['train'])}, heldout {len(parts['heldout'])} "
        f"({len(held)} base emoji); {npz} is {npz.stat().st_size / 2**20:.1f} MiB"
    )
    return npz


def load_emoji(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(train, heldout)`` uint8 arrays of shape (N, 64, 64, 3) from the npz."""
    with np.load(path) as data:
        return data["train"], data["heldout"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/emoji"), help="output folder")
    parser.add_argument(
        "--package-dir",
        type=Path,
        default=None,
        help=f"unpacked {PACKAGE}@{VERSION} (folder with emoji.json); fetched with npm if unset",
    )
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="held-out split seed")
    args = parser.parse_args(argv)
    if args.package_dir is not None:
        build(args.package_dir, args.out, args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="emoji-pkg-") as tmp:
        build(fetch_package(Path(tmp)), args.out, args.seed)


if __name__ == "__main__":
    main()
