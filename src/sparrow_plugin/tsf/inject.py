"""TSF features of a batch: the target's track encoded, K moments chosen.

Two encodings of a track's regions:

- ``crop`` (the released code): each box cropped from the host's frame, stretched to its
  size, through the host's own image tower and projector, mean-pooled
  (:func:`tsf_features`); one extra tower pass per frame of the track.
- ``roi``: RoIAlign on the dense maps the host already computed for its LLM tokens, next
  to the box's centre, size and time, projected to the LLM width by a small MLP that
  trains in stage 1 (:class:`RoIRegionEncoder`); no extra tower pass.

The K vectors of each sample become the embeddings of its K ``<TSF>`` placeholders through
the host's embedding-edit hook (:class:`~sparrow_plugin.interfaces.EmbedEdit`), so no
host's position scheme changes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from sparrow_plugin.interfaces import VisualFeatures
from sparrow_plugin.tsf.select import SelectionSettings, select_representatives, selection_features
from sparrow_plugin.tsf.tracks import Track

__all__ = ["RoIRegionEncoder", "crop_regions", "representatives", "roi_tsf_features", "tsf_features"]


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
    """(K, C) of one sample: K-means over the candidate frames of its track (its features
    (N, C) on the host's frames, their boxes and times (N,) in [0, 1];
    ``settings.candidates``: where the target was found, or all); fewer candidates than K
    are repeated in order or padded with zeros (``settings.fewer``); none (no target
    found) gives K zero vectors."""
    k = settings.k
    candidates = track.scores > 0 if settings.candidates == "found" else torch.ones_like(track.scores, dtype=torch.bool)
    found = candidates.nonzero().flatten().to(features.device)
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


class RoIRegionEncoder(nn.Module):
    """TSF's ``roi`` encoding: per frame of the host's dense maps, RoIAlign (3 x 3 bins,
    averaged) of the track's box, with the box's centre and size and the frame's time,
    through Linear-GELU-Linear to the LLM width.

    Args:
        dense_dim: channels of the host's dense maps; hidden_size: the LLM's width.
    """

    def __init__(self, dense_dim: int, hidden_size: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dense_dim + 5, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, visual: VisualFeatures, boxes: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """(B, T', hidden) from the dense maps (B, T', C, h, w), the track's boxes on those
        frames (B, T', 4) normalised xyxy and their times (B, T') in [0, 1]."""
        num_clips, num_frames = visual.dense.shape[:2]
        maps = visual.dense.flatten(0, 1).float()
        grid_boxes = visual.geometry.to_grid(boxes.flatten(0, 1).to(maps))
        rois = torch.cat([torch.arange(len(grid_boxes), device=maps.device, dtype=maps.dtype)[:, None], grid_boxes], dim=1)
        pooled = roi_align(maps, rois, output_size=3, spatial_scale=1.0, sampling_ratio=2, aligned=True).mean(dim=(2, 3))
        flat = boxes.flatten(0, 1).to(maps)
        geometry = torch.cat([(flat[:, :2] + flat[:, 2:]) / 2, flat[:, 2:] - flat[:, :2], times.flatten()[:, None].to(maps)], dim=1)
        features = self.project(torch.cat([pooled, geometry], dim=1).to(self.project[0].weight.dtype))
        return features.view(num_clips, num_frames, -1)


def roi_tsf_features(encoder: RoIRegionEncoder, visual: VisualFeatures, host_indices: torch.Tensor, tracks: list[Track], settings: SelectionSettings) -> torch.Tensor:
    """(B, K, hidden) TSF vectors of a batch from the dense maps the host computed for its
    LLM frames (``visual``; its ``dense_frames`` are clip indices among ``host_indices``
    (B, T_h), the frames the tracks (on the host's frames) are given on)."""
    positions = (visual.dense_frames[:, :, None].to(host_indices.device) == host_indices[:, None, :]).float().argmax(dim=2)  # (B, T')
    on_dense = [track.on(p.cpu()) for track, p in zip(tracks, positions)]
    boxes = torch.stack([track.boxes for track in on_dense]).to(visual.dense.device)
    times = positions.float() / max(host_indices.shape[1] - 1, 1)
    features = encoder(visual, boxes, times)
    values = torch.stack([representatives(features[b], on_dense[b], times[b].to(features.device), settings) for b in range(len(tracks))])
    return values + 0.0 * features.sum()  # a batch without targets still reaches the encoder (DDP's reducer)
