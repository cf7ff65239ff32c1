"""Trackers for TSF's detect + track source: a box on one frame in, a track out.

A tracker is anything with ``track(frames, start_frame, start_box, detections) -> Track``
(:class:`Tracker`), so a tracker without a package (the paper's CLDTracker) plugs in by
wrapping its own code in that method. Shipped here:

- :class:`IoUVelocityTracker`: the target's box moves at its last velocity; on each frame it
  takes the detection that overlaps that prediction most (IoU at least ``min_iou``),
  forward and backward from the start frame. Frames without a match keep the prediction,
  with score 0 (not found), and after ``patience`` of them in a row the track stops moving.
- :class:`SAM2BoxTracker`: SAM2 prompted with the box on the start frame, its memory
  carrying the object forward and backward (any SAM2 config and checkpoint); each frame's
  box is its mask's, the score SAM2's presence probability (0 where the mask is empty).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torchvision.ops import box_iou

from sparrow_plugin.data.mevis import normalised_boxes
from sparrow_plugin.tsf.tracks import Track

__all__ = ["Tracker", "IoUVelocityTracker", "SAM2BoxTracker", "mask_track"]


def mask_track(masks: torch.Tensor, scores: torch.Tensor | None = None) -> Track:
    """The track of a target's masks (T, H, W) bool: each frame's mask box, ``scores`` (T,)
    (default 1); where the mask is empty, the whole frame with score 0 (not found)."""
    found = masks.flatten(1).any(dim=1)
    boxes = normalised_boxes(masks[None])[0]
    boxes[~found] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    scores = torch.ones(len(masks)) if scores is None else scores.float().cpu()
    return Track(boxes, torch.where(found, scores, torch.zeros(())))


@runtime_checkable
class Tracker(Protocol):
    def track(self, frames: torch.Tensor, start_frame: int, start_box: torch.Tensor, detections: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Track:
        """The target's track over every frame.

        Args:
            frames: (T, 3, H, W) float RGB in [0, 1], the clip.
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

    def track(self, frames, start_frame: int, start_box: torch.Tensor, detections: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Track:
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


class SAM2BoxTracker:
    """SAM2 video propagation of one box (see the module docstring).

    Args:
        config: a SAM2 config name or YAML path; checkpoint: its official ``.pt``;
            state_dict: or its weights as a state dict (the tests' tiny SAM2).
    """

    def __init__(self, config: str, checkpoint: str | None = None, state_dict: dict | None = None):
        from sparrow_plugin.decoder import SAM2VideoDecoder
        from sparrow_plugin.decoder.build import build_sam2

        self.decoder = SAM2VideoDecoder(build_sam2(config, state_dict=state_dict, checkpoint=checkpoint)).eval()

    @torch.no_grad()
    def track(self, frames: torch.Tensor, start_frame: int, start_box: torch.Tensor, detections=None) -> Track:
        size = self.decoder.image_size
        out = self.decoder(frames[None], None, boxes=start_box.float().view(1, 1, 4) * size, cond_frame=start_frame)
        return mask_track((out.mask_logits[0] > 0).cpu(), out.object_logits[0].sigmoid())
