"""GLUS rebuilt from transformers and sam2 classes, loading its released folder.

Architecture (GLUS-video/GLUS, ``model/GLUS.py`` on LISA/LLaVA)::

    4 context frames (one per quarter) + the query frame ─► CLIP ViT-L/14-224 (layer -2, no CLS)
      ─► 256 patches averaged 4 at a time in reading order (64) ─► mm_projector (Linear)
    LLaMA (LISA-7B) reads, llava_v1 style:
      SYSTEM USER: <im_start>[64]<im_end> x4\\nPlease finished the following tasks on the context
      frames above.\\n<im_start>[64]<im_end>\\nCan you segment the {query} in this frame? ASSISTANT: ...
    hidden state predicting [SEG] (after the final norm) ─► text_hidden_fcs ─► one SAM2 token
      (no padding point) ─► SAM 2.0 Hiera-L

GLUS answers one turn per query frame, each with its own [SEG]; SPARROW asks once, on the
conditioning frame, and lets SAM2's memory carry the target. GLUS's own memory bank (no
temporal encoding, no object pointers, memory encoded from the memory-conditioned
features) is not reproduced: SAM2's standard tracking step is used. CE is taken at the
[SEG] predictions only, as GLUS does. The release holds the LLM, the projector,
``text_hidden_fcs`` and SAM2 (under ``model.visual_model.``); CLIP is loaded from its own
folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from baselines.common import IMAGE_PLACEHOLDER, SAM2_STABILITY_FALLBACK, OneTokenProjection, clip_patch_features, resolve_path, text_hidden_fcs
from baselines.glus.config import GLUSConfig
from sparrow_plugin.frames import square_size
from sparrow_plugin.hosts.causal_lm import CausalLMHost, assemble_inputs, requested_frames, tsf_placeholders
from sparrow_plugin.hosts.release import (
    KeyMap,
    absent_paths,
    load_release,
    read_release_config,
    read_release_tokenizer,
    read_release_weights,
    require_downloads,
)
from sparrow_plugin.interfaces import DecoderSpec, FrameRequest, HostInputs, VisualFeatures

__all__ = ["GLUS", "RELEASE_KEYS"]

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER:"
)
CONTEXT_NOTE = "\nPlease finished the following tasks on the context frames above.\n"
QUESTION = "\nCan you segment the {query} in this frame? ASSISTANT:"
END = "</s>"
_CLIP_DOWNLOAD = "openai/clip-vit-large-patch14 from Hugging Face (config.json 'vision_tower', or host_args.clip_path)"
_RELEASE_DOWNLOAD = "the GLUS-S or GLUS-A release folder from Hugging Face, with its config.json"

RELEASE_KEYS = KeyMap(
    renames=(
        ("model.mm_projector.", "mm_projector."),
        ("model.text_hidden_fcs.", "text_hidden_fcs."),
        ("model.", "llm.model."),
        ("lm_head.", "llm.lm_head."),
    ),
    split=(("model.visual_model.", "sam2"),),
    # saved by transformers 4.31 and recomputed on load; CLIP is not in the release
    ignore=(r"rotary_emb\.inv_freq$", r"^model\.vision_tower\."),
)


class GLUS(CausalLMHost):
    """The GLUS host (see the module docstring)."""

    visual_placeholder_id = IMAGE_PLACEHOLDER
    default_lora_targets = ("q_proj", "v_proj")
    answer_template = "Sure, the segmentation result is {grounding}."
    no_target_answer = "There is no such object in this frame."

    def __init__(self, config: GLUSConfig, tokenizer, vision_tower: CLIPVisionModel, sam2_state: dict | None = None):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.llm = LlamaForCausalLM(LlamaConfig(**config.llm))
        self.vision_tower = vision_tower
        self.mm_projector = nn.Linear(config.mm_hidden_size, self.hidden_size)
        self.text_hidden_fcs = text_hidden_fcs(self.hidden_size, config.out_dim)
        self._sam2_state = sam2_state

    @classmethod
    def from_pretrained(cls, path: str | Path, clip_path: str | Path | None = None, sam2_config: str | None = None) -> "GLUS":
        """Load a release folder (GLUS-S / GLUS-A) strictly.

        Args:
            path: the release folder (config.json, weights, tokenizer).
            clip_path: CLIP ViT-L/14 folder (default: config.json's ``vision_tower``).
            sam2_config: SAM2 config of ``model.visual_model`` (default: SAM 2.0 Hiera-L).
        """
        path = Path(path)
        require_downloads("GLUS", cls.missing_downloads(path, clip_path))
        config = GLUSConfig.from_release(read_release_config(path))
        if sam2_config:
            config.sam2_config = sam2_config
        clip_folder = resolve_path(path, clip_path or config.vision_tower)
        host = cls(config, read_release_tokenizer(path), CLIPVisionModel.from_pretrained(clip_folder))
        parts = load_release(host, read_release_weights(path), RELEASE_KEYS, path, optional=(r"^vision_tower\.",))
        host._sam2_state = parts["sam2"]
        return host

    @classmethod
    def missing_downloads(cls, path: str | Path, clip_path: str | Path | None = None, sam2_config: str | None = None) -> list[str]:
        """What :meth:`from_pretrained` would miss with these arguments, loading nothing: the
        release and CLIP (where its config.json puts it, or the default while it is absent)."""
        path = Path(path)
        has_release = (path / "config.json").is_file()
        # the dataclass's class attribute is its default: where CLIP goes while the release is absent
        config = GLUSConfig.from_release(read_release_config(path)) if has_release else GLUSConfig
        clip_folder = resolve_path(path, clip_path or config.vision_tower)
        return absent_paths([(path if not has_release else None, _RELEASE_DOWNLOAD), (clip_folder, _CLIP_DOWNLOAD)])

    def adapter_modules(self) -> list[nn.Module]:
        return [self.mm_projector]

    def decoder_spec(self) -> DecoderSpec:
        return DecoderSpec(
            config=self.config.sam2_config,
            state_dict=self._sam2_state,
            prompt_layout="tokens_only",  # GLUS' prompt encoder: the [SEG] token alone
            multimask=False,
            overrides=SAM2_STABILITY_FALLBACK,
            # it calls SAM2's mask decoder directly in training: no gate, no presence loss
            gate_masks_in_training=False,
            presence_weight=0.0,
        )

    def seg_projection(self) -> nn.Module:
        return OneTokenProjection(self.text_hidden_fcs[0])

    def frame_request(self) -> FrameRequest:
        """Context frames (the middle of each quarter) then the query frame (frame 0), at
        CLIP's square size."""
        return FrameRequest(
            sample=partial(glus_frames, context=self.config.context_frames),
            size=partial(square_size, size=self.vision_tower.config.image_size),
        )

    def encode_video(self, frames: torch.Tensor, frame_indices: torch.Tensor | None = None) -> VisualFeatures:
        num_clips = frames.shape[0]
        picked, frame_ids = requested_frames(self.frame_request(), frames, frame_indices, self.config.context_frames + 1)
        images = picked.flatten(0, 1)
        patches = clip_patch_features(self.vision_tower, images, self.config.mm_vision_select_layer)  # (N, 256, 1024)
        pooled = nn.functional.avg_pool1d(patches.transpose(1, 2), 4, 4).transpose(1, 2)  # 4 neighbours in reading order
        tokens = self.mm_projector(pooled).view(num_clips, picked.shape[1], -1, self.hidden_size)
        grid = int(patches.shape[1] ** 0.5)
        dense = patches.view(num_clips, picked.shape[1], grid, grid, -1).permute(0, 1, 4, 2, 3)
        return VisualFeatures(llm_tokens=tokens.flatten(1, 2), dense=dense, dense_frames=frame_ids)

    def encode_regions(self, images: torch.Tensor) -> torch.Tensor:
        """TSF crops as GLUS reads a frame (CLIP tower, 4-neighbour pooling, ``mm_projector``),
        mean over the tokens."""
        patches = clip_patch_features(self.vision_tower, images, self.config.mm_vision_select_layer)
        pooled = nn.functional.avg_pool1d(patches.transpose(1, 2), 4, 4).transpose(1, 2)
        return self.mm_projector(pooled).mean(dim=1)

    def build_inputs(
        self,
        visual: VisualFeatures,
        queries: Sequence[str],
        answers: Sequence[str] | None = None,
        num_tsf_tokens: int = 0,
    ) -> HostInputs:
        tokenizer = self.tokenizer
        per_image = visual.llm_tokens.shape[1] // (self.config.context_frames + 1)
        start, end = tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
        image = [start] + [IMAGE_PLACEHOLDER] * per_image + [end]
        tsf = tsf_placeholders(self, num_tsf_tokens)

        def text(value: str) -> list[int]:
            return tokenizer(value, add_special_tokens=False).input_ids

        head = tokenizer(SYSTEM).input_ids + image * self.config.context_frames + text(CONTEXT_NOTE) + image + tsf
        seg = tokenizer.convert_tokens_to_ids(self.grounding_token_names["seg"])
        prompts, targets = [], []
        for index, query in enumerate(queries):
            prompts.append(head + text(QUESTION.format(query=query.rstrip("."))))
            if answers is not None:
                targets.append(text(" " + answers[index] + END))
        inputs = assemble_inputs(prompts, targets if answers is not None else None, tokenizer.pad_token_id, visual)
        if inputs.labels is not None:  # GLUS takes its cross-entropy at the [SEG] predictions only
            inputs.labels = inputs.labels.masked_fill(inputs.labels != seg, -100)
        return inputs


def glus_frames(total: int, context: int) -> list[int]:
    """GLUS' frames: the middle frame of each of ``context`` equal parts of the clip (its
    inference rule), then the query frame, frame 0."""
    edges = torch.linspace(0, total, context + 1).long()
    middle = torch.minimum((edges[:-1] + edges[1:]) // 2, (edges[1:] - 1).clamp(min=0))
    return middle.tolist() + [0]

