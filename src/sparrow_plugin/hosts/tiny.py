"""The embedded default host: a pixel-grounded video LLM small enough to train on a CPU.

Its structure mirrors VideoGLaMM at toy scale, so the whole SPARROW path runs through the
same contract as the real hosts::

    frames ─► spatial ViT (timm) ─┬─► context frames' patch tokens ─► spatial projector ─┐
                                  └─► pooled tokens of every frame ─► temporal transformer
                                          ─► temporal projector ────────────────────────┴─► LLM
    LLM: Qwen2 architecture from a small transformers config
    tokenizer: word level (`tokenizers`), built from a benchmark's expressions
    SAM2: our 128 px config (``sam2.1_hiera_tiny128``)
    grounding head (optional): answer-position hidden state -> SAM2 prompt tokens, the
        tiny counterpart of VideoGLaMM's ``text_hidden_fcs`` (``seg_projection()``)

Everything starts random. :mod:`sparrow_plugin.pretraining` gives it the
pre-training real hosts arrive with, and saves it as a release folder that
:meth:`TinyVideoLLM.from_pretrained` reads::

    <folder>/config.json          TinyHostConfig fields
    <folder>/model.safetensors    host weights (vision, projectors, LLM, grounding head)
    <folder>/sam2.safetensors     the host's SAM2 weights (optional)
    <folder>/tokenizer.json ...   the word-level tokenizer (save_pretrained layout)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from sparrow_plugin.errors import CheckpointError, ConfigError
from sparrow_plugin.hosts.added_tokens import AddedTokenEmbedding, AddedTokenHead
from sparrow_plugin.frames import square_size, uniform_frames
from sparrow_plugin.hosts.causal_lm import CausalLMHost, assemble_inputs, clip_frame_indices
from sparrow_plugin.hosts.word_tokenizer import build_word_tokenizer as _build_word_tokenizer
from sparrow_plugin.interfaces import DecoderSpec, FrameRequest, HostInputs, VisualFeatures
from sparrow_plugin.modules import PromptProjection
from sparrow_plugin.registry import register_host

__all__ = ["TinyHostConfig", "TinyVideoLLM", "build_word_tokenizer", "PROMPT_WORDS"]

VISUAL_TOKEN = "<vis>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "</s>", VISUAL_TOKEN)
# Words of the tiny host's own prompt and answers, beyond those of the expressions.
PROMPT_WORDS = ("question", "answer", ":", "sure", "no", "target", ".")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TinyHostConfig:
    """Sizes of the tiny host. Defaults train on 2 CPU cores in minutes.

    Attributes:
        image_size: input frame size (square); patches of ``patch_size`` make the grid.
        vision_width, vision_depth, vision_heads: the spatial ViT.
        temporal_depth: layers of the temporal transformer.
        temporal_pool: the temporal branch reads the patch grid average-pooled by this.
        context_frames: clip frames whose full patch grids the LLM reads (negative
            indices count from the end).
        max_frames: longest clip the temporal branch's frame embedding covers.
        llm_frames: frames of the clip (evenly spaced) the temporal branch reads.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the Qwen2 LLM.
        sam2_config: the host's SAM2 config.
        grounding_head_tokens: SAM2 prompt tokens of the grounding head; 0 = no head.
        grounding_head_dim: their width (SAM2's prompt width).
    """

    image_size: int = 128
    patch_size: int = 16
    vision_width: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    temporal_depth: int = 1
    temporal_pool: int = 2
    context_frames: tuple[int, ...] = (0,)
    max_frames: int = 32
    llm_frames: int = 8
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    sam2_config: str = "sam2.1_hiera_tiny128"
    grounding_head_tokens: int = 0
    grounding_head_dim: int = 64

    def __post_init__(self):
        self.context_frames = tuple(self.context_frames)
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.grid % self.temporal_pool:
            raise ConfigError(f"the {self.grid}x{self.grid} patch grid must divide by temporal_pool {self.temporal_pool}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class TinyVideoLLM(CausalLMHost):
    """The tiny host (see the module docstring)."""

    default_lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    answer_template = "{grounding} ."  # [SEG] is predicted right after "answer :"
    no_target_answer = "no target ."

    def __init__(self, config: TinyHostConfig, tokenizer: PreTrainedTokenizerFast, sam2_state: dict | None = None):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.visual_placeholder_id = tokenizer.convert_tokens_to_ids(VISUAL_TOKEN)
        self._sam2_state = sam2_state
        self.spatial_encoder = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            num_classes=0,
            global_pool="",
            embed_dim=config.vision_width,
            depth=config.vision_depth,
            num_heads=config.vision_heads,
            mlp_ratio=2.0,
            class_token=False,
        )
        self.temporal_encoder = TemporalEncoder(config.vision_width, config.temporal_depth, config.vision_heads, config.max_frames)
        self.spatial_projector = _projector(config.vision_width, config.hidden_size)
        self.temporal_projector = _projector(config.vision_width, config.hidden_size)
        self.grounding_head = (
            PromptProjection(config.hidden_size, config.grounding_head_dim, config.grounding_head_tokens)
            if config.grounding_head_tokens
            else None
        )
        self.llm = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=len(tokenizer),
                hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_kv_heads,
                max_position_embeddings=1024,
                tie_word_embeddings=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=None,
            )
        )
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, vocabulary: Iterable[str], config: TinyHostConfig | None = None, seed: int = 0) -> "TinyVideoLLM":
        """A randomly initialised host whose tokenizer knows ``vocabulary``."""
        torch.manual_seed(seed)
        return cls(config or TinyHostConfig(), build_word_tokenizer(vocabulary))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TinyVideoLLM":
        """Load a folder written by :meth:`save_pretrained`; weights load strictly."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(path, "not a tiny host folder: config.json is missing (run `make tiny-host` or pass a folder written by save_pretrained)")
        known = {f.name for f in fields(TinyHostConfig)}
        raw = json.loads(config_file.read_text())
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(config_file, f"unknown config fields {unknown}; known: {sorted(known)}")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        sam2_file = path / "sam2.safetensors"
        host = cls(TinyHostConfig(**raw), tokenizer, load_file(sam2_file) if sam2_file.is_file() else None)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(weights, "host weights not found")
        missing, unexpected = host.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise CheckpointError(weights, "does not match the tiny host config", missing, unexpected)
        return host

    @classmethod
    def missing_downloads(cls, path: str | Path) -> list[str]:
        """What :meth:`from_pretrained` would miss: the release folder ``make tiny-host`` writes."""
        missing = [Path(path) / name for name in ("config.json", "model.safetensors") if not (Path(path) / name).is_file()]
        return [f"{path}: the tiny host (run `make tiny-host`, or pass a folder written by save_pretrained)"] if missing else []

    def save_pretrained(self, path: str | Path, sam2_state: dict | None = None) -> None:
        """Write the release folder (see the module docstring)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if any(isinstance(m, (AddedTokenEmbedding, AddedTokenHead)) for m in self.modules()):
            raise ConfigError("save the tiny host before grounding tokens are added: its release has none")
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        self.tokenizer.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, path / "model.safetensors")
        sam2_state = sam2_state if sam2_state is not None else self._sam2_state
        if sam2_state is not None:
            save_file({k: v.contiguous() for k, v in sam2_state.items()}, path / "sam2.safetensors")

    # ------------------------------------------------------------------ contract

    def adapter_modules(self) -> list[nn.Module]:
        return [self.spatial_projector, self.temporal_projector]

    def decoder_spec(self) -> DecoderSpec:
        # its SAM2 was pre-trained with a presence head; stage 1 keeps supervising it
        return DecoderSpec(config=self.config.sam2_config, state_dict=self._sam2_state, presence_weight=1.0)

    def seg_projection(self) -> nn.Module | None:
        return self.grounding_head

    def frame_request(self) -> FrameRequest:
        return FrameRequest(
            sample=partial(uniform_frames, count=self.config.llm_frames),
            size=partial(square_size, size=self.config.image_size),
        )

    def encode_video(self, frames: torch.Tensor, frame_indices: torch.Tensor | None = None) -> VisualFeatures:
        num_clips, num_frames = frames.shape[:2]
        grid, width = self.config.grid, self.config.vision_width
        images = frames.flatten(0, 1)
        if images.shape[-1] != self.config.image_size:
            images = F.interpolate(images, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        patches = self.spatial_encoder.forward_features((images - self.pixel_mean) / self.pixel_std)
        patches = patches.view(num_clips, num_frames, grid, grid, width)

        context = patches[:, [i % num_frames for i in self.config.context_frames]].flatten(1, 3)
        llm_frames = torch.linspace(0, num_frames - 1, min(self.config.llm_frames, num_frames)).round().long()
        pooled = F.avg_pool2d(
            patches[:, llm_frames].flatten(0, 1).permute(0, 3, 1, 2), self.config.temporal_pool
        )  # (B * T', C, g', g')
        pooled = pooled.flatten(2).transpose(1, 2).reshape(num_clips, len(llm_frames), -1, width)
        temporal = self.temporal_encoder(pooled)
        tokens = torch.cat([self.spatial_projector(context), self.temporal_projector(temporal)], dim=1)
        dense = patches.permute(0, 1, 4, 2, 3)  # (B, T, C, g, g), the whole frame resized
        return VisualFeatures(llm_tokens=tokens, dense=dense, dense_frames=clip_frame_indices(frames, frame_indices))

    def encode_regions(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.config.image_size or images.shape[-2] != self.config.image_size:
            images = F.interpolate(images, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        patches = self.spatial_encoder.forward_features((images - self.pixel_mean) / self.pixel_std)
        return self.spatial_projector(patches).mean(dim=1)

    def build_inputs(
        self,
        visual: VisualFeatures,
        queries: Sequence[str],
        answers: Sequence[str] | None = None,
        num_tsf_tokens: int = 0,
    ) -> HostInputs:
        tokenizer = self.tokenizer
        num_visual = visual.llm_tokens.shape[1]
        prefix = [VISUAL_TOKEN] * num_visual + [self.grounding_token_names["tsf"]] * num_tsf_tokens
        prompts, targets = [], []
        for index, query in enumerate(queries):
            prompt = prefix + ["question", ":"] + tokenizer.tokenize(query) + ["answer", ":"]
            prompts.append(tokenizer.convert_tokens_to_ids(prompt))
            if answers is not None:
                targets.append(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(answers[index])) + [tokenizer.eos_token_id])
        return assemble_inputs(prompts, targets if answers is not None else None, tokenizer.pad_token_id, visual)


class TemporalEncoder(nn.Module):
    """A transformer over the pooled patch tokens of all frames, with a learned frame embedding."""

    def __init__(self, width: int, depth: int, heads: int, max_frames: int):
        super().__init__()
        self.frame_embedding = nn.Parameter(torch.zeros(max_frames, width))
        nn.init.trunc_normal_(self.frame_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, N, C) pooled tokens per frame -> (B, T * N, C)."""
        num_frames = tokens.shape[1]
        if num_frames > self.frame_embedding.shape[0]:
            raise ConfigError(f"clip of {num_frames} frames exceeds max_frames={self.frame_embedding.shape[0]}")
        tokens = tokens + self.frame_embedding[:num_frames, None]
        return self.norm(self.blocks(tokens.flatten(1, 2)))


def build_word_tokenizer(vocabulary: Iterable[str]) -> PreTrainedTokenizerFast:
    """The tiny host's word-level tokenizer: ``vocabulary``'s words, the prompt words and
    the special tokens, ``<vis>`` being the visual placeholder."""
    return _build_word_tokenizer(list(vocabulary) + [" ".join(PROMPT_WORDS)], SPECIAL_TOKENS)


def _projector(width: int, hidden: int) -> nn.Sequential:
    """V→L adapter: MLP with GELU, as VideoGLaMM's ``mlp2x_gelu``."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))


register_host("tiny", TinyVideoLLM.from_pretrained, check=TinyVideoLLM.missing_downloads)
