"""Spatio-temporal video grounding (VidSTG, HC-STVG): tIoU, vIoU and gt_vIoU.

As TubeDETR's ``vidstg_eval.py`` computes them, on the video's sampled frames:

* ``tIoU``: the predicted and ground-truth time spans (half-open ``[start, end)``, in
  sampled-frame indices) as intervals, intersection over union;
* ``vIoU``: the box IoU summed over the frames of both spans, divided by the number of
  frames of either span (a frame of the intersection without a predicted box adds 0);
* ``gt_vIoU``: the mean box IoU over the ground-truth span's frames alone (spatial only;
  the "mIoU" video MLLM papers report for VidSTG);
* ``vIoU@R`` and ``gt_vIoU@R``: the share of queries whose vIoU (gt_vIoU) is above R, for
  R in 0.3 and 0.5.

Means are taken per query type (declarative, interrogative) and over all queries. A query
without a prediction scores 0 on every measure and is counted; the reference drops videos
that raise an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

__all__ = ["box_iou", "mask_to_box", "tube_scores", "STVGSummary", "MIN_BLOB_PIXELS"]

MIN_BLOB_PIXELS = 20  # connected blobs smaller than this are dropped before a mask becomes a box
_THRESHOLDS = (0.3, 0.5)


def box_iou(a, b) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes (continuous coordinates, as TubeDETR's)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    intersection = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return float(intersection / union) if union > 0 else 0.0


def mask_to_box(mask: np.ndarray, min_pixels: int = MIN_BLOB_PIXELS) -> list[float] | None:
    """The box around a predicted mask's blobs of at least ``min_pixels`` pixels (8-connected),
    as pixel edges ``[x1, y1, x2 + 1, y2 + 1]``; None when no blob is left."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3)))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.isin(labels, np.flatnonzero(sizes >= min_pixels) + 1)
    if not kept.any():
        return None
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def tube_scores(
    gt_span: tuple[int, int],
    gt_boxes: Mapping[int, list[float]],
    pred_span: tuple[int, int] | None,
    pred_boxes: Mapping[int, list[float]],
) -> dict[str, float]:
    """tIoU, vIoU and gt_vIoU of one query.

    Args:
        gt_span, pred_span: ``[start, end)`` in sampled-frame indices; ``pred_span`` None
            (or empty) when the model located nothing in time.
        gt_boxes: sampled-frame index -> ground-truth box, for the frames of ``gt_span``.
        pred_boxes: sampled-frame index -> predicted box (frames without one score 0).
    """
    gt_frames = set(range(*gt_span))
    pred_frames = set(range(*pred_span)) if pred_span is not None else set()
    union, intersection = gt_frames | pred_frames, gt_frames & pred_frames
    ious = {frame: box_iou(pred_boxes[frame], gt_boxes[frame]) for frame in gt_frames if frame in pred_boxes and frame in gt_boxes}
    return {
        "tIoU": len(intersection) / len(union) if union else 0.0,
        "vIoU": sum(ious.get(frame, 0.0) for frame in intersection) / len(union) if union else 0.0,
        "gt_vIoU": sum(ious.values()) / len(gt_frames) if gt_frames else 0.0,
    }


class STVGSummary:
    """Per-query scores pooled by query type; :meth:`compute` gives the benchmark's table."""

    def __init__(self):
        self.scores: dict[str, list[dict[str, float]]] = defaultdict(list)
        self.missing: dict[str, int] = defaultdict(int)

    def add(self, qtype: str, scores: dict[str, float] | None) -> None:
        """One query's :func:`tube_scores`, or None for a missing prediction (scored 0)."""
        if scores is None:
            self.missing[qtype] += 1
            scores = {"tIoU": 0.0, "vIoU": 0.0, "gt_vIoU": 0.0}
        self.scores[qtype].append(scores)

    def compute(self) -> dict[str, float]:
        if not self.scores:
            raise ValueError("STVGSummary: no query was scored")
        results = {}
        groups = {qtype: rows for qtype, rows in sorted(self.scores.items())}
        groups["all"] = [row for rows in groups.values() for row in rows]
        for name, rows in groups.items():
            prefix = "" if name == "all" else f"{name}/"
            viou = np.array([row["vIoU"] for row in rows])
            results[f"{prefix}m_tIoU"] = float(np.mean([row["tIoU"] for row in rows]))
            results[f"{prefix}m_vIoU"] = float(viou.mean())
            for threshold in _THRESHOLDS:
                results[f"{prefix}vIoU@{threshold}"] = float((viou > threshold).mean())
            gt_viou = np.array([row["gt_vIoU"] for row in rows])
            results[f"{prefix}gt_vIoU"] = float(gt_viou.mean())
            for threshold in _THRESHOLDS:
                results[f"{prefix}gt_vIoU@{threshold}"] = float((gt_viou > threshold).mean())
            results[f"{prefix}queries"] = len(rows)
            results[f"{prefix}missing"] = sum(self.missing.values()) if name == "all" else self.missing[name]
        return results
