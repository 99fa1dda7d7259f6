"""The SDEdit procedure: masks, blending level, repeats, determinism and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from jobs.rules import SamplingParameters
from models.samplers import ancestral_step
from models.sde import level_sequence
from models.sdedit import Slot, SlotBatch, sdedit


def rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def square_mask(size: int = 16, lo: int = 4, hi: int = 10) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, lo:hi, lo:hi] = 1.0
    return mask


def quantised_guide(seed: int) -> torch.Tensor:
    """A guide as it comes from an 8-bit image."""
    return (rand((3, 16, 16), seed) * 255).round() / 255


@pytest.mark.parametrize("model_name,t0", [("vp_model", 0.3), ("ve_model", 0.02)])
def test_kept_region_is_bit_identical_and_edited_region_changes(request, model_name, t0):
    model = request.getfixturevalue(model_name)
    guide, mask = quantised_guide(1), square_mask()
    out = sdedit(model, guide, mask, t0=t0, samples=2, seed=5)
    kept = mask[0] == 0
    for image in out:
        assert torch.equal(image[:, kept], guide[:, kept])
        assert (image[:, ~kept] - guide[:, ~kept]).abs().mean() > 0.01
        uint8 = (image * 255).round()
        assert torch.equal(uint8[:, kept], (guide * 255).round()[:, kept])


def test_kept_region_is_blended_at_the_level_the_step_reaches(vp_model):
    sde = vp_model.sde
    guide, mask = quantised_guide(2), square_mask()
    batch = SlotBatch(vp_model)
    slot = batch.add(Slot(guide=guide, mask=mask, params=SamplingParameters(t0=0.1, steps=5), seed=42))
    gen = torch.Generator().manual_seed(42)
    z0, z1 = torch.randn((3, 16, 16), generator=gen), torch.randn((3, 16, 16), generator=gen)
    level, following = level_sequence(99, 5)[:2]
    assert (level, following) == (99, 74)
    a = sde.abar_at(torch.tensor([level, following])).float()
    source = guide * 2 - 1
    x = a[0].sqrt() * source + (1 - a[0]).sqrt() * z0
    torch.testing.assert_close(slot.x, x)
    eps = vp_model.predict(x[None], torch.tensor([level]))
    edited = ancestral_step(x[None], eps, sde.abar_at(torch.tensor([level])),
                            sde.abar_at(torch.tensor([following])), z1[None])[0]
    kept_next = a[1].sqrt() * source + (1 - a[1]).sqrt() * z0
    kept_here = a[0].sqrt() * source + (1 - a[0]).sqrt() * z0
    batch.step()
    keep = mask[0] == 0
    torch.testing.assert_close(slot.x[:, keep], kept_next[:, keep])
    torch.testing.assert_close(slot.x[:, ~keep], edited[:, ~keep])
    assert not torch.allclose(slot.x[:, keep], kept_here[:, keep], atol=1e-3)


def test_repeats_run_sequential_passes_and_keep_the_region(vp_model):
    guide, mask = quantised_guide(3), square_mask()
    once = sdedit(vp_model, guide, mask, t0=0.2, steps=10, repeats=1, seed=1)[0]
    twice = sdedit(vp_model, guide, mask, t0=0.2, steps=10, repeats=2, seed=1)[0]
    assert not torch.allclose(once, twice)
    keep = mask[0] == 0
    assert torch.equal(twice[:, keep], guide[:, keep])
    progress = []
    sdedit(vp_model, guide, t0=0.2, steps=10, repeats=3, seed=1,
           progress=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (30, 30) and len(progress) == 30


def test_same_seed_same_output_and_other_seed_differs(vp_model):
    guide = quantised_guide(4)
    a = sdedit(vp_model, guide, t0=0.3, steps=15, seed=7)
    b = sdedit(vp_model, guide, t0=0.3, steps=15, seed=7)
    c = sdedit(vp_model, guide, t0=0.3, steps=15, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_k_uses_seed_plus_k(vp_model):
    guide = quantised_guide(5)
    three = sdedit(vp_model, guide, t0=0.3, steps=10, samples=3, seed=10)
    alone = sdedit(vp_model, guide, t0=0.3, steps=10, samples=1, seed=12)
    torch.testing.assert_close(three[2], alone[0], rtol=0, atol=1e-5)


def _mixed_slots(model_name: str) -> list[Slot]:
    samplers = ["ancestral", "ddim"] if model_name == "vp_model" else ["pc", "pc"]
    slots = []
    for i in range(7):
        params = SamplingParameters(t0=[0.05, 0.1, 0.15, 0.2, 0.08, 0.12, 0.3][i], steps=[8, 12, 30][i % 3],
                            sampler=samplers[i % 2], eta=0.5 * (i % 2))
        slots.append(Slot(guide=quantised_guide(20 + i), params=params, seed=100 + i,
                          mask=square_mask() if i % 3 == 0 else None, key=i))
    return slots


@pytest.mark.parametrize("model_name", ["vp_model", "ve_model"])
def test_a_sample_alone_equals_the_same_sample_in_a_mixed_batch_of_8(request, model_name):
    model = request.getfixturevalue(model_name)
    sampler = "ddim" if model_name == "vp_model" else "pc"

    def target() -> Slot:
        return Slot(guide=quantised_guide(9), mask=square_mask(lo=2, hi=12),
                    params=SamplingParameters(t0=0.1, steps=10, sampler=sampler, eta=0.3),
                    seed=1234, key="target")

    alone = SlotBatch(model)
    slot = alone.add(target())
    while alone.active:
        alone.step()
    mixed = SlotBatch(model)
    others = _mixed_slots(model_name)
    for other in others[:4]:
        mixed.add(other)
    mixed.step()  # the target joins a batch that is already under way
    mixed.step()
    in_batch = mixed.add(target())
    for other in others[4:]:
        mixed.add(other)
    assert len(mixed.active) == 8
    while mixed.active:
        mixed.step()
    torch.testing.assert_close(in_batch.result, slot.result, rtol=0, atol=1e-5)
    assert all(o.finished for o in others)


def test_removed_slots_leave_the_batch(vp_model):
    batch = SlotBatch(vp_model)
    for slot in _mixed_slots("vp_model")[:3]:
        batch.add(slot)
    batch.step()
    dropped = batch.remove({1})
    assert [s.key for s in dropped] == [1]
    assert [s.key for s in batch.active] == [0, 2]


@pytest.mark.parametrize("kwargs,message", [
    ({"t0": 0.0}, "^t0: Input should be greater than 0$"),
    ({"t0": 1.5}, "^t0: Input should be less than or equal to 1$"),
    ({"t0": math.nan}, "^t0: Input should be a finite number$"),
    ({"t0": 0.0004}, "^t0: 0.0004 rounds to zero noise levels for a model with 1000 levels"),
    ({"steps": 0}, "^steps: Input should be greater than or equal to 1$"),
    ({"t0": 0.01, "steps": 11}, "^steps: at most 10 for t0=0.01 on this model"),
    ({"repeats": 0}, "^repeats: Input should be greater than or equal to 1$"),
    ({"samples": 0}, "samples must be a positive integer"),
    ({"sampler": "pc"}, "^sampler: 'pc' does not apply to a VP model; choose one of ancestral, ddim$"),
    ({"sampler": "euler"}, "^sampler: Input should be 'ancestral', 'ddim' or 'pc'$"),
    ({"eta": 2.0}, "^eta: Input should be less than or equal to 1$"),
    ({"t0": [0.5, 0.5]}, "t0 has 2 values for 1 guide"),
])
def test_bad_parameters_raise_clear_errors(vp_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sdedit(vp_model, quantised_guide(0), **kwargs)


@pytest.mark.parametrize("guide,mask,message", [
    (torch.rand(3, 8, 8), None, r"guide must have shape \(3, 16, 16\)"),
    (torch.rand(1, 16, 16), None, r"guide must have shape"),
    (torch.rand(2, 2, 3, 16, 16), None, r"guide must be \(C, H, W\) or \(B, C, H, W\)"),
    (torch.rand(3, 16, 16) + 1, None, r"guide values must be finite and in \[0, 1\]"),
    (torch.rand(3, 16, 16), torch.ones(1, 8, 8), r"mask must have shape \(1, 16, 16\)"),
    (torch.rand(3, 16, 16), torch.full((1, 16, 16), 2.0), r"mask values must be"),
    (torch.rand(3, 16, 16), torch.ones(2, 1, 16, 16), r"mask must be"),
])
def test_bad_tensors_raise_clear_errors(vp_model, guide, mask, message):
    with pytest.raises(ValueError, match=message):
        sdedit(vp_model, guide, mask, t0=0.1)


def test_t0_too_small_for_the_grid_is_rejected(vp_model):
    with pytest.raises(ValueError, match="rounds to zero noise levels"):
        sdedit(vp_model, quantised_guide(0), t0=0.0001)


def test_per_image_t0(vp_model):
    guides = torch.stack([quantised_guide(1), quantised_guide(1)])
    out = sdedit(vp_model, guides, t0=[0.05, 0.4], steps=10, seed=0)
    near, far = ((out - guides).pow(2).flatten(1).mean(1)).tolist()
    assert near < far
