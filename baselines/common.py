"""Pieces the host shims share (most of them the LISA family's: VideoGLaMM, GLUS)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IMAGE_PLACEHOLDER", "text_hidden_fcs", "OneTokenProjection", "frame_indices", "resize_square", "resolve_path", "to_release_names"]

IMAGE_PLACEHOLDER = -200  # LLaVA's IMAGE_TOKEN_INDEX: its positions receive the visual tokens


def text_hidden_fcs(hidden: int, out_dim: int) -> nn.ModuleList:
    """LISA's L→V projection, with its module layout (release keys ``text_hidden_fcs.0.{0,2}.*``)."""
    return nn.ModuleList([nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim), nn.Dropout(0.0))])


class OneTokenProjection(nn.Module):
    """``text_hidden_fcs[0]`` seen as an L→V projection to one SAM2 prompt token."""

    def __init__(self, layers: nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.layers(states).unsqueeze(1)


def frame_indices(total: int, wanted: int, device) -> torch.Tensor:
    """``wanted`` evenly spaced frames; a shorter clip repeats its last frame."""
    if total >= wanted:
        return torch.linspace(0, total - 1, wanted, device=device).round().long()
    return torch.cat([torch.arange(total, device=device), torch.full((wanted - total,), total - 1, device=device)])


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resolve_path(release: Path, location: str | Path) -> Path:
    """A path from a release's config.json: relative to the release if it exists there."""
    candidate = Path(location)
    return candidate if candidate.is_absolute() or not (release / candidate).exists() else release / candidate


def to_release_names(state: dict, llm_prefix: str = "llm.", skip: tuple[str, ...] = ()) -> dict:
    """Our LISA-family module names -> the release's (``llm.model.X`` -> ``model.X``,
    ``llm.lm_head`` -> ``lm_head``, everything else under ``model.``): for tiny releases."""
    named = {}
    for key, value in state.items():
        if key.startswith(skip):
            continue
        if key.startswith(llm_prefix + "lm_head."):
            named[key[len(llm_prefix) :]] = value
        elif key.startswith(llm_prefix + "model."):
            named[key[len(llm_prefix) :]] = value
        else:
            named["model." + key] = value
    return named
