"""Trackers for TSF's detect + track source: a box on one frame in, a track out.

A tracker is anything with ``track(start_frame, start_box, detections) -> Track``
(:class:`Tracker`), so a tracker without a package (the paper's CLDTracker) plugs in by
wrapping its own code in that method. Shipped here:

- :class:`IoUVelocityTracker`: the target's box moves at its last velocity; on each frame it
  takes the detection that overlaps that prediction most (IoU at least ``min_iou``),
  forward and backward from the start frame. Frames without a match keep the prediction,
  with score 0 (not found), and after ``patience`` of them in a row the track stops moving.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torchvision.ops import box_iou

from sparrow_plugin.tsf.tracks import Track

__all__ = ["Tracker", "IoUVelocityTracker"]


@runtime_checkable
class Tracker(Protocol):
    def track(self, start_frame: int, start_box: torch.Tensor, detections: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Track:
        """The target's track over every frame.

        Args:
            start_frame: where the detector found the target; start_box: (4,) normalised
                xyxy there.
            detections: per frame, (M_t, 4) normalised xyxy boxes and (M_t,) scores.
        """
        ...


class IoUVelocityTracker:
    """Constant-velocity prediction, IoU association (see the module docstring).

    Args:
        min_iou: the least overlap between the prediction and a detection to take it.
        patience: unmatched frames in a row after which the velocity is set to zero.
    """

    def __init__(self, min_iou: float = 0.3, patience: int = 2):
        self.min_iou, self.patience = min_iou, patience

    def track(self, start_frame: int, start_box: torch.Tensor, detections: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Track:
        num_frames = len(detections)
        boxes = torch.zeros(num_frames, 4)
        scores = torch.zeros(num_frames)
        boxes[start_frame], scores[start_frame] = start_box.float(), 1.0
        for order in (range(start_frame + 1, num_frames), range(start_frame - 1, -1, -1)):
            previous, velocity, missed = start_box.float(), torch.zeros(4), 0
            for t in order:
                predicted = (previous + velocity).clamp(0, 1)
                candidates, candidate_scores = detections[t]
                matched = None
                if len(candidates):
                    overlap = box_iou(predicted[None], candidates.float())[0]
                    best = int(overlap.argmax())
                    if float(overlap[best]) >= self.min_iou:
                        matched = best
                if matched is None:
                    boxes[t], missed = predicted, missed + 1
                    velocity = torch.zeros(4) if missed >= self.patience else velocity
                else:
                    boxes[t], scores[t] = candidates[matched].float(), float(candidate_scores[matched])
                    velocity, missed = boxes[t] - previous, 0
                previous = boxes[t]
        return Track(boxes, scores)
