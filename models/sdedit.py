"""The SDEdit procedure: perturb a guide to t0, then run the reverse SDE back to t = 0.

Every sample is a `Slot` with its own guide, mask, t0, step count, sampler, random generator
and (for text-guided models) prompt and guidance scale. `SlotBatch` advances any set of slots
of one model together: each iteration is ONE network forward over all active slots, each at
its own level, followed by each sampler's update as batched tensor maths. Slots may join or
leave between iterations (the worker's step-level batching builds on this), and a slot's
result depends only on its own inputs and seed.

The SDE runs in the model's own space: the pixels for pixel models, a VAE's latents for
latent models (models/stable_diffusion.py). A slot's guide is encoded into that space when it
joins and each pass's result is decoded when the pass ends (`encode`/`decode` of the model).

Images are float tensors in [0, 1], (C, H, W). Masks are (1, H, W) in [0, 1]:
1 = may change, 0 = keep. The kept region (in the model's space) is reset to the guide noised
to the level the step just reached (not the level it left: pitfall 3), and the clean guide is
pasted back into the decoded image, so kept pixels are bit-identical to the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch

from jobs.rules import SamplingParameters, check, parse, resolve_sampler
from models.network import ScoreModel
from models.samplers import (
    ancestral_coefficients,
    apply_update,
    ddim_coefficients,
    ve_corrector_coefficients,
    ve_predictor_coefficients,
)
from models.sde import VESDE, level_sequence
from models.stable_diffusion import LatentModel

# Phase kinds: one network forward each. A sampler step is one phase, except that a VE step is
# its Langevin corrector phases followed by its predictor phase.
ANCESTRAL, DDIM, VE_PREDICTOR, VE_CORRECTOR = "ancestral", "ddim", "ve_predictor", "ve_corrector"

Model = ScoreModel | LatentModel


@dataclass
class Slot:
    """One sample being edited: inputs, seed, and its place in its own level schedule."""

    guide: torch.Tensor  # (C, H, W) in [0, 1]
    params: SamplingParameters  # steps=None visits every level from t0 down (the paper)
    seed: int
    mask: torch.Tensor | None = None  # (1, H, W) in [0, 1]; None edits everything
    key: Hashable = None  # the caller's handle (job id, sample index)
    # Filled in by SlotBatch.
    phases: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, level, next level)
    steps_before: list[int] = field(default_factory=lambda: [0])  # sampler steps before phase i
    position: int = 0
    repeat: int = 0
    x: torch.Tensor | None = None  # in the model's space (pixels, or latents)
    x_mean: torch.Tensor | None = None
    source: torch.Tensor | None = None  # what this pass perturbed, in model space
    model_mask: torch.Tensor | None = None  # the mask in model space
    condition: object = None  # what the network is conditioned on (a prompt's embeddings)
    z_keep: torch.Tensor | None = None  # VP: this pass's noise, reused for the kept region
    table: torch.Tensor | None = None  # (phases, 5) float64 coefficients, see coefficient_table
    generator: torch.Generator | None = None
    result: torch.Tensor | None = None

    @property
    def total_steps(self) -> int:
        """Reverse sampler steps over all repeats (the unit of progress)."""
        return self.steps_before[-1] * self.params.repeats

    @property
    def done_steps(self) -> int:
        if self.finished:
            return self.total_steps
        return self.repeat * self.steps_before[-1] + self.steps_before[self.position]

    @property
    def finished(self) -> bool:
        return self.result is not None


def check_inputs(model: Model, guide: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Shapes and ranges a slot's guide and mask must have for this model."""
    expected = (model.channels, model.resolution, model.resolution)
    if guide.dim() != 3 or tuple(guide.shape) != expected:
        raise ValueError(f"guide must have shape {expected} for this model, got {tuple(guide.shape)}")
    if not torch.isfinite(guide).all() or guide.min() < 0 or guide.max() > 1:
        raise ValueError("guide values must be finite and in [0, 1]")
    if mask is not None:
        if mask.dim() != 3 or tuple(mask.shape) != (1, *expected[1:]):
            raise ValueError(f"mask must have shape {(1, *expected[1:])} to match the guide, "
                             f"got {tuple(mask.shape)}")
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must be finite and in [0, 1] (1 = may change)")


def plan_phases(model: Model, params: SamplingParameters) -> list[tuple[str, int, int]]:
    """The network evaluations of one pass: (kind, level, level after the update)."""
    sde = model.sde
    start = sde.start_level(params.t0)
    levels = level_sequence(start, params.steps if params.steps is not None else start + 1,
                            model.lowest_level)
    following = levels[1:] + [model.final_level]
    if isinstance(sde, VESDE):
        phases = []
        for level, prev in zip(levels, following, strict=True):
            phases += [(VE_CORRECTOR, level, level)] * sde.correct_steps
            phases.append((VE_PREDICTOR, level, prev))
        return phases
    kind = DDIM if resolve_sampler(params, sde.family) == "ddim" else ANCESTRAL
    return [(kind, level, prev) for level, prev in zip(levels, following, strict=True)]


def coefficient_table(model: Model, phases: list[tuple[str, int, int]],
                      eta: float) -> torch.Tensor:
    """Per phase: the update's (a, b, c) and the kept region's (scale, noise) at the next level.

    Everything but the Langevin corrector's step (which depends on the score) is fixed by the
    levels, so it is computed once per slot, in float64, instead of at every iteration.
    """
    sde = model.sde
    levels = torch.tensor([p[1] for p in phases])
    nexts = torch.tensor([p[2] for p in phases])
    table = torch.full((len(phases), 5), math.nan, dtype=torch.float64)
    kinds = [p[0] for p in phases]
    for kind in set(kinds):
        rows = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        lv, nx = levels[rows], nexts[rows]
        if kind == ANCESTRAL:
            abc = ancestral_coefficients(sde.abar_at(lv), sde.abar_at(nx))
        elif kind == DDIM:
            abc = ddim_coefficients(sde.abar_at(lv), sde.abar_at(nx),
                                    torch.full((len(rows),), eta, dtype=torch.float64))
        elif kind == VE_PREDICTOR:
            abc = ve_predictor_coefficients(sde.sigma_at(lv), sde.sigma_at(nx))
        else:
            continue  # the corrector's step is computed from the score at run time
        table[rows, :3] = torch.stack(abc, 1)
    if isinstance(sde, VESDE):
        table[:, 3], table[:, 4] = 1.0, sde.sigma_at(nexts)
    else:
        abar = sde.abar_at(nexts)
        table[:, 3], table[:, 4] = abar.sqrt(), (1.0 - abar).sqrt()
    return table


class SlotBatch:
    """Slots of one model advanced together, one network forward per iteration."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.slots: list[Slot] = []

    def add(self, slot: Slot) -> Slot:
        """Validate a slot, encode and perturb its guide to t0 and make it active from the next
        iteration. The slot's generator draws, in order: what `encode` draws (a latent model's
        posterior sample), the perturbation noise, then each step's noise."""
        model = self.model
        check(slot.params, model.sde.family, model.sde.num_levels, text=model.text)
        check_inputs(model, slot.guide, slot.mask)
        slot.guide = slot.guide.to(model.device, torch.float32)
        if slot.mask is not None:
            slot.mask = slot.mask.to(model.device, torch.float32)
            slot.model_mask = model.space_mask(slot.mask)
        slot.phases = plan_phases(model, slot.params)
        slot.steps_before = list(accumulate((kind != VE_CORRECTOR for kind, _, _ in slot.phases),
                                            initial=0))
        slot.table = coefficient_table(model, slot.phases, slot.params.eta)
        slot.generator = torch.Generator(device=model.device).manual_seed(int(slot.seed))
        slot.condition = model.condition(slot.params)
        self._start_pass(slot, *self._new_pass(slot, model.encode(slot.guide, slot.generator)))
        self.slots.append(slot)
        return slot

    def remove(self, keys: set[Hashable]) -> list[Slot]:
        """Drop slots by key (cancellation); returns the dropped ones."""
        dropped = [s for s in self.slots if s.key in keys]
        self.slots = [s for s in self.slots if s.key not in keys]
        return dropped

    def pop_finished(self) -> list[Slot]:
        done = [s for s in self.slots if s.finished]
        self.slots = [s for s in self.slots if not s.finished]
        return done

    @property
    def active(self) -> list[Slot]:
        return [s for s in self.slots if not s.finished]

    def _noise(self, slot: Slot, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=slot.generator, device=self.model.device)

    def _new_pass(self, slot: Slot, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(source, its noise, the source perturbed to the pass's first level)."""
        z = self._noise(slot, source)
        start = torch.tensor([slot.phases[0][1]])
        return source, z, self.model.sde.perturb(source[None], start, z[None])[0]

    @staticmethod
    def _start_pass(slot: Slot, source: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> None:
        slot.source, slot.z_keep, slot.x, slot.x_mean, slot.position = source, z, x, x, 0

    def step(self, max_forward: int | None = None,
             hold: Collection[Hashable] = ()) -> list[Slot]:
        """One iteration: one forward over all active slots, then one batched update.

        max_forward splits the forward (and the decoding of passes that end) into chunks of at
        most that many samples (the worker halves it after an out-of-memory error). No slot
        changes until all of the step's work has succeeded, and a failure puts every slot's
        generator back where it was, so a failed step can simply be retried and draws the same
        noise. Slots whose key is in `hold` sit this iteration out, untouched (a slot's result
        does not depend on when it steps). Returns the slots that finished in this iteration
        (kept until pop_finished).
        """
        slots = [s for s in self.active if s.key not in hold] if hold else self.active
        if not slots:
            return []
        chunk = max_forward or len(slots)
        states = [s.generator.get_state() for s in slots]
        try:
            new_x, new_mean, ends = self._advance(slots, chunk)
        except BaseException:
            for slot, state in zip(slots, states, strict=True):
                slot.generator.set_state(state)
            raise
        finished = []
        for i, slot in enumerate(slots):
            slot.x, slot.x_mean = new_x[i], new_mean[i]
            slot.position += 1
            if i not in ends:
                continue
            slot.repeat += 1
            image, next_pass = ends[i]
            if next_pass is not None:
                self._start_pass(slot, *next_pass)
            else:
                slot.result = image
                slot.x = slot.x_mean = slot.source = slot.z_keep = None
                finished.append(slot)
        return finished

    def _advance(self, slots: list[Slot], chunk: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The step's new samples and, per slot whose pass ends, its image and next pass."""
        rows = torch.stack([s.table[s.position] for s in slots])
        levels = torch.tensor([s.phases[s.position][1] for s in slots])
        x = torch.stack([s.x for s in slots])
        prediction = torch.cat([
            self.model.predict(x[i:i + chunk], levels[i:i + chunk],
                               [s.condition for s in slots[i:i + chunk]])
            for i in range(0, len(slots), chunk)])
        z = torch.stack([self._noise(s, s.x) for s in slots])
        corrector = [i for i, s in enumerate(slots) if s.phases[s.position][0] == VE_CORRECTOR]
        if corrector:
            snr = torch.full((len(corrector),), self.model.sde.snr, dtype=torch.float64)
            rows[corrector, :3] = torch.stack(
                ve_corrector_coefficients(prediction[corrector], z[corrector], snr), 1)
        coefficients = rows.to(x.device, torch.float32).T[:, :, None, None, None]
        new_x, new_mean = apply_update(x, prediction, z, *coefficients[:3])
        self._keep_unmasked(slots, new_x, new_mean, coefficients[3], coefficients[4])
        ending = [i for i, s in enumerate(slots) if s.position + 1 == len(s.phases)]
        return new_x, new_mean, self._end_passes([slots[i] for i in ending], new_mean[ending],
                                                 ending, chunk)

    def _keep_unmasked(self, slots: list[Slot], x: torch.Tensor, x_mean: torch.Tensor,
                       scale: torch.Tensor, noise_scale: torch.Tensor) -> None:
        """Reset the kept region to the pass's source noised to the level just reached."""
        idx = [i for i, s in enumerate(slots) if s.model_mask is not None]
        if not idx:
            return
        sel = torch.tensor(idx, device=x.device)
        m = torch.stack([slots[i].model_mask for i in idx])
        if isinstance(self.model.sde, VESDE):
            # score_sde's controllable generation draws fresh noise for the known region.
            z = torch.stack([self._noise(slots[i], x[i]) for i in idx])
        else:
            z = torch.stack([slots[i].z_keep for i in idx])
        kept_mean = scale[sel] * torch.stack([slots[i].source for i in idx])
        kept = kept_mean + noise_scale[sel] * z
        x[sel] = torch.lerp(kept, x[sel], m)
        x_mean[sel] = torch.lerp(kept_mean, x_mean[sel], m)

    def _end_passes(self, slots: list[Slot], x_mean: torch.Tensor, indices: list[int],
                    chunk: int) -> dict[int, tuple[torch.Tensor, tuple | None]]:
        """Passes that end: decode (clamped), paste the kept pixels; the next repeat re-noises
        that image (encoded again), as the official code's K passes do."""
        if not slots:
            return {}
        images = torch.cat([self.model.decode(x_mean[i:i + chunk])
                            for i in range(0, len(slots), chunk)])
        ends = {}
        for index, slot, image in zip(indices, slots, images, strict=True):
            if slot.mask is not None:
                image = slot.mask * image + (1.0 - slot.mask) * slot.guide
            next_pass = None
            if slot.repeat + 1 < slot.params.repeats:
                next_pass = self._new_pass(slot, self.model.encode(image, slot.generator))
            ends[index] = (image, next_pass)
        return ends


ProgressFn = Callable[[int, int], None]


def _per_image(value: float | Sequence[float], count: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * count
    values = [float(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} values for {count} guide images")
    return values


@torch.inference_mode()
def sdedit(model: Model, guide: torch.Tensor, mask: torch.Tensor | None = None, *,
           t0: float | Sequence[float] = 0.5, steps: int | None = None,
           sampler: str | None = None, eta: float = 0.0, repeats: int = 1, samples: int = 1,
           seed: int = 0, prompt: str | None = None, negative_prompt: str | None = None,
           guidance_scale: float | None = None,
           progress: ProgressFn | None = None) -> torch.Tensor:
    """Edit guide images with SDEdit; returns (B * samples, C, H, W) images in [0, 1].

    guide: (C, H, W) or (B, C, H, W) in [0, 1] at the model's resolution.
    mask: None, (1, H, W) for all guides, or (B, 1, H, W); 1 = may change, 0 = keep.
    t0: one value, or one per guide image. Output k of guide b is sample b * samples + k and
    uses the random seed `seed + b * samples + k`, so any single sample can be reproduced alone.
    prompt, negative_prompt, guidance_scale: text-guided models only (jobs.rules.TEXT_DEFAULTS).
    progress(done, total) is called after every network forward, in sampler steps of all samples.
    """
    if guide.dim() == 3:
        guide = guide[None]
    if guide.dim() != 4:
        raise ValueError(f"guide must be (C, H, W) or (B, C, H, W), got {tuple(guide.shape)}")
    count = guide.shape[0]
    masks: list[torch.Tensor | None] = [None] * count
    if mask is not None:
        if mask.dim() == 3:
            mask = mask[None].expand(count, *mask.shape)
        if mask.dim() != 4 or mask.shape[0] != count:
            raise ValueError(f"mask must be (1, H, W) or ({count}, 1, H, W), got {tuple(mask.shape)}")
        masks = list(mask)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    t0s = _per_image(t0, count, "t0")
    batch = SlotBatch(model)
    slots = []
    for b in range(count):
        params = parse(SamplingParameters, t0=t0s[b], steps=steps, sampler=sampler, eta=eta,
                       repeats=repeats, prompt=prompt, negative_prompt=negative_prompt,
                       guidance_scale=guidance_scale)
        for k in range(samples):
            slots.append(batch.add(Slot(guide=guide[b], mask=masks[b], params=params,
                                        seed=seed + b * samples + k, key=(b, k))))
    total = sum(s.total_steps for s in slots)
    while batch.active:
        batch.step()
        if progress is not None:
            progress(sum(s.done_steps for s in slots), total)
    return torch.stack([s.result for s in slots]).cpu()
