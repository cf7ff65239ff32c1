"""TSF features of a batch: crops of the target's track, encoded by the host, K chosen.

The K vectors of each sample become the embeddings of its K ``<TSF>`` placeholders through
the host's embedding-edit hook (:class:`~sparrow_plugin.interfaces.EmbedEdit`), so no
host's position scheme changes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparrow_plugin.tsf.select import SelectionSettings, select_representatives, selection_features
from sparrow_plugin.tsf.tracks import Track

__all__ = ["crop_regions", "representatives", "tsf_features"]


def crop_regions(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each box cut from its image (pixel edges floored and ceiled, at least one pixel) and
    stretched back to the image's size, bilinear (the released code; aspect not kept).

    Args:
        images: (N, 3, H, W); boxes: (N, 4) normalised xyxy.
    """
    height, width = images.shape[-2:]
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, boxes.tolist()):
        left, top = min(int(math.floor(x1 * width)), width - 1), min(int(math.floor(y1 * height)), height - 1)
        right, bottom = max(int(math.ceil(x2 * width)), left + 1), max(int(math.ceil(y2 * height)), top + 1)
        region = image[None, :, top:bottom, left:right]
        crops.append(F.interpolate(region, size=(height, width), mode="bilinear", align_corners=False)[0])
    return torch.stack(crops)


def representatives(features: torch.Tensor, track: Track, times: torch.Tensor, settings: SelectionSettings) -> torch.Tensor:
    """(K, C) of one sample: K-means over the frames where the track found the target (its
    features (N, C) on the host's frames, their boxes and times (N,) in [0, 1]); fewer
    found frames than K are repeated in order or padded with zeros (``settings.fewer``);
    none (no target) gives K zero vectors."""
    k = settings.k
    found = (track.scores > 0).nonzero().flatten().to(features.device)
    if not found.numel():
        return features.new_zeros(k, features.shape[-1])
    points = selection_features(features[found].detach(), track.boxes.to(features.device)[found], times[found], settings)
    chosen = features[found[select_representatives(points, settings)]]
    if len(chosen) < k:
        if settings.fewer == "repeat":
            chosen = chosen[torch.arange(k, device=chosen.device) % len(chosen)]
        else:
            chosen = torch.cat([chosen, chosen.new_zeros(k - len(chosen), chosen.shape[-1])])
    return chosen


def tsf_features(host, frames: torch.Tensor, tracks: list[Track], settings: SelectionSettings) -> torch.Tensor:
    """(B, K, hidden) TSF vectors of a batch.

    Args:
        host: the host (its ``encode_regions``).
        frames: (B, N, 3, h, w) the host's frames; tracks: per sample, its Track on them.
    """
    num_clips, num_frames = frames.shape[:2]
    boxes = torch.stack([track.boxes for track in tracks]).to(frames.device)
    features = host.encode_regions(crop_regions(frames.flatten(0, 1), boxes.flatten(0, 1))).view(num_clips, num_frames, -1)
    times = torch.linspace(0, 1, num_frames, device=frames.device)
    return torch.stack([representatives(features[b], tracks[b], times, settings) for b in range(num_clips)])
