"""Frame sampling and sizing rules that hosts name in their ``FrameRequest``.

Module-level functions (and ``functools.partial`` of them) so that a request pickles into
DataLoader workers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["uniform_frames", "square_size", "resize_frames", "pixels_of"]


def uniform_frames(total: int, count: int) -> list[int]:
    """``count`` evenly spaced frames of a clip of ``total`` (first and last included);
    a clip shorter than ``count`` gives every frame, then its last frame repeated."""
    if total < 1:
        raise ValueError(f"a clip needs at least one frame, got {total}")
    if total >= count:
        return torch.linspace(0, total - 1, count).round().long().tolist()
    return list(range(total)) + [total - 1] * (count - total)


def square_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Every frame stretched to ``size`` x ``size`` (CLIP towers, SAM2)."""
    return size, size


def resize_frames(frames: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """(..., 3, H, W) float frames in [0, 1] -> (..., 3, *size), antialiased, clamped to [0, 1]."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    resized = F.interpolate(flat, size=size, mode=interpolation, align_corners=False, antialias=True).clamp_(0, 1)
    return resized.view(*frames.shape[:-2], *size)


def pixels_of(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
