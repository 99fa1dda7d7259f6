"""Pieces of the realism/faithfulness experiment (bench/): split, strokes, local features, KID."""

from __future__ import annotations

import numpy as np
import torch

from bench.features import EmojiClassifier, kid_values, local_features
from bench.realism_faithfulness import STROKE_COLOURS, split_by_base, strokes


def test_split_keeps_every_base_emoji_on_one_side():
    names = np.array(["a", "a/1F3FB", "a/1F3FC", "b", "c", "c/1F3FF", "d", "e"])
    first, second = split_by_base(names)
    assert sorted(np.concatenate([first, second])) == list(range(len(names)))
    bases = [{names[i].split("/")[0] for i in side} for side in (first, second)]
    assert not bases[0] & bases[1] and len(bases[0]) == 2


def test_strokes_are_flat_paintings_with_few_colours():
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 255, np.uint8)
    image[16:48, 16:48] = rng.integers(0, 256, (32, 32, 3))  # detail a stroke painting lacks
    painted = np.asarray(strokes(image))
    assert painted.shape == (64, 64, 3)
    assert len(np.unique(painted.reshape(-1, 3), axis=0)) <= STROKE_COLOURS


def test_local_features_and_kid_tell_distributions_apart():
    torch.manual_seed(0)
    net = EmojiClassifier(classes=4, resolution=16).eval()
    images = torch.rand(40, 3, 16, 16)
    feats = local_features(net, images, per_image=8)
    assert feats.shape == (40 * 8, 128)
    np.testing.assert_array_equal(feats, local_features(net, images, per_image=8))
    same = local_features(net, torch.rand(40, 3, 16, 16), per_image=8, seed=1)
    flat = local_features(net, torch.full((40, 3, 16, 16), 0.5), per_image=8)
    near = kid_values(feats, same, subset_size=200).mean()
    far = kid_values(feats, flat, subset_size=200).mean()
    assert abs(near) < far / 20 and far > 0


def test_kid_subsets_are_paired_across_fake_sets_of_equal_size():
    rng = np.random.default_rng(0)
    real, a = rng.normal(size=(300, 8)), rng.normal(size=(200, 8))
    shifted = a + 0.5
    # Same subsets: a set shifted everywhere is worse on every subset, not just on average.
    assert (kid_values(real, shifted) > kid_values(real, a)).all()
    np.testing.assert_array_equal(kid_values(real, a), kid_values(real, a))


def test_white_background_tells_emoji_on_white_from_colour_fields():
    from bench.unconditional import white_background

    on_white = torch.ones(1, 3, 32, 32)
    on_white[:, :, 3:29, 3:29] = torch.tensor([1.0, 0.8, 0.1])[:, None, None]  # a yellow disc's box
    field = torch.full((1, 3, 32, 32), 0.5)
    field[:, 0] = 1.0  # saturated colour up to the frame: red channel white, others not
    touching = on_white.clone()
    touching[:, :, :, :24] = 0.2  # a shape covering three quarters of the frame
    flags = white_background(torch.cat([on_white, field, touching]))
    assert flags.tolist() == [True, False, False]
    assert white_background(torch.ones(2, 3, 64, 64)).all()
