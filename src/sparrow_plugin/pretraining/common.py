"""What two or more of the tiny host's pre-training stages share: the attribute prompt ids
(colours, then shapes, then "any colour" and "any shape"), the file the SAM2 stage writes
them to and the grounding stage reads them from, and the optimiser set-up."""

from __future__ import annotations

from sparrow_plugin.data.synthetic import COLOURS, SHAPES
from sparrow_plugin.schedules import fit_to_trainer

_ANY_COLOUR, _ANY_SHAPE = len(COLOURS) + len(SHAPES), len(COLOURS) + len(SHAPES) + 1
ATTRIBUTE_PROMPTS_FILE = "attribute_prompts.safetensors"
_COLOUR_NAMES = list(COLOURS)


def _optimizers(module, parameters):
    """The module's optimizer over ``parameters`` (or parameter groups: a group's optional
    ``lr_scale`` multiplies its learning rate), and its step-wise schedule if it has one."""
    optimizer = module.optimizer_factory(parameters)
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
    if module.scheduler_factory is None:
        return optimizer
    scheduler = module.scheduler_factory(optimizer)
    fit_to_trainer(scheduler, module._trainer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
