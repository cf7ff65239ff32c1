"""SPARROW's class-agnostic box proposer: Deformable DETR on frozen SAM2 image features.

The authors' architecture (RISys-Lab/SPARROW, ``CustomDDETRSAM2Model``), built from
transformers' Deformable-DETR encoder and decoder layers so that their
``sparrow-det-pretrain`` release loads (``grounding/releases.py``)::

    SAM2 image features, FPN stride-16 map (frozen: the decoder's own, or a separate pass)
      ─► 1x1 conv + channel LayerNorm ─► + sine position and level embedding
      ─► Deformable-DETR encoder ─► one proposal per pixel, objectness (class_embed_enc)
      ─► top-``num_queries`` boxes ─► decoder ─► per layer: a box and two objectness logits
         (``coco``, ``sa1b``: the two pre-training data families)
      ─► score = sigmoid(coco)^0.3 · sigmoid(sa1b)^0.7, top-k proposals with their embeddings

Reference points: the authors' decoder never moves them (every layer samples around the
encoder's boxes, and each layer's box is decoded relative to the previous layer's);
``refine_reference_points=True`` is Deformable DETR's own iterative refinement, where each
layer samples around the previous layer's box.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from sam2.modeling.sam2_utils import LayerNorm2d
from torch import nn
from torchvision.ops import box_convert
from transformers import DeformableDetrConfig
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoder,
    DeformableDetrEncoder,
    DeformableDetrMLPPredictionHead,
    DeformableDetrSinePositionEmbedding,
    inverse_sigmoid,
)

from sparrow_plugin.errors import ConfigError

__all__ = ["ProposerConfig", "ClassAgnosticProposer", "ProposerOutput", "Proposals", "OBJECTNESS_HEADS", "proposer_losses"]

OBJECTNESS_HEADS = ("coco", "sa1b")  # the authors' data families: COCO-like boxes, SA-1B's dense masks


@dataclass
class ProposerConfig:
    """Sizes and behaviour of the proposer; the defaults are the authors'.

    Attributes:
        feature_channels: channels of the SAM2 map it reads (its FPN's ``d_model``).
        d_model, encoder_layers, decoder_layers, attention_heads, ffn_dim, n_points,
            dropout: the Deformable-DETR transformer.
        num_queries: proposals the decoder refines (the encoder's top boxes).
        refine_reference_points: Deformable DETR's iterative refinement; False is the
            authors' decoder (see the module docstring).
        score_powers: exponents of the ``coco`` and ``sa1b`` objectness in the score.
        top_k: proposals handed on at inference.
    """

    feature_channels: int = 256
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 8
    ffn_dim: int = 1024
    n_points: int = 4
    dropout: float = 0.1
    num_queries: int = 300
    refine_reference_points: bool = False
    score_powers: tuple[float, float] = (0.3, 0.7)
    top_k: int = 100

    def __post_init__(self):
        self.score_powers = tuple(self.score_powers)
        if self.d_model % self.attention_heads:
            raise ConfigError(f"proposer d_model {self.d_model} must divide by attention_heads {self.attention_heads}")
        if min(self.encoder_layers, self.decoder_layers, self.num_queries, self.top_k) < 1:
            raise ConfigError("proposer encoder_layers, decoder_layers, num_queries and top_k must be >= 1")
        if len(self.score_powers) != len(OBJECTNESS_HEADS):
            raise ConfigError(f"score_powers must give one exponent per head {OBJECTNESS_HEADS}, got {self.score_powers}")

    def layers_config(self) -> DeformableDetrConfig:
        """transformers' config of the encoder and decoder layers (one feature level)."""
        return DeformableDetrConfig(
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            encoder_attention_heads=self.attention_heads,
            decoder_attention_heads=self.attention_heads,
            encoder_ffn_dim=self.ffn_dim,
            decoder_ffn_dim=self.ffn_dim,
            encoder_n_points=self.n_points,
            decoder_n_points=self.n_points,
            dropout=self.dropout,
            num_feature_levels=1,
            num_queries=self.num_queries,
            two_stage=True,
            two_stage_num_proposals=self.num_queries,
            with_box_refine=True,
            use_pretrained_backbone=False,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProposerOutput:
    """Everything the proposer computes for a batch of images.

    Attributes:
        logits: per objectness head, (B, L, Q, 1) logits of every decoder layer.
        boxes: (B, L, Q, 4) normalised cxcywh boxes of every decoder layer.
        embeddings: (B, Q, d_model) the last decoder layer's states (what the filtration
            head reads).
        encoder_logits: (B, HW, 1) the encoder's per-pixel objectness.
        encoder_boxes: (B, HW, 4) its per-pixel boxes, normalised cxcywh.
    """

    logits: dict[str, torch.Tensor]
    boxes: torch.Tensor
    embeddings: torch.Tensor
    encoder_logits: torch.Tensor
    encoder_boxes: torch.Tensor


@dataclass
class Proposals:
    """The top proposals of each image.

    Attributes:
        boxes: (B, K, 4) normalised xyxy.
        scores: (B, K) fused objectness in [0, 1], descending.
        embeddings: (B, K, d_model) their decoder states.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    embeddings: torch.Tensor


class ClassAgnosticProposer(nn.Module):
    """Class-agnostic proposals from SAM2 feature maps (see the module docstring).

    It reads maps given to it: the decoder's own image features (shared, computed once per
    frame), or those of a separate SAM2 image encoder the caller runs (the authors' 448 px
    pass, :class:`~sparrow_plugin.grounding.releases.SeparateImageEncoder`).

    Args:
        config: sizes and behaviour.
    """

    def __init__(self, config: ProposerConfig | None = None):
        super().__init__()
        self.config = config = config or ProposerConfig()
        self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(config.feature_channels, config.d_model, 1), LayerNorm2d(config.d_model))])
        self.transformer = ProposerTransformer(config)
        nn.init.xavier_uniform_(self.input_proj[0][0].weight)
        nn.init.zeros_(self.input_proj[0][0].bias)

    def forward(self, maps: torch.Tensor) -> ProposerOutput:
        """maps: (B, feature_channels, h, w) SAM2 stride-16 features."""
        if maps.shape[1] != self.config.feature_channels:
            raise ConfigError(f"the proposer reads {self.config.feature_channels}-channel maps, got {maps.shape[1]} channels")
        return self.transformer(self.input_proj[0](maps))

    @torch.no_grad()
    def propose(self, maps: torch.Tensor, top_k: int | None = None) -> Proposals:
        """The ``top_k`` (default ``config.top_k``) best proposals of each image."""
        return self.select(self(maps), top_k)

    def select(self, output: ProposerOutput, top_k: int | None = None) -> Proposals:
        """The best proposals of a forward pass: no NMS, no area filter (as the authors)."""
        scores = self.scores(output)
        top_k = min(top_k or self.config.top_k, scores.shape[1])
        scores, order = scores.topk(top_k, dim=1)
        boxes = output.boxes[:, -1].gather(1, order[..., None].expand(-1, -1, 4))
        embeddings = output.embeddings.gather(1, order[..., None].expand(-1, -1, output.embeddings.shape[-1]))
        return Proposals(boxes=box_convert(boxes, "cxcywh", "xyxy").clamp(0, 1), scores=scores, embeddings=embeddings)

    def scores(self, output: ProposerOutput) -> torch.Tensor:
        """(B, Q) the last layer's fused objectness, sigmoid(coco)^a · sigmoid(sa1b)^b."""
        fused = None
        for head, power in zip(OBJECTNESS_HEADS, self.config.score_powers):
            part = output.logits[head][:, -1, :, 0].sigmoid() ** power
            fused = part if fused is None else fused * part
        return fused


class ProposerTransformer(nn.Module):
    """Two-stage Deformable DETR with one feature level, the authors' heads and module names
    (``level_embed``, ``query_position_embeddings``, ``enc_output``, ``pos_trans``, ...)."""

    def __init__(self, config: ProposerConfig):
        super().__init__()
        self.config = config
        layers = config.layers_config()
        d, num_layers = config.d_model, config.decoder_layers
        self.level_embed = nn.Parameter(torch.empty(1, d))
        self.query_position_embeddings = nn.Embedding(config.num_queries, d)
        self.enc_output, self.enc_output_norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.pos_trans, self.pos_trans_norm = nn.Linear(2 * d, 2 * d), nn.LayerNorm(2 * d)
        self.position_embedding = DeformableDetrSinePositionEmbedding(d // 2, normalize=True)
        self.encoder = DeformableDetrEncoder(layers)  # initialised by transformers (sampling offsets on a grid)
        self.decoder = DeformableDetrDecoder(layers)  # its layers; the loop over them is ours (the reference points)
        self.class_embed_enc = nn.Linear(d, 1)
        self.class_embed_coco = nn.ModuleList(nn.Linear(d, 1) for _ in range(num_layers))
        self.class_embed_sa1b = nn.ModuleList(nn.Linear(d, 1) for _ in range(num_layers))
        # one box head per decoder layer, and the last for the encoder's per-pixel proposals
        self.bbox_embed = nn.ModuleList(DeformableDetrMLPPredictionHead(d, d, 4, 3) for _ in range(num_layers + 1))
        self._init_heads()

    def _init_heads(self) -> None:
        nn.init.normal_(self.level_embed)
        prior = -math.log((1 - 0.01) / 0.01)  # objectness starts at 1%
        for head in [self.class_embed_enc, *self.class_embed_coco, *self.class_embed_sa1b]:
            nn.init.constant_(head.bias, prior)
        for head in self.bbox_embed:  # boxes start at their reference
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, source: torch.Tensor) -> ProposerOutput:
        """source: (B, d_model, h, w) the projected feature map."""
        batch, d, height, width = source.shape
        if height * width < self.config.num_queries:
            raise ConfigError(
                f"a {height}x{width} feature map has {height * width} positions, fewer than the proposer's "
                f"num_queries {self.config.num_queries}; lower num_queries or feed larger maps"
            )
        shapes_list = [(height, width)]
        shapes = torch.tensor(shapes_list, dtype=torch.long, device=source.device)
        start = shapes.new_zeros(1)
        valid_ratios = source.new_ones(batch, 1, 2)
        valid = torch.ones(batch, height * width, dtype=torch.bool, device=source.device)
        position = self.position_embedding(source.shape, source.device, source.dtype)
        memory = self.encoder(
            inputs_embeds=source.flatten(2).transpose(1, 2),
            attention_mask=valid,
            spatial_position_embeddings=position.flatten(2).transpose(1, 2) + self.level_embed[0],
            spatial_shapes=shapes,
            spatial_shapes_list=shapes_list,
            level_start_index=start,
            valid_ratios=valid_ratios,
        ).last_hidden_state

        # two-stage: every pixel proposes a box, the best num_queries become the decoder's
        pixel_states, pixel_boxes = self._pixel_proposals(memory, height, width)
        object_query = self.enc_output_norm(self.enc_output(pixel_states))
        encoder_logits = self.class_embed_enc(object_query)
        encoder_coord_logits = self.bbox_embed[-1](object_query) + pixel_boxes
        top = encoder_logits[..., 0].topk(self.config.num_queries, dim=1).indices
        top_coord_logits = encoder_coord_logits.gather(1, top[..., None].expand(-1, -1, 4)).detach()
        initial_reference = top_coord_logits.sigmoid()
        query_position = self.pos_trans_norm(self.pos_trans(_box_position_embedding(top_coord_logits, d)))[..., :d]
        queries = self.query_position_embeddings.weight[None].expand(batch, -1, -1)

        states, boxes = self._decode(queries, query_position, initial_reference, memory, valid, shapes, shapes_list, start)
        return ProposerOutput(
            logits={
                "coco": torch.stack([head(h) for head, h in zip(self.class_embed_coco, states)], dim=1),
                "sa1b": torch.stack([head(h) for head, h in zip(self.class_embed_sa1b, states)], dim=1),
            },
            boxes=torch.stack(boxes, dim=1),
            embeddings=states[-1],
            encoder_logits=encoder_logits,
            encoder_boxes=encoder_coord_logits.sigmoid(),
        )

    def _decode(self, queries, query_position, initial_reference, memory, valid, shapes, shapes_list, start):
        """The decoder layers; returns every layer's states and boxes (cxcywh).

        Layer l decodes its box relative to the box of layer l-1 (the initial reference for
        layer 0). It samples around that box with ``refine_reference_points``, around the
        initial reference otherwise (the authors')."""
        states, boxes, sampled_around = [], [], initial_reference
        decoded_from = initial_reference
        hidden = queries
        for index, layer in enumerate(self.decoder.layers):
            hidden = layer(hidden, query_position, sampled_around[:, :, None], shapes, shapes_list, start, memory, valid)
            delta = self.bbox_embed[index](hidden)
            box = (delta + inverse_sigmoid(decoded_from)).sigmoid()
            # the next layer's reference is this layer's box, without its gradient (as in Deformable DETR)
            reference = (delta + inverse_sigmoid(sampled_around)).sigmoid().detach()
            if self.config.refine_reference_points:
                sampled_around = reference
            decoded_from = reference
            states.append(hidden)
            boxes.append(box)
        return states, boxes

    @staticmethod
    def _pixel_proposals(memory: torch.Tensor, height: int, width: int, level: int = 0):
        """Per pixel: the encoder state as a query (zeroed where the box is invalid) and a
        box centred on it, 0.05 x 2^level wide, as logits (+inf where invalid: too close to
        the border)."""
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=memory.dtype, device=memory.device),
            torch.arange(width, dtype=memory.dtype, device=memory.device),
            indexing="ij",
        )
        centres = torch.stack([(xs + 0.5) / width, (ys + 0.5) / height], -1).reshape(1, -1, 2)
        boxes = torch.cat([centres, torch.full_like(centres, 0.05 * 2.0**level)], -1).expand(memory.shape[0], -1, -1)
        valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True)
        logits = torch.log(boxes / (1 - boxes)).masked_fill(~valid, float("inf"))
        return memory.masked_fill(~valid, 0.0), logits


def _box_position_embedding(box_logits: torch.Tensor, d_model: int, temperature: float = 10000.0) -> torch.Tensor:
    """(B, Q, 4) box logits -> (B, Q, 2 d_model) sine embedding of the boxes (d_model/2
    frequencies per coordinate, on the boxes' sigmoid scaled to 2 pi), in float32."""
    features = d_model // 2
    frequencies = temperature ** (2 * (torch.arange(features, device=box_logits.device) // 2) / features)
    angles = box_logits.float().sigmoid()[..., None] * (2 * math.pi) / frequencies
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(2).to(box_logits.dtype)


# ----------------------------------------------------------------------------- training objective

# the authors' matcher costs and loss weights: focal classification 2, L1 5, GIoU 2
LOSS_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def proposer_losses(output: ProposerOutput, boxes: list[torch.Tensor], head: str = "coco") -> dict[str, torch.Tensor]:
    """The proposer's pre-training losses and ``loss``, their weighted sum.

    Hungarian matching and the focal / L1 / GIoU losses are transformers' Deformable-DETR
    ones (``DeformableDetrHungarianMatcher`` with the authors' costs), applied to the last
    decoder layer, to every earlier layer (``_0``, ``_1``, ...) and to the encoder's
    per-pixel proposals (``_enc``, scored by ``class_embed_enc``).

    Args:
        output: a forward pass.
        boxes: per image, (N, 4) normalised cxcywh target boxes (N may be 0).
        head: the objectness head the batch's data family trains (``coco`` or ``sa1b``);
            a batch holds one family, as the authors' sampler makes it.
    """
    if head not in OBJECTNESS_HEADS:
        raise ConfigError(f"objectness head must be one of {OBJECTNESS_HEADS}, got {head!r}")
    matcher = DeformableDetrHungarianMatcher(class_cost=LOSS_WEIGHTS["loss_ce"], bbox_cost=LOSS_WEIGHTS["loss_bbox"], giou_cost=LOSS_WEIGHTS["loss_giou"])
    criterion = DeformableDetrImageLoss(matcher=matcher, num_classes=1, focal_alpha=0.25, losses=["labels", "boxes"])
    targets = [{"class_labels": torch.zeros(len(b), dtype=torch.long, device=b.device), "boxes": b} for b in boxes]
    logits, layers = output.logits[head], output.boxes.shape[1]
    decoded = {
        "logits": logits[:, -1],
        "pred_boxes": output.boxes[:, -1],
        "auxiliary_outputs": [{"logits": logits[:, layer], "pred_boxes": output.boxes[:, layer]} for layer in range(layers - 1)],
    }
    losses = criterion(decoded, targets)
    encoder = criterion({"logits": output.encoder_logits, "pred_boxes": output.encoder_boxes}, targets)
    losses.update({f"{name}_enc": value for name, value in encoder.items()})
    losses["loss"] = sum(LOSS_WEIGHTS["_".join(name.split("_")[:2])] * value for name, value in losses.items())
    return losses
