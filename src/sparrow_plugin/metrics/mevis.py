"""The MeViS protocol as a torchmetrics metric: J, F and J&F, overall and per kind.

Unit: one (video, expression). Its ground truth per frame is the union of the referred
objects' masks; every frame is scored; the expression's J (F) is the mean over frames;
the benchmark J (F) is the plain mean over expressions; ``J&F = (J + F) / 2``.
No-target expressions score 1 on a frame predicted empty and 0 otherwise, which falls out
of the per-frame definitions. A missing prediction scores J = F = 0 and is counted; a
model that emits no [SEG] predicts an empty mask, which is scored like any other mask and
counted separately; so is an answer cut off by ``max_new_tokens``. Nothing is ever dropped.

Each expression is counted exactly once on any number of devices: every update carries
the sample's dataset index, and :meth:`compute` keeps one score per index. Under DDP,
``DistributedSampler`` pads the last round by repeating samples, so a sample can be scored
on two ranks; both copies are the same sample and the first is kept.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from sparrow_plugin.errors import SparrowError
from sparrow_plugin.metrics.frame_scores import f_measure, jaccard

__all__ = ["MeViSMetric"]

_FLAGS = ("missing", "no_seg", "truncated")


class MeViSMetric(Metric):
    """Accumulates per-expression J and F; :meth:`compute` aggregates them.

    Args:
        kinds: names of the expression kinds that may occur (per-kind results are reported
            for each kind that occurred).
        expected_samples: the number of samples of the evaluated split; when set (here or
            later, as the attribute), :meth:`compute` raises unless exactly the indices
            ``0 .. expected_samples - 1`` were scored.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, kinds: Sequence[str] = ("all",), expected_samples: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.kinds = list(dict.fromkeys(kinds))
        self.expected_samples = expected_samples
        # one entry per update, gathered across ranks by concatenation; flags and indices
        # are int64 so every distributed backend can gather them
        for name in ("j", "f", "kind", "sample_index", *_FLAGS):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred: torch.Tensor | None,
        gt: torch.Tensor | None,
        kind: str = "all",
        emitted_seg: bool = True,
        *,
        sample_index: int,
        truncated: bool = False,
    ) -> None:
        """Score one expression.

        Args:
            pred: (T, H, W) predicted mask, or None when no prediction was made (scored 0).
            gt: (T, H, W) ground truth (union of the referred objects); may be None when
                ``pred`` is.
            kind: the expression's kind; must be one of ``kinds``.
            emitted_seg: False when the model emitted no [SEG] (``pred`` is then empty).
            sample_index: the sample's index in the dataset; a repeated index is the same
                sample scored twice (DDP padding) and is counted once.
            truncated: the model's answer was cut off by ``max_new_tokens`` (counted apart
                from an answer that ended without [SEG]).
        """
        if kind not in self.kinds:
            raise ValueError(f"expression kind {kind!r} is not one of the metric's kinds {self.kinds}")
        sample_index = operator.index(sample_index)  # an int, a 0-d integer tensor or numpy int
        if sample_index < 0:
            raise ValueError(f"sample_index must be a dataset index (>= 0), got {sample_index}")
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
        self.sample_index.append(torch.tensor([sample_index], device=device))
        for name, flag in zip(_FLAGS, (pred is None, not emitted_seg, truncated)):
            getattr(self, name).append(torch.tensor([int(bool(flag))], device=device))

    def compute(self) -> dict[str, float]:
        """``J``, ``F``, ``J&F`` and the counts ``expressions``, ``missing``, ``no_seg``,
        ``truncated`` overall, then ``<kind>/J`` ... for each kind seen.

        Raises:
            SparrowError: nothing was scored (J&F would be NaN), one sample index came with
                two kinds, or the distinct samples are not ``expected_samples``.
        """
        index, kind = _cat(self.sample_index), _cat(self.kind)
        if index.numel() == 0:
            raise SparrowError("MeViSMetric: no expression was scored, so J&F is undefined (was update() called?)")
        distinct, inverse = torch.unique(index, return_inverse=True)
        keep = _first_occurrences(inverse, distinct.numel())
        kept_kind = kind[keep][inverse]
        if (kind != kept_kind).any():  # not dataset indices (a position in the batch, say)
            at = int((kind != kept_kind).nonzero()[0])
            raise SparrowError(
                f"MeViSMetric: sample_index {int(index[at])} was scored as kind {self.kinds[int(kept_kind[at])]!r} "
                f"and as {self.kinds[int(kind[at])]!r}; sample_index must be the sample's index in the dataset"
            )
        if self.expected_samples is not None:
            _check_expected(distinct, self.expected_samples)
        j, f, kind = _cat(self.j)[keep], _cat(self.f)[keep], kind[keep]
        flags = {name: _cat(getattr(self, name))[keep].bool() for name in _FLAGS}
        results = _summary(j, f, flags)
        for position, name in enumerate(self.kinds):
            selected = kind == position
            if selected.any():
                summary = _summary(j[selected], f[selected], {key: flag[selected] for key, flag in flags.items()})
                results.update({f"{name}/{key}": value for key, value in summary.items()})
        return results


def _first_occurrences(inverse: torch.Tensor, count: int) -> torch.Tensor:
    """(N,) distinct-sample number of each update -> (count,) position of its first update."""
    order = torch.arange(inverse.numel(), device=inverse.device)
    first = torch.full((count,), inverse.numel(), device=inverse.device, dtype=order.dtype)
    return first.scatter_reduce(0, inverse, order, reduce="amin")


def _check_expected(index: torch.Tensor, expected: int) -> None:
    """Raises unless the distinct sample indices ``index`` (M,) are exactly 0 .. expected - 1."""
    if index.numel() == expected and int(index.max()) < expected:
        return
    seen = torch.zeros(expected, dtype=torch.bool, device=index.device)
    in_range = index[index < expected]
    seen[in_range] = True
    missing = (~seen).nonzero().flatten().tolist()
    outside = index[index >= expected].tolist()
    message = f"MeViSMetric: {index.numel()} distinct samples were scored, {expected} were expected"
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        message += f"; missing sample indices: {shown}"
    if outside:
        message += f"; indices outside 0..{expected - 1}: {', '.join(map(str, sorted(outside)[:10]))}"
    raise SparrowError(message)


def _summary(j: torch.Tensor, f: torch.Tensor, flags: dict[str, torch.Tensor]) -> dict[str, float]:
    j_mean, f_mean = float(j.mean()), float(f.mean())
    counts = {name: int(flag.sum()) for name, flag in flags.items()}
    return {"J": j_mean, "F": f_mean, "J&F": (j_mean + f_mean) / 2, "expressions": int(j.numel()), **counts}


def _cat(values) -> torch.Tensor:
    """A list state before synchronisation, a tensor after."""
    if isinstance(values, list):
        return torch.cat(values) if values else torch.empty(0, dtype=torch.long)
    return values
