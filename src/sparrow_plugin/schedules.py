"""Learning-rate schedules usable from recipes (``lr_scheduler: class_path: ...``)."""

from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sparrow_plugin.errors import ConfigError

__all__ = ["WarmupCosine"]


class WarmupCosine(LambdaLR):
    """Linear warm-up, then cosine decay to ``min_ratio`` of each group's own learning rate.

    Unlike OneCycleLR it scales every parameter group's learning rate, so per-group rates
    (``SparrowConfig.lr_scale``) keep their ratios.

    Args:
        optimizer: the optimizer.
        total_steps: optimizer steps of the decay (keep it equal to the trainer's
            ``max_steps``; past it the rate stays at ``min_ratio``).
        warmup_steps: steps of the linear warm-up from zero.
        min_ratio: final learning rate as a fraction of the peak.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0):
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ConfigError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps}, {warmup_steps}")
        if not 0 <= min_ratio <= 1:
            raise ConfigError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio
        super().__init__(optimizer, self._factor)

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the step count, but keep this schedule's shape: a run resumed with a
        longer recipe (``max_steps`` and ``total_steps`` raised) decays over the new
        length instead of holding the old end rate for the added steps."""
        configured = {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "min_ratio": self.min_ratio}
        changed = {k: (state_dict[k], v) for k, v in configured.items() if k in state_dict and state_dict[k] != v}
        super().load_state_dict(state_dict)
        self.__dict__.update(configured)
        if changed:
            shown = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            warnings.warn(f"resuming with a changed learning-rate schedule ({shown}); the recipe's values apply from step {self.last_epoch}")

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
