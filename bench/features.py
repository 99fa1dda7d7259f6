"""A feature space for realism scores (KID) that works offline: local features of an emoji network.

No Inception weights can be downloaded here. A small CNN is trained (seeded, on the training
split only) to tell the 1,271 base emoji of the training split apart, skin-tone variants sharing
a label, under flips, shifts and zooms (an "exemplar" network, Dosovitskiy et al. 2014): telling
a crying face from a sad one needs the small details (outlines, shading, eyes) a flat stroke
painting lacks. Realism is measured on its *local* features: the 128-d vectors of the third
conv block at 16 random positions of each image (receptive field about 18 of 32 px), so KID
compares what patches of the images look like rather than which emoji they show. Pooled
features did not work: a category classifier scored stroke paintings as real, and the pooled
identity features measured mostly which emoji a set holds. `bench.realism_faithfulness` checks
that the distance grows with blur, noise and stroke simplification of real emoji. KID is the
unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 of
Binkowski et al. (2018), averaged over subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
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
                     epochs: int = 30, seed: int = 0) -> EmojiClassifier:
    """images: (N, 3, H, W) in [0, 1] at `resolution`; labels: (N,) identity indices."""
    from training.train import augment  # the diffusion model's own augmentation: flip, shift, zoom

    torch.manual_seed(seed)
    net = EmojiClassifier(classes, resolution)
    batches_per_epoch = (len(images) + 63) // 64
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3,
                                                   total_steps=epochs * batches_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="feature network", unit="epoch"):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            idx = order[start:start + 64]
            batch = (augment(images[idx] * 2 - 1) + 1) / 2
            loss = F.cross_entropy(net(batch), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def load_or_train(cache: Path, images: torch.Tensor, names: Sequence[str],
                  resolution: int) -> EmojiClassifier:
    """The identity network of `images` (training split, in [0, 1]) and their emoji `names`:
    skin-tone variants ("base/1F3FB") share their base emoji's label. Cached at `cache`."""
    identities = sorted({n.split("/")[0] for n in names})
    index = {name: i for i, name in enumerate(identities)}
    labels = torch.tensor([index[n.split("/")[0]] for n in names])
    classes = len(identities)
    if cache.is_file():
        net = EmojiClassifier(classes, resolution)
        net.load_state_dict(torch.load(cache, weights_only=True))
        return net.eval()
    net = train_classifier(images, labels, classes, resolution)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), cache)
    return net


LOCAL_BLOCK = 3  # after two poolings: an 8 x 8 grid of 128-d vectors at 32 px
LOCAL_PER_IMAGE = 16


@torch.inference_mode()
def local_features(net: EmojiClassifier, images: torch.Tensor, block: int = LOCAL_BLOCK,
                   per_image: int = LOCAL_PER_IMAGE, seed: int = 0) -> np.ndarray:
    """(N * per_image, C) feature vectors of conv block `block` at random positions."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(images), 256):
        x = images[start:start + 256]
        if x.shape[-1] != net.resolution:
            x = F.interpolate(x, size=net.resolution, mode="area")
        h, seen = x * 2 - 1, 0
        for layer in net.body:
            h = layer(h)
            seen += isinstance(layer, nn.SiLU)
            if seen == block:
                break
        vectors = h.flatten(2).transpose(1, 2)  # (B, positions, C)
        idx = torch.randint(0, vectors.shape[1], (len(x), per_image), generator=generator)
        out.append(torch.gather(vectors, 1, idx[..., None].expand(-1, -1, vectors.shape[2])))
    return torch.cat(out).flatten(0, 1).numpy()


def kid_values(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 100,
               seed: int = 0) -> np.ndarray:
    """Kernel inception distance of each subset (report mean and std). The subsets depend only
    on the seed and the set sizes, so two fake sets of equal size are compared on the same real
    subsets and the same positions (paired: their difference per subset has much less noise
    than either estimate)."""
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
    return np.array(values)

