"""The authors' released SPARROW weights, read strictly through our key maps.

``sparrow-det-pretrain`` (RISys-Lab), the class-agnostic proposer, is a Hugging Face
Trainer folder::

    config.json         model_type "ddetr_sam2", sam2_cfg, ddetr_cfg (a *diff* against
                        transformers 4.41's DeformableDetrConfig defaults)
    pytorch_model.bin   vis_encoder.*       SAM2 image encoder (a frozen copy of SAM2-L)
                        input_proj.0.{0,1}.* 1x1 conv + channel LayerNorm
                        ddetr_transformer.*  the transformer, its heads, and aliases of the
                                             heads under ddetr_transformer.decoder.*

The aliases are the same tensors saved twice: they are checked equal and dropped. Key names
of transformers 4.41 (``layers.N.fc1``, ``self_attn.out_proj``) become 5.x's (``mlp.fc1``,
``o_proj``). The image encoder is the one the proposer's features come from: the host's
SAM2 image encoder when it holds the same weights (checked tensor by tensor), else a
separate one (:class:`SAM2FeatureExtractor`, at the release's 448 px).

:func:`write_tiny_proposer_release` writes a random release in exactly that layout, for
tests and CPU runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparrow_plugin.decoder.build import build_sam2
from sparrow_plugin.errors import CheckpointError
from sparrow_plugin.grounding.proposer import ClassAgnosticProposer, ProposerConfig
from sparrow_plugin.hosts.release import KeyMap, load_release, read_release_config, read_release_weights

__all__ = [
    "ProposerRelease",
    "SAM2FeatureExtractor",
    "PROPOSER_KEYS",
    "proposer_config_from_release",
    "load_proposer_release",
    "write_proposer_release",
    "tiny_proposer_config",
    "write_tiny_proposer_release",
]

# transformers 4.41 DeformableDetrConfig defaults, for the fields the release's diff dict
# leaves out when they equal them (its values, not ours, decide what the release means)
_DDETR_DEFAULTS = {
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024,
    "encoder_n_points": 4,
    "decoder_n_points": 4,
    "dropout": 0.1,
    "num_feature_levels": 4,
    "num_queries": 300,
    "two_stage": False,
    "two_stage_num_proposals": 300,
    "with_box_refine": False,
}
# ProposerConfig field <- DeformableDetrConfig field
_CONFIG_FIELDS = {
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "attention_heads": "encoder_attention_heads",
    "ffn_dim": "encoder_ffn_dim",
    "n_points": "encoder_n_points",
    "dropout": "dropout",
    "num_queries": "two_stage_num_proposals",
}
_ALIASED_HEADS = ("bbox_embed", "class_embed_enc", "class_embed_coco", "class_embed_sa1b")
RELEASE_IMAGE_SIZE = 448  # the authors' proposer input, training and inference

PROPOSER_KEYS = KeyMap(
    renames=(("input_proj.", "input_proj."), ("ddetr_transformer.", "transformer.")),
    split=(("vis_encoder.", "image_encoder"),),
    substitutions=((r"\.layers\.(\d+)\.fc([12])\.", r".layers.\1.mlp.fc\2."), (r"\.self_attn\.out_proj\.", ".self_attn.o_proj.")),
)


class SAM2FeatureExtractor(nn.Module):
    """A frozen SAM2 image encoder and the preprocessing of the authors' proposer pass:
    frames resized to ``image_size`` (bicubic, as their PIL resize), ImageNet-normalised,
    the FPN stride-16 map out."""

    def __init__(self, image_encoder: nn.Module, image_size: int = RELEASE_IMAGE_SIZE):
        super().__init__()
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.image_size = image_size
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.image_encoder.eval()  # frozen: no dropout, no drop-path, whatever the caller trains
        return self

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: (B, 3, H, W) float RGB in [0, 1] -> (B, C, S/16, S/16)."""
        size = (self.image_size, self.image_size)
        images = F.interpolate(frames, size=size, mode="bicubic", align_corners=False).clamp(0, 1) if frames.shape[-2:] != size else frames
        return self.image_encoder((images - self.pixel_mean) / self.pixel_std)["backbone_fpn"][-1]


class ProposerRelease:
    """What a proposer release holds: the proposer and where its features come from."""

    def __init__(self, proposer: ClassAgnosticProposer, features: nn.Module, shares_encoder: bool):
        self.proposer, self.features, self.shares_encoder = proposer, features, shares_encoder


def proposer_config_from_release(raw: Mapping, feature_channels: int, **overrides) -> ProposerConfig:
    """The ProposerConfig a release's config.json describes; ``overrides`` set the fields
    it does not fix (``refine_reference_points``, ``score_powers``, ``top_k``)."""
    ddetr = {**_DDETR_DEFAULTS, **raw.get("ddetr_cfg", {})}
    where = "the proposer release's config.json"
    if ddetr["num_feature_levels"] != 1 or not ddetr["two_stage"] or not ddetr["with_box_refine"]:
        raise CheckpointError(
            None,
            f"{where}: expected the authors' proposer (num_feature_levels 1, two_stage, with_box_refine), "
            f"got {ddetr['num_feature_levels']}, {ddetr['two_stage']}, {ddetr['with_box_refine']}",
        )
    for encoder_field in ("encoder_attention_heads", "encoder_ffn_dim", "encoder_n_points"):
        decoder_field = encoder_field.replace("encoder", "decoder")
        if ddetr[encoder_field] != ddetr[decoder_field]:
            raise CheckpointError(None, f"{where}: {encoder_field} {ddetr[encoder_field]} differs from {decoder_field} {ddetr[decoder_field]}")
    unknown = sorted(set(overrides) - {f.name for f in fields(ProposerConfig)})
    if unknown:
        raise CheckpointError(None, f"unknown proposer settings {unknown}")
    values = {ours: ddetr[theirs] for ours, theirs in _CONFIG_FIELDS.items()}
    return ProposerConfig(feature_channels=feature_channels, **values, **overrides)


def load_proposer_release(
    path: str | Path, host_image_encoder: nn.Module | None = None, image_size: int = RELEASE_IMAGE_SIZE, **overrides
) -> ProposerRelease:
    """Read ``sparrow-det-pretrain`` (or a release in its layout) strictly.

    Args:
        path: the release folder.
        host_image_encoder: the host's SAM2 image encoder; shared when the release's
            ``vis_encoder`` holds exactly its weights, else a separate encoder is built.
        image_size: input size of the proposer's feature pass (the authors': 448).
        overrides: ProposerConfig fields the release does not fix (``refine_reference_points``,
            ``score_powers``, ``top_k``).
    """
    path = Path(path)
    raw = read_release_config(path)
    sam2_config = str(raw.get("sam2_cfg", "sam2_hiera_l.yaml"))
    sam2 = build_sam2(sam2_config)
    proposer = ClassAgnosticProposer(proposer_config_from_release(raw, sam2.image_encoder.neck.d_model, **overrides))
    state = dict(read_release_weights(path))
    _drop_aliases(state, path)
    parts = load_release(proposer, state, PROPOSER_KEYS, path)
    encoder_state = parts["image_encoder"]
    if host_image_encoder is not None and _same_weights(host_image_encoder, encoder_state):
        return ProposerRelease(proposer, SAM2FeatureExtractor(host_image_encoder, image_size), shares_encoder=True)
    missing, unexpected = sam2.image_encoder.load_state_dict(encoder_state, strict=False)
    if missing or unexpected:
        raise CheckpointError(path, f"its vis_encoder does not match the image encoder of {sam2_config}", missing, unexpected)
    return ProposerRelease(proposer, SAM2FeatureExtractor(sam2.image_encoder, image_size), shares_encoder=False)


def _drop_aliases(state: dict, source: Path) -> None:
    """Remove the heads saved a second time under ``ddetr_transformer.decoder.``, after
    checking each copy equals its original (a copy that differs would be a different head)."""
    alias = re.compile(rf"^ddetr_transformer\.decoder\.({'|'.join(_ALIASED_HEADS)})\.")
    for key in [k for k in state if alias.match(k)]:
        original = "ddetr_transformer." + key[len("ddetr_transformer.decoder.") :]
        if original not in state:
            raise CheckpointError(source, f"{key} aliases {original}, which the release does not have")
        if not torch.equal(state[key], state[original]):
            raise CheckpointError(source, f"{key} should be the same tensor as {original}, but their values differ")
        del state[key]


def _same_weights(module: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    own = module.state_dict()
    return set(own) == set(state) and all(own[k].shape == state[k].shape and torch.equal(own[k].to(state[k]), state[k]) for k in own)


# ----------------------------------------------------------------------------- tiny releases


def write_proposer_release(path: str | Path, proposer: ClassAgnosticProposer, image_encoder: nn.Module, sam2_config: str) -> Path:
    """Save a proposer in the authors' release layout (their 4.41 key names, the aliased
    heads, ``vis_encoder``, the config as a diff against 4.41's defaults): what
    :func:`load_proposer_release` and the authors' own code read."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = proposer.config
    state = {f"vis_encoder.{k}": v for k, v in image_encoder.state_dict().items()}
    for key, value in proposer.state_dict().items():
        released = key.replace("transformer.", "ddetr_transformer.", 1) if key.startswith("transformer.") else key
        released = re.sub(r"\.mlp\.fc([12])\.", r".fc\1.", released)
        released = re.sub(r"\.self_attn\.o_proj\.", ".self_attn.out_proj.", released)
        state[released] = value
        if re.match(rf"^ddetr_transformer\.({'|'.join(_ALIASED_HEADS)})\.", released):
            state["ddetr_transformer.decoder." + released[len("ddetr_transformer.") :]] = value
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path / "pytorch_model.bin")
    layers = {theirs: getattr(config, ours) for ours, theirs in _CONFIG_FIELDS.items()}
    layers.update(decoder_attention_heads=config.attention_heads, decoder_ffn_dim=config.ffn_dim, decoder_n_points=config.n_points)
    layers.update(num_queries=config.num_queries, num_feature_levels=1, two_stage=True, with_box_refine=True)
    ddetr = {key: value for key, value in layers.items() if _DDETR_DEFAULTS.get(key) != value}
    ddetr["num_labels"] = 1
    release_config = {"model_type": "ddetr_sam2", "sam2_cfg": f"{sam2_config}.yaml", "zs_weight_path": None, "ddetr_cfg": ddetr}
    (path / "config.json").write_text(json.dumps(release_config, indent=1))
    return path


def tiny_proposer_config(feature_channels: int) -> ProposerConfig:
    """A proposer small enough to train on a CPU in minutes (1 + 2 layers, width 32)."""
    return ProposerConfig(feature_channels=feature_channels, d_model=32, encoder_layers=1, decoder_layers=2, attention_heads=2, ffn_dim=64, num_queries=20)


def write_tiny_proposer_release(path: str | Path, sam2_config: str = "sam2.1_hiera_tiny128", seed: int = 0) -> Path:
    """A random tiny proposer release in the authors' layout, for tests and CPU runs."""
    torch.manual_seed(seed)
    image_encoder = build_sam2(sam2_config).image_encoder
    proposer = ClassAgnosticProposer(tiny_proposer_config(image_encoder.neck.d_model))
    return write_proposer_release(path, proposer, image_encoder, sam2_config)
