"""A feature space for realism scores (KID) that works offline: an emoji category classifier.

No Inception weights can be downloaded here, so realism is measured in the penultimate layer of
a small CNN trained (seeded, on the training split only) to tell the emoji categories apart.
Like the domain classifiers used for FID on MNIST-like data, it sees the shapes, colours and
textures that make an emoji look like one. KID is the unbiased squared MMD with the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3 of Binkowski et al. (2018), averaged over subsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


class EmojiClassifier(nn.Module):
    """Four conv blocks and a linear head; `features` is the 128-d pooled penultimate layer."""

    def __init__(self, classes: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        layers: list[nn.Module] = []
        channels = [3, 32, 64, 128, 128]
        for cin, cout in zip(channels, channels[1:], strict=False):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                       nn.AvgPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(128, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1]."""
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=self.resolution, mode="area")
        return self.body(images * 2 - 1).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, resolution: int,
                     epochs: int = 12, seed: int = 0) -> EmojiClassifier:
    torch.manual_seed(seed)
    net = EmojiClassifier(classes, resolution)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="feature classifier", unit="epoch"):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            idx = order[start:start + 64]
            batch = images[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
            loss = F.cross_entropy(net(batch), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def load_or_train(cache: Path, images: torch.Tensor, labels: torch.Tensor, classes: int,
                  resolution: int) -> EmojiClassifier:
    if cache.is_file():
        net = EmojiClassifier(classes, resolution)
        net.load_state_dict(torch.load(cache, weights_only=True))
        return net.eval()
    net = train_classifier(images, labels, classes, resolution)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), cache)
    return net


@torch.inference_mode()
def embed(net: EmojiClassifier, images: torch.Tensor) -> np.ndarray:
    return torch.cat([net.features(images[i:i + 256]) for i in range(0, len(images), 256)]).numpy()


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over subsets) between two feature sets."""
    rng = np.random.default_rng(seed)
    d = real.shape[1]
    m = min(subset_size, len(real), len(fake))
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        y = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
               + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
