"""Pieces the host shims share (most of them the LISA family's: VideoGLaMM, GLUS)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparrow_plugin.frames import resize_frames

__all__ = [
    "IMAGE_PLACEHOLDER",
    "CLIP_MEAN",
    "CLIP_STD",
    "SAM2_STABILITY_FALLBACK",
    "clip_patch_features",
    "text_hidden_fcs",
    "OneTokenProjection",
    "resolve_path",
    "to_release_names",
]

IMAGE_PLACEHOLDER = -200  # LLaVA's IMAGE_TOKEN_INDEX: its positions receive the visual tokens
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # also Qwen2-VL's

# SAM2's fallback when a single mask is read from a multimask decoder: take the best of the
# three if the single one is unstable (the hosts' SAM2 configs set it, as SAM2's own do)
SAM2_STABILITY_FALLBACK = (
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


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


def clip_patch_features(tower: nn.Module, images: torch.Tensor, select_layer: int) -> torch.Tensor:
    """LLaVA's CLIP features: patch tokens of hidden layer ``select_layer``, CLS dropped.

    Args:
        tower: a transformers ``CLIPVisionModel``; it runs without gradients unless it trains.
        images: (N, 3, H, W) RGB in [0, 1], resized to the tower's size here.
    Returns:
        (N, patches, width).
    """
    mean, std = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1), images.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (resize_frames(images, (tower.config.image_size,) * 2) - mean) / std
    with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    return hidden[select_layer][:, 1:]


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
