"""UniPixel rebuilt from transformers' Qwen2.5-VL and sam2 classes, loading its release.

Architecture (PolyU-ChenLab/UniPixel, ``unipixel/model/qwen2_5_vl.py``)::

    16 frames ─► Qwen2.5-VL vision tower (+ merger) ─► <|video_pad|> tokens ─► Qwen2.5 LLM (mRoPE)
    last decoder layer's output *before* the final norm, at the position predicting <|seg|>
      ─► seg_head (RMSNorm-Linear-GELU-Linear) ─► 2 prompt tokens of 256
      ─► SAM 2.1 Hiera-B+ at 768 px, after its two padding points, prompted on frame 0, tracked

UniPixel's region modules (``<|ref|>`` point/box prompts and ``<|mem|>`` mask-pooled
object memory) are built so that the release loads strictly, but are not on SPARROW's
referring path. The release is a Hugging Face folder with the Qwen2.5-VL weights in the
layout transformers 4.5x saved (``visual.*``, ``model.*``, ``lm_head``; the newer
``model.visual.*`` / ``model.language_model.*`` is accepted too) and SAM2 under ``sam2.*``.
Positions follow the multimodal RoPE of the transformers version UniPixel was trained with
(the text after a video starts after the video's largest position; 5.x starts it earlier).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from baselines.common import CLIP_MEAN, CLIP_STD
from baselines.unipixel.config import UniPixelConfig
from sparrow_plugin.hosts.added_tokens import add_tokens_to_llm, added_token_parameters
from sparrow_plugin.frames import resize_frames, uniform_frames
from sparrow_plugin.hosts.causal_lm import finish_generation, pad_rows, requested_frames, splice, tsf_placeholders
from sparrow_plugin.hosts.generation import greedy_generate
from sparrow_plugin.hosts.release import (
    KeyMap,
    absent_paths,
    load_release,
    read_release_config,
    read_release_tokenizer,
    read_release_weights,
    require_downloads,
)
from sparrow_plugin.interfaces import DecoderSpec, EmbedEdit, FrameRequest, Generation, HostInputs, HostOutput, VisualFeatures

__all__ = ["UniPixel", "RELEASE_KEYS", "video_patches", "smart_resize", "mrope_positions"]

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
AFTER_VIDEO = "<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"
_RELEASE_DOWNLOAD = "the PolyU-ChenLab/UniPixel-3B (or -7B) release folder from Hugging Face, with its config.json"

RELEASE_KEYS = KeyMap(
    renames=(
        ("model.visual.", "qwen.model.visual."),  # transformers >= 4.52 layout
        ("model.language_model.", "qwen.model.language_model."),
        ("visual.", "qwen.model.visual."),  # the layout UniPixel's transformers saved
        ("model.", "qwen.model.language_model."),
        ("lm_head.", "qwen.lm_head."),
        ("seg_head.", "seg_head."),
        ("ref_encoder.", "ref_encoder."),
        ("ref_proj", "ref_proj"),
        ("tem_", "tem_"),
        ("msk_proj.", "msk_proj."),
    ),
    split=(("sam2.", "sam2"),),
)


class UniPixel(nn.Module):
    """The UniPixel host (see the module docstring)."""

    grounding_offset = -1  # the position predicting <|seg|>
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    answer_template = "Sure, it is {grounding}."
    no_target_answer = "There is no such object in the video."
    question_template = "Please segment the {query} in this video."

    def __init__(self, config: UniPixelConfig, tokenizer):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.grounding_token_names = {"box": "[BOX]", "seg": "<|seg|>", "tsf": "<TSF>"}
        self.qwen = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config.qwen))
        hidden, vision = self.hidden_size, self.qwen.config.vision_config
        sam_width, sam_grid = config.sam2_prompt_dim, config.sam2_image_size // 16
        self.seg_head = nn.Sequential(
            Qwen2RMSNorm(hidden, eps=1e-6), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, sam_width * config.sam2_hidden_tokens)
        )
        # region modules: in the release, unused by SPARROW's referring path
        self.ref_encoder = PromptEncoder(
            embed_dim=sam_width, image_embedding_size=(sam_grid, sam_grid), input_image_size=(config.sam2_image_size,) * 2, mask_in_chans=16
        )
        self.ref_proj_single = nn.Linear(2 * sam_width, 768)
        self.ref_proj_double = nn.Linear(3 * sam_width, 768)
        self.ref_proj = nn.Sequential(nn.GELU(), nn.Linear(2 * 768, hidden))
        self.tem_pe = _RandomPositions1D(128)
        self.tem_emb = nn.Embedding(1, sam_width)
        self.tem_proj = nn.Linear(sam_width, 768)
        merged = vision.hidden_size * vision.spatial_merge_size**2
        self.msk_proj = nn.Sequential(nn.Linear(merged, merged), nn.GELU(), nn.Linear(merged, hidden))
        self._sam2_state: dict | None = None
        self._pre_norm: list[torch.Tensor] = []
        self.language_model.norm.register_forward_pre_hook(lambda module, args: self._pre_norm.append(args[0]))
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str | Path, sam2_image_size: int | None = None) -> "UniPixel":
        """Load a release folder (UniPixel-3B / 7B) strictly; SAM2 comes from its ``sam2.*`` keys."""
        path = Path(path)
        require_downloads("UniPixel", cls.missing_downloads(path))
        config = UniPixelConfig.from_release(read_release_config(path))
        if sam2_image_size:
            config.sam2_image_size = sam2_image_size
        host = cls(config, read_release_tokenizer(path))
        tied = bool(host.qwen.config.tie_word_embeddings)
        parts = load_release(host, read_release_weights(path), RELEASE_KEYS, path, optional=(r"^qwen\.lm_head\.weight$",) if tied else ())
        host.qwen.tie_weights()
        host._sam2_state = parts["sam2"]
        return host

    @classmethod
    def missing_downloads(cls, path: str | Path, sam2_image_size: int | None = None) -> list[str]:
        """What :meth:`from_pretrained` would miss, loading nothing: the release (SAM2 is in it)."""
        path = Path(path)
        return absent_paths([(path if not (path / "config.json").is_file() else None, _RELEASE_DOWNLOAD)])

    # ------------------------------------------------------------------ contract

    @property
    def language_model(self) -> nn.Module:
        return self.qwen.model.language_model

    @property
    def hidden_size(self) -> int:
        return self.qwen.config.text_config.hidden_size

    def adapter_modules(self) -> list[nn.Module]:
        return [self.qwen.model.visual.merger]

    def decoder_spec(self) -> DecoderSpec:
        return DecoderSpec(
            config=self.config.sam2_config,
            state_dict=self._sam2_state,
            prompt_layout="after_padding",  # [not-a-point, not-a-point, h0, h1], as UniPixel's prompt encoder
            multimask=True,
            overrides=(f"++model.image_size={self.config.sam2_image_size}",),
            # UniPixel gates masks at inference only and supervises presence (BCE, as
            # heavy as its DICE term)
            gate_masks_in_training=False,
            presence_weight=1.0,
        )

    def seg_projection(self) -> nn.Module:
        return _Tokens(self.seg_head, self.config.sam2_hidden_tokens)

    def add_tokens(self, tokens: Sequence[str]) -> dict[str, int]:
        ids, _ = add_tokens_to_llm(self.qwen, self.tokenizer, tokens)
        return ids

    def new_token_parameters(self) -> list[nn.Parameter]:
        return added_token_parameters(self.qwen)

    @property
    def _llm_frame_count(self) -> int:
        return self.config.num_frames + self.config.num_frames % 2  # Qwen pairs frames

    @property
    def context_length(self) -> int | None:
        """Tokens the LLM's positions reach (prompt and answer together)."""
        return getattr(self.qwen.config.get_text_config(), "max_position_embeddings", None)

    def frame_request(self) -> FrameRequest:
        """16 frames evenly spaced over the whole clip, at Qwen2-VL's size for the video's
        own aspect ratio (``smart_resize``), resized bicubic as its processor does."""
        config = self.config
        return FrameRequest(
            sample=partial(uniform_frames, count=self._llm_frame_count),
            size=partial(smart_resize, min_pixels=config.min_pixels, max_pixels=config.max_pixels),
            interpolation="bicubic",
        )

    def video_inputs(self, frames: torch.Tensor, frame_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What Qwen2.5-VL's processor makes of the clips: (patch rows of all clips,
        (B, 3) grid_thw, (B, T) the clip frames read)."""
        vision, request = self.qwen.config.vision_config, self.frame_request()
        picked, frame_ids = requested_frames(request, frames, frame_indices, self._llm_frame_count)
        height, width = request.size(frames.shape[-2], frames.shape[-1])
        clips = resize_frames(picked, (height, width), request.interpolation)
        clips = (clips - self.pixel_mean) / self.pixel_std
        patches, grids = zip(*(video_patches(clip, vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) for clip in clips))
        return torch.cat(patches), torch.stack(grids), frame_ids

    def encode_video(self, frames: torch.Tensor, frame_indices: torch.Tensor | None = None) -> VisualFeatures:
        vision = self.qwen.config.vision_config
        patches, grid_thw, frame_ids = self.video_inputs(frames, frame_indices)
        merged = self.qwen.model.get_video_features(patches, grid_thw).pooler_output
        tokens = torch.stack(list(merged))  # (B, N, hidden), raster order
        grid_t, grid_h, grid_w = grid_thw[0].tolist()
        side = vision.spatial_merge_size
        dense = tokens.view(len(tokens), grid_t, grid_h // side, grid_w // side, -1).permute(0, 1, 4, 2, 3)
        first_of_pairs = frame_ids[:, :: vision.temporal_patch_size]
        return VisualFeatures(llm_tokens=(tokens, grid_thw), dense=dense, dense_frames=first_of_pairs)

    def encode_regions(self, images: torch.Tensor) -> torch.Tensor:
        """TSF crops as Qwen2.5-VL reads an image (the crop repeated over one temporal patch,
        its vision tower and merger), mean over the merged tokens."""
        vision = self.qwen.config.vision_config
        crops = (images - self.pixel_mean) / self.pixel_std
        still = crops[:, None].expand(-1, vision.temporal_patch_size, -1, -1, -1)
        patches, grids = zip(*(video_patches(clip, vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) for clip in still))
        merged = self.qwen.model.get_video_features(torch.cat(patches), torch.stack(grids)).pooler_output
        return torch.stack([tokens.mean(dim=0) for tokens in merged])

    def build_inputs(
        self,
        visual: VisualFeatures,
        queries: Sequence[str],
        answers: Sequence[str] | None = None,
        num_tsf_tokens: int = 0,
    ) -> HostInputs:
        tokenizer = self.tokenizer
        tokens, grid_thw = visual.llm_tokens
        video = [self.qwen.config.video_token_id] * tokens.shape[1]
        tsf = tsf_placeholders(self, num_tsf_tokens)
        system = tokenizer(SYSTEM, add_special_tokens=False).input_ids
        prompts, targets = [], []
        for index, query in enumerate(queries):
            question = AFTER_VIDEO.format(question=self.question_template.format(query=_strip_article(query)))
            prompts.append(system + video + tsf + tokenizer(question, add_special_tokens=False).input_ids)
            if answers is not None:
                targets.append(tokenizer(answers[index] + END, add_special_tokens=False).input_ids)
        device = tokens.device
        if answers is None:
            ids, mask = pad_rows(prompts, tokenizer.pad_token_id, left=True)
            labels = None
        else:
            ids, mask = pad_rows([p + t for p, t in zip(prompts, targets)], tokenizer.pad_token_id, left=False)
            labels = pad_rows([[-100] * len(p) + t for p, t in zip(prompts, targets)], -100, left=False)[0].to(device)
        ids, mask = ids.to(device), mask.to(device)
        positions = mrope_positions(ids, mask, self.qwen.config.video_token_id, grid_thw, self._time_interval())
        return HostInputs(input_ids=ids, attention_mask=mask, labels=labels, visual=visual, extras={"position_ids": positions})

    def forward(self, inputs: HostInputs, edits: Sequence[EmbedEdit] = ()) -> HostOutput:
        self._pre_norm.clear()
        out = self.language_model(
            inputs_embeds=self._embed(inputs, edits),
            attention_mask=inputs.attention_mask,
            position_ids=inputs.extras["position_ids"],
            use_cache=False,
        )
        return HostOutput(logits=self.qwen.lm_head(out.last_hidden_state), grounding_states=self._pre_norm.pop())

    def generate(self, inputs: HostInputs, edits: Sequence[EmbedEdit] = (), max_new_tokens: int = 32) -> Generation:
        stop = self.tokenizer.convert_tokens_to_ids(END)
        result = greedy_generate(
            self._lm_step,
            inputs_embeds=self._embed(inputs, edits),
            attention_mask=inputs.attention_mask,
            position_ids=inputs.extras["position_ids"],
            eos_token_id=stop,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens,
        )
        positions = inputs.extras["position_ids"]
        steps = torch.arange(1, result.new_ids.shape[1] + 1, device=positions.device)
        new_positions = positions[..., -1:] + steps  # text after the prompt: one more in every row
        extras = {"position_ids": torch.cat([positions, new_positions], dim=-1)}
        return finish_generation(inputs, result, self.grounding_offset, self.tokenizer, extras=extras)

    # ------------------------------------------------------------------ internals

    def _lm_step(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, past_key_values=None):
        """One cached call for generation: the head on the last position only; the
        grounding states are the last layer's output before the final norm."""
        self._pre_norm.clear()
        out = self.language_model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, use_cache=True,
        )
        states = self._pre_norm.pop()
        return self.qwen.lm_head(out.last_hidden_state[:, -1]), states, out.past_key_values

    def _embed(self, inputs: HostInputs, edits: Sequence[EmbedEdit]) -> torch.Tensor:
        embeds = self.qwen.get_input_embeddings()(inputs.input_ids)
        tokens, _ = inputs.visual.llm_tokens
        embeds = splice(embeds, inputs.input_ids == self.qwen.config.video_token_id, tokens, "video tokens")
        for edit in edits:
            embeds = splice(embeds, inputs.input_ids == edit.token_id, edit.values, f"edit of token {edit.token_id}")
        return embeds

    def _time_interval(self) -> float:
        return self.qwen.config.vision_config.tokens_per_second * self.config.second_per_grid_t


class _Tokens(nn.Module):
    """``seg_head`` seen as an L→V projection to ``count`` prompt tokens of 256."""

    def __init__(self, head: nn.Module, count: int):
        super().__init__()
        self.head, self.count = head, count

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(states).view(states.shape[0], self.count, -1)


class _RandomPositions1D(nn.Module):
    """UniPixel's 1-D random Fourier encoding of frame indices (its buffer is in the release)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(1, num_features))

    def forward(self, positions: torch.Tensor, size: int) -> torch.Tensor:
        """positions (N,) in frames of a clip of ``size`` -> (N, 2 * num_features)."""
        coords = 2 * (positions.float() / max(size - 1, 1)) - 1
        angles = 2 * math.pi * coords[:, None] @ self.positional_encoding_gaussian_matrix
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """Qwen2-VL's frame size rule: multiples of ``factor``, area within [min, max] pixels."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = max(factor, math.floor(height / scale / factor) * factor), max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def video_patches(clip: torch.Tensor, patch: int, temporal_patch: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's patch layout of one normalised clip.

    Args:
        clip: (T, 3, H, W) with T a multiple of ``temporal_patch`` and H, W of ``patch * merge``.
    Returns:
        (grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch) patches, ordered so
        that each ``merge`` x ``merge`` group of neighbours is contiguous, and (grid_t,
        grid_h, grid_w).
    """
    frames, channels, height, width = clip.shape
    grid_t, grid_h, grid_w = frames // temporal_patch, height // patch, width // patch
    blocks = clip.reshape(grid_t, temporal_patch, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    blocks = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-group, w-group, h-in, w-in, c, tp, ph, pw
    flat = blocks.reshape(grid_t * grid_h * grid_w, channels * temporal_patch * patch * patch)
    return flat, torch.tensor([grid_t, grid_h, grid_w], device=clip.device)


def mrope_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, video_token_id: int, grid_thw: torch.Tensor, time_interval: float, merge: int = 2
) -> torch.Tensor:
    """(3, B, L) multimodal RoPE positions of prompts holding one video each.

    Text positions count up by one in all three rows; the video's are (time, row, column)
    of its merged grid, offset by the text before it; the text after it continues from the
    video's largest position plus one (as in the transformers version UniPixel was trained
    with). Padding gets position 0.
    """
    positions = torch.zeros(3, *input_ids.shape, dtype=torch.long, device=input_ids.device)
    for row, (ids, mask, grid) in enumerate(zip(input_ids, attention_mask.bool(), grid_thw)):
        real = ids[mask]
        is_video = (real == video_token_id).nonzero().flatten()
        out = torch.zeros(3, len(real), dtype=torch.long, device=ids.device)
        start, end = int(is_video[0]), int(is_video[-1]) + 1
        out[:, :start] = torch.arange(start, device=ids.device)
        t, h, w = int(grid[0]), int(grid[1]) // merge, int(grid[2]) // merge
        grid_t, grid_h, grid_w = torch.meshgrid(
            (torch.arange(t, device=ids.device) * time_interval).long(), torch.arange(h, device=ids.device), torch.arange(w, device=ids.device), indexing="ij"
        )
        out[:, start:end] = torch.stack([grid_t.flatten(), grid_h.flatten(), grid_w.flatten()]) + start
        after = int(out[:, start:end].max()) + 1
        out[:, end:] = torch.arange(after, after + len(real) - end, device=ids.device)
        positions[:, row, mask] = out
    return positions


def _strip_article(query: str) -> str:
    words = query.split()
    return " ".join(words[1:]) if len(words) > 1 and words[0] in ("the", "a", "an") else query
