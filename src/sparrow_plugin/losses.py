"""Training losses: the LM cross-entropy and the mask losses of pixel-grounded LLMs.

Mask losses follow LISA/VideoGLaMM: per (object, frame) mask, BCE is the mean over
pixels and DICE is computed on sigmoid probabilities; both are averaged over all
(object, frame) pairs of the batch. The object-presence term supervises SAM2's
occlusion head (logit > 0: visible) on the same pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_lm_loss", "mask_bce_loss", "mask_dice_loss", "presence_loss"]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; ``labels`` (B, L) are aligned with the inputs (-100: skip)."""
    shifted_logits = logits[:, :-1].flatten(0, 1).float()
    shifted_labels = labels[:, 1:].flatten()
    if not bool((shifted_labels != -100).any()):
        return shifted_logits.sum() * 0.0
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100)


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of the per-pixel BCE. logits, targets: (N, T, H, W)."""
    per_mask = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").flatten(2).mean(-1)
    return per_mask.mean()


def mask_dice_loss(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """Mean over masks of ``1 - dice`` on sigmoid probabilities (LISA's scaled form).

    An empty target predicted empty scores ~0 loss; the 1000 scale keeps the smoothing
    term negligible next to real mask areas, as in LISA and VideoGLaMM.
    """
    probs = logits.float().sigmoid().flatten(2) / scale
    targets = targets.float().flatten(2)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1) / scale
    return (1 - (numerator + eps) / (denominator + eps)).mean()


def presence_loss(object_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE of SAM2's object-presence logits (N, T) against "target visible in the frame"."""
    visible = targets.flatten(2).any(-1).float()
    return F.binary_cross_entropy_with_logits(object_logits.float(), visible)
