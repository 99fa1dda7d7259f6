"""Priorities in the engine: interactive edits go ahead of batch edits, which are never starved.

While a model has interactive edits running, its batch edits sit out its iterations, except for
a share of the model's forward time (SDEDIT_BATCH_SHARE): every interactive-only iteration of
d seconds earns batch work d * share / (1 - share) seconds of credit, and an iteration that
includes the batch edits (together with the interactive ones, which keep moving) spends its
whole duration. So batch work gets about `share` of the time and an interactive edit's latency
stays within about 1 / (1 - share) of an idle worker's. The first iteration after an
interactive edit arrives is interactive-only. Without interactive work, batch edits run freely.
"""

from __future__ import annotations


class BatchShare:
    def __init__(self, share: float) -> None:
        if not 0.0 < share < 1.0:
            raise ValueError(f"batch share must be in (0, 1), got {share}")
        self.earn = share / (1.0 - share)
        self.credit: dict[str, float] = {}  # per model: forward seconds batch work may use

    def include_batch(self, model: str, interactive: bool, batch: bool) -> bool:
        """Whether the model's batch edits step in its next iteration, given which kinds of
        edits it is running."""
        if not (interactive and batch):  # no contention: nothing to share, no credit kept
            self.credit[model] = 0.0
            return True
        return self.credit.get(model, 0.0) > 0.0

    def record(self, model: str, seconds: float, contended: bool, batch_stepped: bool) -> None:
        """Account one iteration of a model that ran both kinds of edits."""
        if contended:
            change = -seconds if batch_stepped else seconds * self.earn
            self.credit[model] = self.credit.get(model, 0.0) + change
