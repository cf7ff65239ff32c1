"""How often the filtration head's most confident box is the target: a diagnostic of the
[BOX] half of SPARROW, next to J and F."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchvision.ops import box_iou

__all__ = ["TopBoxHitRate"]


class TopBoxHitRate(Metric):
    """hit@1: the share of samples with a target on the frame SAM2 was prompted on whose
    most confident kept box overlaps one of the target's boxes there with IoU >= ``iou``
    (a sample that kept no box misses). Each sample counts once by its dataset index,
    however many processes or padded repeats there are.
    """

    full_state_update = False

    def __init__(self, iou: float = 0.5):
        super().__init__()
        self.iou = iou
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self.add_state("hits", default=[], dist_reduce_fx="cat")

    def update(self, index: int, boxes: torch.Tensor | None, scores: torch.Tensor | None, targets: torch.Tensor) -> None:
        """One sample: its kept boxes (K, 4) normalised xyxy and their scores (K,), or
        None; ``targets`` (M, 4) the referred objects' boxes on the prompted frame (M = 0:
        nothing to hit, the sample does not count)."""
        if not len(targets):
            return
        hit = False
        if boxes is not None and bool(torch.isfinite(scores).any()):
            top = boxes[torch.nan_to_num(scores, nan=-1.0).argmax()][None]
            hit = bool((box_iou(top.float(), targets.float().to(top.device)) >= self.iou).any())
        self.indices.append(torch.tensor([index], device=self.device))
        self.hits.append(torch.tensor([float(hit)], device=self.device))

    def compute(self) -> torch.Tensor:
        # a list of per-sample tensors, or (synced across processes) one tensor
        if isinstance(self.indices, list) and not self.indices:
            return torch.tensor(float("nan"))
        indices, hits = _cat(self.indices), _cat(self.hits)
        first = {}
        for index, hit in zip(indices.tolist(), hits.tolist()):
            first.setdefault(index, hit)
        return torch.tensor(sum(first.values()) / len(first))


def _cat(values) -> torch.Tensor:
    return torch.cat(values) if isinstance(values, list) else values
