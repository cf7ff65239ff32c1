"""The MeViS protocol as a torchmetrics metric: J, F and J&F, overall and per kind.

Unit: one (video, expression). Its ground truth per frame is the union of the referred
objects' masks; every frame is scored; the expression's J (F) is the mean over frames;
the benchmark J (F) is the plain mean over expressions; ``J&F = (J + F) / 2``.
No-target expressions score 1 on a frame predicted empty and 0 otherwise, which falls out
of the per-frame definitions. A missing prediction scores J = F = 0 and is counted; a
model that emits no [SEG] predicts an empty mask, which is scored like any other mask and
counted separately. Nothing is ever dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from sparrow_plugin.metrics.frame_scores import f_measure, jaccard

__all__ = ["MeViSMetric"]


class MeViSMetric(Metric):
    """Accumulates per-expression J and F; :meth:`compute` aggregates them.

    Args:
        kinds: names of the expression kinds that may occur (per-kind results are reported
            for each kind that occurred).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, kinds: Sequence[str] = ("all",), **kwargs):
        super().__init__(**kwargs)
        self.kinds = list(dict.fromkeys(kinds))
        for name in ("j", "f", "kind", "missing", "no_seg"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred: torch.Tensor | None,
        gt: torch.Tensor,
        kind: str = "all",
        emitted_seg: bool = True,
    ) -> None:
        """Score one expression.

        Args:
            pred: (T, H, W) predicted mask, or None when no prediction was made (scored 0).
            gt: (T, H, W) ground truth (union of the referred objects).
            kind: the expression's kind; must be one of ``kinds``.
            emitted_seg: False when the model emitted no [SEG] (``pred`` is then empty).
        """
        if kind not in self.kinds:
            raise ValueError(f"expression kind {kind!r} is not one of the metric's kinds {self.kinds}")
        if pred is None:
            j_value = f_value = torch.tensor(0.0, dtype=torch.float64)
        else:
            if pred.shape != gt.shape:
                raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth {tuple(gt.shape)}")
            j_value, f_value = jaccard(pred, gt).mean(), f_measure(pred, gt).mean()
        device = self.device
        self.j.append(j_value.to(device, torch.float64).reshape(1))
        self.f.append(f_value.to(device, torch.float64).reshape(1))
        self.kind.append(torch.tensor([self.kinds.index(kind)], device=device))
        self.missing.append(torch.tensor([pred is None], device=device))
        self.no_seg.append(torch.tensor([not emitted_seg], device=device))

    def compute(self) -> dict[str, float]:
        """``J``, ``F``, ``J&F`` and counts overall, then ``<kind>/J`` ... for each kind seen."""
        if not self.j:
            return {"J": float("nan"), "F": float("nan"), "J&F": float("nan"), "expressions": 0}
        j, f, kind = _cat(self.j), _cat(self.f), _cat(self.kind)
        missing, no_seg = _cat(self.missing).bool(), _cat(self.no_seg).bool()
        results = _summary(j, f, missing, no_seg)
        for index, name in enumerate(self.kinds):
            selected = kind == index
            if selected.any():
                for key, value in _summary(j[selected], f[selected], missing[selected], no_seg[selected]).items():
                    results[f"{name}/{key}"] = value
        return results


def _summary(j, f, missing, no_seg) -> dict[str, float]:
    j_mean, f_mean = float(j.mean()), float(f.mean())
    return {
        "J": j_mean,
        "F": f_mean,
        "J&F": (j_mean + f_mean) / 2,
        "expressions": int(j.numel()),
        "missing": int(missing.sum()),
        "no_seg": int(no_seg.sum()),
    }


def _cat(values) -> torch.Tensor:
    return torch.cat(values) if isinstance(values, list) else values
