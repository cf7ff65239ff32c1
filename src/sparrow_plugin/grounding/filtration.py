"""SPARROW's filtration head: which of the proposer's boxes a [BOX] token refers to.

Two parts, the authors' (``model/SPARROW.py``: ``ProposalSelector``, ``ROIProposalHelper``,
``roi_fusion_gamma``), with their module names so that ``sparrow-finetune`` loads::

    selector:  logit_sel[i, j] = <seg_proj(e_i), prop_proj(f_j)> / sqrt(hidden) + log(score_j)
               (e: the token's embedding in SAM2's prompt space, f: the proposals' decoder states)
    RoI scorer: RoIAlign 7x7 of each box on three SAM2 feature levels of the frame, tokens
               and pooled vectors projected per level, single-head attention from the token,
               score_head([attended, pooled mean, seg_proj(e)]) -> roi_logit[i, j]
    fused:     logit = logit_sel + clamp(gamma, 0, 1) · roi_logit,   p = sigmoid(logit)

A proposal is kept when p >= ``threshold`` (the best one when none is), at most
``max_kept`` per token. Training targets are the proposals whose IoU with a referred
object's box is at least ``iou_threshold``, with BCE on the fused logit; an optional box
regression (L1 + GIoU of the selector's ``box_head``) the authors' code leaves off.

The authors' ``box_head`` is never used for prompting, and ``fuse_proj`` refines an
embedding that is never read again; both are kept so that the release loads, and
:attr:`ProposalSelector.refine` exposes the refined embedding for whoever wants it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou, roi_align

from sparrow_plugin.errors import ConfigError

__all__ = ["AUTHORS_GAMMA", "FiltrationConfig", "FiltrationHead", "ProposalSelector", "RoIScorer", "Filtered", "filtration_targets", "filtration_losses", "top1_hit_rate"]


# the RoI logit's weight the authors initialise, and the one their inference ran with
AUTHORS_GAMMA = 0.1


@dataclass
class FiltrationConfig:
    """The filtration head's sizes and rules; defaults are the authors'.

    Attributes:
        token_dim: width of the token embedding it reads (SAM2's prompt width: the L→V
            adapter's output).
        proposal_dim: width of the proposals' decoder states.
        hidden_dim: width of the selector's and the scorer's projections.
        level_dims: channels of the SAM2 feature levels the RoI scorer reads (high
            resolution first; the authors': conv_s0, conv_s1 and the FPN stride-16 map).
        roi_size: RoIAlign output size.
        gamma: the RoI logit's weight when it is not learned from a release (the
            authors' init, 0.1, which is also what their inference used: transformers
            4.41 renamed the stored value away at load).
        use_roi: score proposals with the RoI scorer too (the authors': yes).
        threshold: keep proposals with p at least this.
        max_kept: keep at most this many per token (the authors: 16 at inference, 100 in training).
        iou_threshold: a proposal is a positive for a referred object's box at this IoU.
    """

    token_dim: int = 256
    proposal_dim: int = 256
    hidden_dim: int = 256
    level_dims: tuple[int, ...] = (32, 64, 256)
    roi_size: int = 7
    gamma: float = AUTHORS_GAMMA
    use_roi: bool = True
    threshold: float = 0.4
    max_kept: int = 16
    iou_threshold: float = 0.3

    def __post_init__(self):
        self.level_dims = tuple(self.level_dims)
        if not 0 < self.threshold < 1 or not 0 < self.iou_threshold <= 1:
            raise ConfigError(f"filtration threshold and iou_threshold must be in (0, 1], got {self.threshold}, {self.iou_threshold}")
        if self.max_kept < 1:
            raise ConfigError(f"filtration max_kept must be >= 1, got {self.max_kept}")


@dataclass
class Filtered:
    """The filtration head's decision for N tokens over their images' K proposals.

    Attributes:
        logits: (N, K) fused logits.
        kept: (N, K) bool, the proposals each token keeps (at least one).
        selector_logits, roi_logits: (N, K) the two parts (roi_logits zero without the scorer).
    """

    logits: torch.Tensor
    kept: torch.Tensor
    selector_logits: torch.Tensor
    roi_logits: torch.Tensor


class ProposalSelector(nn.Module):
    """Scaled dot product between a token and the proposals, plus the log proposal score."""

    def __init__(self, token_dim: int, proposal_dim: int, hidden_dim: int):
        super().__init__()
        self.seg_proj, self.prop_proj = nn.Linear(token_dim, hidden_dim), nn.Linear(proposal_dim, hidden_dim)
        self.fuse_proj = nn.Linear(proposal_dim, token_dim)
        self.box_head = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 4))
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)

    def forward(self, tokens: torch.Tensor, proposals: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """tokens (N, token_dim), proposals (N, K, proposal_dim), scores (N, K) -> (N, K) logits."""
        query, keys = self.seg_proj(tokens), self.prop_proj(proposals)
        return (keys @ query[..., None])[..., 0] / math.sqrt(query.shape[-1]) + scores.clamp(min=1e-6).log()

    def refine(self, tokens: torch.Tensor, proposals: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The token plus what it attends to among the proposals, (N, token_dim)."""
        return tokens + self.fuse_proj((logits.softmax(-1)[..., None] * proposals).sum(1))

    def regress(self, tokens: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """(N, K, 4) normalised xyxy boxes the selector's box head predicts per pair."""
        query, keys = self.seg_proj(tokens), self.prop_proj(proposals)
        corners = self.box_head(torch.cat([query[:, None].expand_as(keys), keys], -1)).sigmoid()
        return torch.cat([torch.minimum(corners[..., :2], corners[..., 2:]), torch.maximum(corners[..., :2], corners[..., 2:])], -1)


class RoIScorer(nn.Module):
    """A token's attention over the RoIAlign features of each proposal on several SAM2
    feature levels, and a score from it (the authors' ``ROIProposalHelper``)."""

    def __init__(self, token_dim: int, hidden_dim: int, level_dims: tuple[int, ...], roi_size: int):
        super().__init__()
        self.roi_size = roi_size
        self.query_proj, self.seg_proj = nn.Linear(token_dim, hidden_dim), nn.Linear(token_dim, hidden_dim)
        self.level_token_proj = nn.ModuleList(nn.Linear(dim, hidden_dim) for dim in level_dims)
        self.level_pool_proj = nn.ModuleList(nn.Linear(dim, hidden_dim) for dim in level_dims)
        self.score_head = nn.Sequential(nn.Linear(3 * hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def forward(self, tokens: torch.Tensor, boxes: torch.Tensor, levels: list[torch.Tensor]) -> torch.Tensor:
        """tokens (N, token_dim); boxes (N, K, 4) normalised xyxy on each token's frame;
        levels: per level (N, C_l, h_l, w_l) that frame's features -> (N, K) logits."""
        num_tokens, num_boxes = boxes.shape[:2]
        rows = torch.arange(num_tokens, device=boxes.device, dtype=boxes.dtype).repeat_interleave(num_boxes)[:, None]
        region_tokens, pooled = [], []
        for level, (features, token_proj, pool_proj) in enumerate(zip(levels, self.level_token_proj, self.level_pool_proj)):
            height, width = features.shape[-2:]
            scale = boxes.new_tensor([width, height, width, height])
            regions = roi_align(features.float(), torch.cat([rows, (boxes * scale).flatten(0, 1)], 1), self.roi_size, aligned=True)
            regions = regions.flatten(2).transpose(1, 2).to(tokens.dtype)  # (N*K, S*S, C_l)
            region_tokens.append(token_proj(regions))
            pooled.append(pool_proj(regions.mean(1)))
        keys = torch.cat(region_tokens, 1).view(num_tokens, num_boxes, -1, region_tokens[0].shape[-1])  # (N, K, levels*S*S, hidden)
        query = self.query_proj(tokens)
        attention = (keys @ query[:, None, :, None]).squeeze(-1) / math.sqrt(query.shape[-1])  # (N, K, T)
        attended = (attention.softmax(-1)[..., None] * keys).sum(2)
        region = torch.stack(pooled).mean(0).view(num_tokens, num_boxes, -1)
        token = self.seg_proj(tokens)[:, None].expand_as(attended)
        return self.score_head(torch.cat([attended, region, token], -1))[..., 0]


class FiltrationHead(nn.Module):
    """The selector and the RoI scorer, fused (see the module docstring). Module names are
    the authors': ``proposal_selector``, ``roi_helper``, ``roi_fusion_gamma``."""

    def __init__(self, config: FiltrationConfig | None = None):
        super().__init__()
        self.config = config = config or FiltrationConfig()
        self.proposal_selector = ProposalSelector(config.token_dim, config.proposal_dim, config.hidden_dim)
        self.roi_helper = RoIScorer(config.token_dim, config.hidden_dim, config.level_dims, config.roi_size) if config.use_roi else None
        self.roi_fusion_gamma = nn.Parameter(torch.tensor(float(config.gamma)))

    def trained_parameters(self, regression: bool) -> list[nn.Parameter]:
        """The parameters a loss reaches: without ``fuse_proj`` (its refined embedding is
        read by nothing), the box head only with ``regression``, gamma only with the RoI
        scorer. (Parameters without a gradient would also stall DDP.)"""
        unused = set(map(id, self.proposal_selector.fuse_proj.parameters()))
        if not regression:
            unused |= set(map(id, self.proposal_selector.box_head.parameters()))
        if self.roi_helper is None:
            unused.add(id(self.roi_fusion_gamma))
        return [p for p in self.parameters() if id(p) not in unused]

    def forward(self, tokens: torch.Tensor, proposal_embeddings: torch.Tensor, proposal_scores: torch.Tensor, proposal_boxes: torch.Tensor,
                levels: list[torch.Tensor] | None = None, max_kept: int | None = None) -> Filtered:
        """Score and keep proposals for N tokens.

        Args:
            tokens: (N, token_dim) the [BOX] (or [SEG]) embeddings in SAM2's prompt space.
            proposal_embeddings: (N, K, proposal_dim), proposal_scores (N, K) in [0, 1],
                proposal_boxes (N, K, 4) normalised xyxy: each token's frame's proposals.
            levels: per level (N, C_l, h_l, w_l) SAM2 features of that frame (the RoI scorer's).
            max_kept: cap on kept proposals per token (default ``config.max_kept``).
        """
        selector = self.proposal_selector(tokens, proposal_embeddings, proposal_scores)
        roi = torch.zeros_like(selector)
        if self.roi_helper is not None:
            if levels is None or len(levels) != len(self.config.level_dims):
                raise ConfigError(f"the RoI scorer reads {len(self.config.level_dims)} feature levels, got {0 if levels is None else len(levels)}")
            roi = self.roi_helper(tokens, proposal_boxes, levels)
        logits = selector + self.roi_fusion_gamma.clamp(0, 1) * roi
        return Filtered(logits=logits, kept=keep(logits, self.config.threshold, max_kept or self.config.max_kept), selector_logits=selector, roi_logits=roi)


def keep(logits: torch.Tensor, threshold: float, max_kept: int) -> torch.Tensor:
    """(N, K) bool: p >= threshold, at most ``max_kept`` of the most probable, and the
    most probable one when none passes."""
    probabilities = logits.sigmoid()
    kept = probabilities >= threshold
    order = probabilities.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    kept &= rank < max_kept
    kept |= rank == 0
    return kept


def filtration_targets(proposal_boxes: torch.Tensor, object_boxes: list[torch.Tensor], iou_threshold: float) -> torch.Tensor:
    """(N, K) float: 1 where a proposal overlaps one of the token's referred objects' boxes
    with IoU >= ``iou_threshold`` (every object of a multi-object expression counts).

    Args:
        proposal_boxes: (N, K, 4) normalised xyxy.
        object_boxes: per token, (M, 4) normalised xyxy boxes of its objects on the frame
            (M = 0: no target there, every proposal a negative).
    """
    targets = torch.zeros(proposal_boxes.shape[:2], device=proposal_boxes.device)
    for row, boxes in enumerate(object_boxes):
        if len(boxes):
            targets[row] = (box_iou(proposal_boxes[row], boxes.to(proposal_boxes)) >= iou_threshold).any(-1).float()
    return targets


def filtration_losses(filtered: Filtered, targets: torch.Tensor, predicted_boxes: torch.Tensor | None = None,
                      object_boxes: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``proposal``: BCE of the fused logits against the targets (mean over pairs, as the
    authors'); with ``predicted_boxes`` (N, K, 4), ``proposal_box``: per token with
    positives, L1 (mean over coordinates) + (1 - GIoU) of the positive pairs' regressed
    boxes against the closest referred object's box."""
    losses = {"proposal": F.binary_cross_entropy_with_logits(filtered.logits.float(), targets)}
    if predicted_boxes is not None:
        terms = []
        for row, boxes in enumerate(object_boxes or []):
            positives = targets[row] > 0
            if not positives.any() or not len(boxes):
                continue
            predicted = predicted_boxes[row][positives]
            closest = boxes[box_iou(predicted.detach(), boxes.to(predicted)).argmax(-1)].to(predicted)
            giou = generalized_box_iou(predicted, closest).diagonal()
            terms.append((predicted - closest).abs().mean(-1).mean() + (1 - giou).mean())
        losses["proposal_box"] = torch.stack(terms).mean() if terms else predicted_boxes.sum() * 0.0
    return losses


@torch.no_grad()
def top1_hit_rate(logits: torch.Tensor, proposal_boxes: torch.Tensor, object_boxes: list[torch.Tensor], iou: float = 0.5) -> torch.Tensor:
    """Share of the tokens with a target on their frame whose most probable proposal
    overlaps one of its boxes with IoU >= ``iou`` (NaN when no token has one)."""
    best = proposal_boxes[torch.arange(len(logits), device=logits.device), logits.argmax(-1)]
    hits = [float((box_iou(best[row : row + 1], boxes.to(best)) >= iou).any()) for row, boxes in enumerate(object_boxes) if len(boxes)]
    return torch.tensor(sum(hits) / len(hits) if hits else float("nan"))
