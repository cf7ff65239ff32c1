"""VideoGLaMM's vision towers.

Spatial: CLIP ViT-L/14-336 from transformers (``CLIPVisionModel``), read at its
second-to-last layer without the CLS token, as the reference does.

Temporal: InternVideo2-Stage2-1B (f4, 224 px) is custom research code loaded from its own
``.pt``; its checkpoint format cannot be verified here, so the tower is pluggable. Any
``nn.Module`` works that has a ``from_checkpoint(path, width)`` class method and maps a
chunk of frames ``(N, C, 3, 224, 224)`` (ImageNet-normalised) to per-frame patch tokens
``(N, C, 256, width)`` (16x16 patches of 14 px, CLS dropped). Name it in the release's
``config.json`` as ``"temporal_tower_class": "package.module.Class"`` or pass it to
``VideoGLaMM.from_pretrained(temporal_tower=...)``. :class:`FrameViTTower` is the tower of
tiny configurations and tests: a ViT applied frame by frame, with the same output layout.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sparrow_plugin.errors import CheckpointError, ConfigError

__all__ = ["FrameViTTower", "load_temporal_tower"]


class FrameViTTower(nn.Module):
    """A ViT (patch 14 at 224 px: 16x16 tokens) applied to every frame of a chunk."""

    def __init__(self, width: int, depth: int = 1, heads: int = 2):
        super().__init__()
        self.vit = VisionTransformer(
            img_size=224, patch_size=14, num_classes=0, global_pool="", embed_dim=width, depth=depth, num_heads=heads, class_token=False
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, width: int) -> "FrameViTTower":
        state = load_file(path)
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("vit.blocks."))
        tower = cls(width, depth=depth)
        missing, unexpected = tower.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(path, "does not match a FrameViTTower", missing, unexpected)
        return tower

    def save(self, path: str | Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path)

    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        """(N, C, 3, 224, 224) -> (N, C, 256, width)."""
        tokens = self.vit.forward_features(chunk.flatten(0, 1))
        return tokens.view(*chunk.shape[:2], *tokens.shape[1:])


def load_temporal_tower(spec: str | nn.Module | None, checkpoint: str, width: int) -> nn.Module:
    """The temporal tower from a module, a ``package.module.Class`` name, or the release's."""
    if isinstance(spec, nn.Module):
        return spec
    if spec is None:
        raise ConfigError(
            "VideoGLaMM's temporal tower (InternVideo2-Stage2-1B) is not bundled: its checkpoint format cannot be "
            "verified without it. Pass temporal_tower='package.module.Class' (a module with from_checkpoint(path, width) "
            "returning (N, C, 256, width) patch tokens per frame, see baselines/videoglamm/towers.py), or set "
            f"'temporal_tower_class' in the release's config.json. Its weights are read from {checkpoint}."
        )
    module_name, _, class_name = spec.rpartition(".")
    try:
        tower_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"temporal tower class {spec!r} cannot be imported ({error})") from None
    return tower_class.from_checkpoint(checkpoint, width)
