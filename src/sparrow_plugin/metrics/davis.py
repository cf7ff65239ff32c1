"""The DAVIS 2017 protocols (semi-supervised and unsupervised) and their statistics.

Computed as davis2017-evaluation (github.com/davisvideochallenge/davis2017-evaluation at
ac7c43f, ``davis2017/evaluation.py`` and ``utils.py``) computes them, with one documented
difference: the decay's bin edges are integers that do not wrap (the reference casts them
to uint8, so a sequence of more than 256 frames gets wrong bins or NaN).

* Per object, over its frames: mean, recall (share of frames above 0.5) and decay (mean of
  the first quarter minus mean of the last).
* Semi-supervised: the first and the last frame are not scored; predicted ids are the
  ground-truth ids; an id the prediction lacks is an empty mask; no void.
* Unsupervised (Ref-DAVIS17 uses it): every frame is scored with the void pixels (label 255)
  left out; at most 20 predicted ids; predictions are matched to the ground-truth objects
  by the Hungarian algorithm on each pair's (mean J + mean F) / 2.
* Global: the means of the per-object statistics over every object of every sequence;
  ``J&F-Mean = (J-Mean + F-Mean) / 2``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from sparrow_plugin.metrics.frame_scores import f_measure, jaccard

__all__ = ["MAX_PROPOSALS", "db_statistics", "decay_bins", "semi_supervised_scores", "unsupervised_scores", "DavisSummary"]

MAX_PROPOSALS = 20  # the unsupervised task's limit on predicted ids per sequence


def decay_bins(num_frames: int) -> list[tuple[int, int]]:
    """The four inclusive frame ranges of the decay: edges ``round(linspace(1, N, 5)) - 1``,
    neighbouring bins sharing their edge frame."""
    # the reference adds 1e-10 before rounding, so halves round up rather than to even
    edges = [int(np.round(value + 1e-10)) - 1 for value in np.linspace(1, num_frames, 5)]
    return [(edges[i], edges[i + 1]) for i in range(4)]


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F values, NaN frames skipped in
    the mean and the decay as the reference does."""
    per_frame = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(per_frame))
        recall = float(np.nanmean(per_frame > 0.5))
        bins = [per_frame[start : end + 1] for start, end in decay_bins(len(per_frame))]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def semi_supervised_scores(gt_objects: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of each ground-truth object against the prediction with its id.

    Args:
        gt_objects: (N, T, H, W) bool, object ``k`` is id ``k + 1``; the first and last
            frames already removed.
        predicted: (M, T, H, W) bool with M <= N; ids the prediction lacks score as empty.
    Returns:
        (N, T) J and (N, T) F.
    """
    num_objects, num_frames = gt_objects.shape[:2]
    j, f = np.zeros((num_objects, num_frames)), np.zeros((num_objects, num_frames))
    for k in range(num_objects):
        mask = predicted[k] if k < len(predicted) else np.zeros_like(gt_objects[k])
        j[k], f[k] = jaccard(mask, gt_objects[k]).numpy(), f_measure(mask, gt_objects[k]).numpy()
    return j, f


def unsupervised_scores(gt_objects: np.ndarray, predicted: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per-frame J and F of each ground-truth object against its Hungarian-matched prediction.

    Args:
        gt_objects: (N, T, H, W) bool ground-truth objects.
        predicted: (M, T, H, W) bool predicted objects, M <= :data:`MAX_PROPOSALS` (the
            caller refuses more); padded with empty ones up to N.
        void: (T, H, W) bool void pixels, or None.
    Returns:
        (N, T) J and F in ground-truth order, and for each ground-truth object the index
        of the prediction matched to it.
    """
    num_objects, num_frames = gt_objects.shape[:2]
    if len(predicted) < num_objects:
        padding = np.zeros((num_objects - len(predicted), *gt_objects.shape[1:]), dtype=bool)
        predicted = np.concatenate([predicted, padding]) if len(predicted) else padding
    j = np.zeros((len(predicted), num_objects, num_frames))
    f = np.zeros_like(j)
    for k in range(num_objects):
        for p in range(len(predicted)):
            j[p, k] = jaccard(predicted[p], gt_objects[k], void).numpy()
            f[p, k] = f_measure(predicted[p], gt_objects[k], void).numpy()
    prediction_of, objects = linear_sum_assignment(-(j.mean(axis=2) + f.mean(axis=2)) / 2)
    matched = [int(p) for _, p in sorted(zip(objects, prediction_of))]
    return j[matched, np.arange(num_objects)], f[matched, np.arange(num_objects)], matched


@dataclass
class DavisSummary:
    """Per-object statistics pooled over sequences; :meth:`compute` gives the global table."""

    objects: list[tuple[str, int, tuple[float, float, float], tuple[float, float, float]]] = field(default_factory=list)

    def add(self, sequence: str, j: np.ndarray, f: np.ndarray) -> None:
        """One sequence's (N, T) per-frame J and F, objects numbered from 1."""
        for k in range(len(j)):
            self.objects.append((sequence, k + 1, db_statistics(j[k]), db_statistics(f[k])))

    def compute(self) -> dict[str, float]:
        if not self.objects:
            raise ValueError("DavisSummary: no object was scored")
        j_stats = np.array([j for _, _, j, _ in self.objects])
        f_stats = np.array([f for _, _, _, f in self.objects])
        j_mean, j_recall, j_decay = j_stats.mean(axis=0)
        f_mean, f_recall, f_decay = f_stats.mean(axis=0)
        return {
            "J&F-Mean": float((j_mean + f_mean) / 2),
            "J-Mean": float(j_mean),
            "J-Recall": float(j_recall),
            "J-Decay": float(j_decay),
            "F-Mean": float(f_mean),
            "F-Recall": float(f_recall),
            "F-Decay": float(f_decay),
            "objects": len(self.objects),
        }

    def per_object(self) -> list[dict]:
        return [
            {"sequence": sequence, "object": number, "J-Mean": j[0], "F-Mean": f[0]}
            for sequence, number, j, f in self.objects
        ]
