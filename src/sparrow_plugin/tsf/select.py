"""Choosing the K moments of a target's track whose regions become its TSF tokens.

K-means over the tracked samples, then the sample nearest each centre, as the authors'
``_kmeans_select_representatives`` does: centres start at K evenly spaced samples, Lloyd
iterations with L2 distances in float32, an empty cluster keeps its centre, and the loop
stops early once the centres move less than 1e-4. Nothing is random, so the same track
always gives the same choice.

Two feature spaces:

- ``appearance`` (the released code): the region features alone.
- ``joint`` (the paper): the region features, L2-normalised, next to the box's centre and
  size and the sample's time, each in [0, 1] and scaled by ``geometry_weight``, so that
  moments that look alike but happen at other places or times are told apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sparrow_plugin.errors import ConfigError

__all__ = ["SelectionSettings", "select_representatives", "selection_features"]


@dataclass(frozen=True)
class SelectionSettings:
    """How TSF picks its moments.

    Attributes:
        k: representatives per track (the paper's and the code's 4).
        iterations: Lloyd iterations at most (the code's 8).
        space: ``appearance`` (the code) or ``joint`` (the paper: plus box geometry and time).
        geometry_weight: in ``joint``, the weight of the box and time coordinates against
            the unit-length appearance vector.
        fewer: a track with fewer samples than ``k``: ``repeat`` its samples in order
            until there are ``k`` (every ``<TSF>`` placeholder gets a feature), or
            ``zeros`` (the missing ones are zero vectors, as the code fills placeholders
            it has no crop for).
        candidates: the track's frames K-means chooses among: ``all`` (the code's:
            every frame, a frame without the target with its stand-in box, the previous
            one or the whole frame) or ``found`` (where the target was found; a sample
            without a target gets K zero vectors).
    """

    k: int = 4
    iterations: int = 8
    space: Literal["appearance", "joint"] = "appearance"
    geometry_weight: float = 1.0
    fewer: Literal["repeat", "zeros"] = "repeat"
    candidates: Literal["found", "all"] = "all"

    def __post_init__(self):
        if self.k < 1 or self.iterations < 1:
            raise ConfigError(f"tsf.select needs k >= 1 and iterations >= 1, got k={self.k}, iterations={self.iterations}")
        if self.space not in ("appearance", "joint"):
            raise ConfigError(f"tsf.select.space must be 'appearance' or 'joint', got {self.space!r}")
        if self.fewer not in ("repeat", "zeros"):
            raise ConfigError(f"tsf.select.fewer must be 'repeat' or 'zeros', got {self.fewer!r}")
        if self.candidates not in ("found", "all"):
            raise ConfigError(f"tsf.select.candidates must be 'found' or 'all', got {self.candidates!r}")
        if self.geometry_weight < 0:
            raise ConfigError(f"tsf.select.geometry_weight must be >= 0, got {self.geometry_weight}")


def selection_features(appearance: torch.Tensor, boxes: torch.Tensor, times: torch.Tensor, settings: SelectionSettings) -> torch.Tensor:
    """(N, D) float32 points K-means runs on.

    Args:
        appearance: (N, C) region features.
        boxes: (N, 4) normalised xyxy boxes; times: (N,) frame positions in [0, 1].
    """
    points = appearance.float()
    if settings.space == "appearance":
        return points
    points = torch.nn.functional.normalize(points, dim=-1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    geometry = torch.cat([centre, size, times[:, None]], dim=-1).float()
    return torch.cat([points, settings.geometry_weight * geometry], dim=-1)


def select_representatives(points: torch.Tensor, settings: SelectionSettings) -> list[int]:
    """Indices of the samples nearest each K-means centre, in centre order (duplicates are
    possible, as in the code); all N samples when N <= K, in order.

    Args:
        points: (N, D) from :func:`selection_features`.
    """
    count, k = points.shape[0], settings.k
    if count == 0:
        return []
    if count <= k:
        return list(range(count))
    points = points.float()
    start = torch.linspace(0, count - 1, k).round().long()
    centres = points[start].clone()
    for _ in range(settings.iterations):
        assignment = torch.cdist(points, centres).argmin(dim=1)
        moved = centres.clone()
        for c in range(k):
            members = assignment == c
            if bool(members.any()):  # an empty cluster keeps its centre
                moved[c] = points[members].mean(dim=0)
        converged = torch.allclose(moved, centres, atol=1e-4, rtol=1e-4)
        centres = moved
        if converged:
            break
    return torch.cdist(centres, points).argmin(dim=1).tolist()
