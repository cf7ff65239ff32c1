"""Learning-rate schedules usable from recipes (``lr_scheduler: class_path: ...``)."""

from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sparrow_plugin.errors import ConfigError, SparrowWarning

__all__ = ["WarmupCosine", "fit_to_trainer"]


class WarmupCosine(LambdaLR):
    """Linear warm-up, then cosine decay to ``min_ratio`` of each group's own learning rate.

    Unlike OneCycleLR it scales every parameter group's learning rate, so per-group rates
    (``SparrowConfig.lr_scale``) keep their ratios.

    Args:
        optimizer: the optimizer.
        total_steps: optimizer steps of the decay; None (the default) decays over the
            trainer's step budget (``--trainer.max_steps``, or the epochs' steps), which the
            LightningModule sets through :func:`fit_to_trainer` before training starts.
            Past ``total_steps`` the rate stays at ``min_ratio``.
        warmup_steps: steps of the linear warm-up from zero.
        min_ratio: final learning rate as a fraction of the peak.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None, warmup_steps: int = 0, min_ratio: float = 0.0):
        if warmup_steps < 0 or (total_steps is not None and not 0 <= warmup_steps < total_steps):
            raise ConfigError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps}, {warmup_steps}")
        if not 0 <= min_ratio <= 1:
            raise ConfigError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio
        self.follows_trainer = total_steps is None
        super().__init__(optimizer, self._factor)

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume the step count, but keep this schedule's shape: a run resumed with a
        longer recipe (``max_steps`` and ``total_steps`` raised) decays over the new
        length instead of holding the old end rate for the added steps."""
        configured = {
            "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "min_ratio": self.min_ratio, "follows_trainer": self.follows_trainer
        }
        changed = {k: (state_dict[k], v) for k, v in configured.items() if k in state_dict and state_dict[k] != v}
        super().load_state_dict(state_dict)
        self.__dict__.update(configured)
        if changed:
            shown = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            warnings.warn(
                f"resuming with a changed learning-rate schedule ({shown}); the recipe's values apply from step {self.last_epoch}", SparrowWarning
            )

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:  # before fit_to_trainer: only the optimizer's first rate is read
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def fit_to_trainer(scheduler, trainer) -> None:
    """Give a :class:`WarmupCosine` without ``total_steps`` the trainer's step budget; warn
    when an explicit one disagrees with it (the steps past it would run at the final rate,
    or the decay would not finish). Call from ``configure_optimizers``."""
    if not isinstance(scheduler, WarmupCosine) or trainer is None:
        return
    budget = int(trainer.estimated_stepping_batches)
    if scheduler.follows_trainer:
        if budget <= scheduler.warmup_steps and not trainer.fast_dev_run:
            warnings.warn(
                f"the trainer's {budget} optimizer steps end within the learning-rate warm-up ({scheduler.warmup_steps} steps): "
                "the rate never reaches its peak; lower lr_scheduler warmup_steps for a short run",
                SparrowWarning,
            )
        # the rate already set for step 0 does not depend on it
        scheduler.total_steps = max(budget, scheduler.warmup_steps + 1)
    elif scheduler.total_steps != budget and not trainer.fast_dev_run:
        warnings.warn(
            f"the learning-rate schedule decays over total_steps={scheduler.total_steps} but the trainer runs {budget} optimizer "
            "steps; leave total_steps out of the recipe to follow the trainer",
            SparrowWarning,
        )
