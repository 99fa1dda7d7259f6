"""The batching engine: edits become slots that share every network forward of their model.

An `Engine` holds loaded models and one `SlotBatch` each. `admit` turns an edit (its decoded
inputs and parameters) into one slot per sample; `step` runs one iteration of every model that
has work, so edits that arrive while others are mid-way join at the next step and finished
edits leave at once. Nothing here knows about Redis or RQ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field

import torch

from jobs.rules import SamplingParameters, check
from models.sdedit import Model, Slot, SlotBatch, check_inputs


@dataclass
class RunningEdit:
    """An edit inside the engine: its slots, and what it produced once they are all done."""

    id: str
    model: str
    slots: list[Slot]
    results: list[torch.Tensor] = field(default_factory=list)

    # An edit's samples share parameters, so they advance in lockstep: progress is one
    # sample's sampler steps (over all repeats).
    @property
    def total(self) -> int:
        return self.slots[0].total_steps if self.slots else 0

    @property
    def done(self) -> int:
        return min((s.done_steps for s in self.slots), default=0)

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.slots)


class Engine:
    """Loaded models and their running slots; at most `max_batch` slots per forward."""

    def __init__(self, models: dict[str, Model], max_batch: int = 16) -> None:
        self.models = models
        self.max_batch = max_batch
        self.batches = {name: SlotBatch(model) for name, model in models.items()}
        self.edits: dict[str, RunningEdit] = {}
        # Largest forward that fits, per model: halved on out-of-memory, never grown back
        # within a process (memory fragmentation makes a retry at full size likely to fail).
        self.max_forward = {name: max_batch for name in models}
        self.oom_events = 0

    def free_slots(self, model: str) -> int:
        return self.max_batch - len(self.batches[model].active)

    def admit(self, edit_id: str, model: str, guides: torch.Tensor, masks: torch.Tensor | None,
              params: SamplingParameters, samples: int, seed: int) -> RunningEdit:
        """Add an edit to its model's batch: one slot per guide and sample; guide b, sample k
        uses seed + b * samples + k (as sdedit() does). ValueError on inputs it cannot run.

        guides: (B, C, H, W), or (C, H, W) for one; masks alike (or None). B = 0 is an edit
        with nothing to compute (an empty mask): it finishes at the next step.
        """
        if model not in self.batches:
            raise ValueError(f"model {model!r} is not loaded by this worker")
        guides = guides[None] if guides.dim() == 3 else guides
        if masks is not None and masks.dim() == 3:
            masks = masks[None]
        if len(guides) * samples > self.max_batch:
            raise ValueError(f"{len(guides)} x {samples} samples exceed the worker's batch of "
                             f"{self.max_batch}")
        batch = self.batches[model]
        sde = batch.model.sde
        # Checked before any slot joins, so an edit joins whole or not at all.
        check(params, sde.family, sde.num_levels, text=batch.model.text)
        for b, guide in enumerate(guides):
            check_inputs(batch.model, guide, None if masks is None else masks[b])
        slots = [batch.add(Slot(guide=guide, mask=None if masks is None else masks[b],
                                params=params, seed=seed + b * samples + k, key=(edit_id, b, k)))
                 for b, guide in enumerate(guides) for k in range(samples)]
        edit = RunningEdit(id=edit_id, model=model, slots=slots)
        self.edits[edit_id] = edit
        return edit

    def cancel(self, edit_id: str) -> bool:
        """Free an edit's slots before the next forward; False if it is not running here."""
        edit = self.edits.pop(edit_id, None)
        if edit is None:
            return False
        self.batches[edit.model].remove({s.key for s in edit.slots})
        return True

    def _step_within_memory(self, name: str, batch: SlotBatch, hold: set[Hashable]) -> None:
        """Step, halving the forward size after each out-of-memory error until it fits."""
        while True:
            try:
                batch.step(max_forward=self.max_forward[name], hold=hold)
                return
            except (torch.OutOfMemoryError, MemoryError):
                if self.max_forward[name] == 1:
                    raise
                self.oom_events += 1
                self.max_forward[name] = max(1, min(self.max_forward[name],
                                                    len(batch.active)) // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    @property
    def busy(self) -> bool:
        return bool(self.edits)

    @torch.inference_mode()
    def step(self, on_forward: Callable[[str, int, float], None] | None = None,
             hold: Collection[str] = ()) -> list[RunningEdit]:
        """One iteration of every model with active slots; returns the edits that finished.

        on_forward(model, slots, seconds) is called after each model's iteration. The edits in
        `hold` sit this iteration out (priorities: interactive edits go ahead of batch ones).
        """
        held = {s.key for i in hold if i in self.edits for s in self.edits[i].slots}
        for name, batch in self.batches.items():
            occupancy = sum(s.key not in held for s in batch.active)
            if not occupancy:
                continue
            start = time.perf_counter()
            self._step_within_memory(name, batch, held)
            if on_forward is not None:
                on_forward(name, occupancy, time.perf_counter() - start)
            batch.pop_finished()
        finished = [edit for edit in self.edits.values() if edit.finished]
        for edit in finished:
            del self.edits[edit.id]
            edit.results = [s.result for s in edit.slots]
        return finished
