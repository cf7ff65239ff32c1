"""VideoGLaMM rebuilt from transformers and sam2 classes, loading its released folder.

Architecture (mbzuai-oryx/VideoGLaMM, ``VideoGLaMM/model``)::

    16 frames ─► CLIP ViT-L/14-336 (layer -2, no CLS) ─► image_mm_projector ─► pool 24²->12² ─┐ context
             └─► InternVideo2-1B, chunks of 4 frames ─► mm_projector ─► pool 16²->8² ─────────┴ video
    Phi-3-mini LLM reads: <|system|>…<|user|>\\n[context tokens][video tokens]\\n{question}<|end|>…
    hidden state predicting [SEG] (after the final norm) ─► text_hidden_fcs ─► SAM2 (Hiera-L)

Both projectors are ``Linear-GELU-Linear`` (``mlp2x_gelu``); the visual tokens replace a
span of placeholders (LLaVA's -200), so positions are the plain 1-D ones of the expanded
sequence. The release is a Hugging Face folder: the LLM under ``model.*`` and
``lm_head``, the projectors and ``text_hidden_fcs`` under ``model.``, SAM2 under
``model.visual_model.``; the towers come from their own checkpoints (the reference
rebuilds them from ``config.json`` at load time and ignores any copy in the folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, Phi3Config, Phi3ForCausalLM

from baselines.common import (
    IMAGE_PLACEHOLDER,
    SAM2_STABILITY_FALLBACK,
    OneTokenProjection,
    clip_patch_features,
    resolve_path,
    text_hidden_fcs,
)
from baselines.videoglamm.config import VideoGLaMMConfig
from baselines.videoglamm.towers import load_temporal_tower
from sparrow_plugin.frames import resize_frames, square_size, uniform_frames
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

__all__ = ["VideoGLaMM", "RELEASE_KEYS"]

SYSTEM = "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n"
QUESTION = "\n{question}<|end|>\n<|assistant|>\n"
END = "<|end|>"
_CLIP_DOWNLOAD = "openai/clip-vit-large-patch14-336 from Hugging Face (config.json 'image_mm_vision_tower', or host_args.clip_path)"
_TOWER_DOWNLOAD = "OpenGVLab/InternVideo2-Stage2_1B-224p-f4's checkpoint (config.json 'mm_vision_tower', in the release folder or from here)"
_RELEASE_DOWNLOAD = "the VideoGLaMM release folder, with its config.json (model links at github.com/mbzuai-oryx/VideoGLaMM)"
_TOWER_CLASS = (
    "the temporal tower's module class, not bundled (InternVideo2's research code): name a package.module.Class with "
    "from_checkpoint(path, width), see baselines/videoglamm/towers.py, or set 'temporal_tower_class' in the release's config.json"
)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

RELEASE_KEYS = KeyMap(
    renames=(
        ("model.mm_projector.", "mm_projector."),
        ("model.image_mm_projector.", "image_mm_projector."),
        ("model.text_hidden_fcs.", "text_hidden_fcs."),
        ("model.", "llm.model."),
        ("lm_head.", "llm.lm_head."),
    ),
    split=(
        ("model.visual_model.", "sam2"),
        # SPARROW's filtration head, in the authors' sparrow-finetune (absent from VideoGLaMM's own release)
        ("model.proposal_selector.", "filtration", "proposal_selector."),
        ("model.roi_helper.", "filtration", "roi_helper."),
        ("model.roi_fusion_gamma", "filtration", "roi_fusion_gamma"),
    ),
    # the reference rebuilds both towers from their own checkpoints and skips these copies
    ignore=(r"^model\.vision_tower\.", r"^model\.image_vision_tower\.", r"rotary_emb\.inv_freq$"),
)


class VideoGLaMM(CausalLMHost):
    """The VideoGLaMM host (see the module docstring)."""

    visual_placeholder_id = IMAGE_PLACEHOLDER
    default_lora_targets = ("qkv_proj",)  # the reference's "q_proj,v_proj" substring match hits Phi-3's fused qkv_proj
    answer_template = "Sure, it is {grounding}."
    no_target_answer = "There is no such object in the video."
    question_template = "What is {query} in this video? Please respond with segmentation masks."

    def __init__(
        self,
        config: VideoGLaMMConfig,
        tokenizer,
        spatial_tower: CLIPVisionModel,
        temporal_tower: nn.Module,
        sam2_state: dict | None = None,
    ):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.llm = Phi3ForCausalLM(Phi3Config(**config.llm))
        hidden = config.hidden_size
        self.spatial_tower, self.temporal_tower = spatial_tower, temporal_tower
        self.image_mm_projector = nn.Sequential(nn.Linear(config.image_mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.mm_projector = nn.Sequential(nn.Linear(config.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.text_hidden_fcs = text_hidden_fcs(hidden, config.out_dim)
        self._sam2_state = sam2_state
        self._plugin_states: dict[str, dict] = {}  # SPARROW plugins a release may hold (released_plugins)
        self.stop_token_id = tokenizer.convert_tokens_to_ids(END)
        for name, values in (("imagenet_mean", _IMAGENET_MEAN), ("imagenet_std", _IMAGENET_STD)):  # the temporal tower's
            self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        clip_path: str | Path | None = None,
        temporal_tower: str | nn.Module | None = None,
        sam2_config: str | None = None,
    ) -> "VideoGLaMM":
        """Load a release folder strictly.

        Args:
            path: the VideoGLaMM release (config.json, weights, tokenizer).
            clip_path: the CLIP ViT-L/14-336 folder (default: config.json's
                ``image_mm_vision_tower``, relative to the release or absolute).
            temporal_tower: the temporal tower, a module or its class name (default:
                config.json's ``temporal_tower_class``; see ``towers.py``).
            sam2_config: SAM2 config of ``model.visual_model`` (default: SAM 2.0 Hiera-L).
        """
        path = Path(path)
        require_downloads("VideoGLaMM", cls.missing_downloads(path, clip_path, temporal_tower))
        config = VideoGLaMMConfig.from_release(read_release_config(path))
        if sam2_config:
            config.sam2_config = sam2_config
        clip_folder = resolve_path(path, clip_path or config.image_mm_vision_tower)
        tower_checkpoint = resolve_path(path, config.mm_vision_tower)
        spatial_tower = CLIPVisionModel.from_pretrained(clip_folder)
        tower = load_temporal_tower(
            temporal_tower if temporal_tower is not None else config.temporal_tower_class, str(tower_checkpoint), config.mm_hidden_size
        )
        host = cls(config, read_release_tokenizer(path), spatial_tower, tower)
        parts = load_release(
            host, read_release_weights(path), RELEASE_KEYS, path, optional=(r"^spatial_tower\.", r"^temporal_tower\.")
        )
        host._sam2_state = parts["sam2"]
        host._plugin_states = {"filtration": parts["filtration"]} if parts["filtration"] else {}
        return host

    def released_plugins(self) -> dict[str, dict]:
        """SPARROW plugin weights the release holds (the authors' sparrow-finetune: the
        filtration head), by plugin name; {} for VideoGLaMM's own release."""
        return self._plugin_states

    @classmethod
    def missing_downloads(
        cls, path: str | Path, clip_path: str | Path | None = None, temporal_tower: str | nn.Module | None = None, sam2_config: str | None = None
    ) -> list[str]:
        """What :meth:`from_pretrained` would miss with these arguments, loading nothing: the
        release, CLIP, the InternVideo2 checkpoint (where the release's config.json puts them,
        or its defaults while the release is absent) and a temporal tower class."""
        path = Path(path)
        has_release = (path / "config.json").is_file()
        config = VideoGLaMMConfig.from_release(read_release_config(path)) if has_release else None
        located = config or VideoGLaMMConfig  # the dataclass's class attributes are its defaults
        clip_folder = resolve_path(path, clip_path or located.image_mm_vision_tower)
        tower_checkpoint = resolve_path(path, located.mm_vision_tower)
        missing = absent_paths([(path if not has_release else None, _RELEASE_DOWNLOAD), (clip_folder, _CLIP_DOWNLOAD), (tower_checkpoint, _TOWER_DOWNLOAD)])
        if temporal_tower is None and (config is None or config.temporal_tower_class is None):
            missing.append(f"host_args.temporal_tower: {_TOWER_CLASS}")
        return missing

    # ------------------------------------------------------------------ contract

    def adapter_modules(self) -> list[nn.Module]:
        return [self.image_mm_projector, self.mm_projector]

    def decoder_spec(self) -> DecoderSpec:
        # The video branch the reference is evaluated with: SAM2's padding points, then the
        # [SEG] token, three masks and the best predicted IoU; the decoder's stability fallback.
        return DecoderSpec(
            config=self.config.sam2_config,
            state_dict=self._sam2_state,
            prompt_layout="after_padding",
            multimask=True,
            overrides=SAM2_STABILITY_FALLBACK,
            # it calls SAM2's mask decoder directly in training: no gate, no presence loss
            gate_masks_in_training=False,
            presence_weight=0.0,
        )

    def seg_projection(self) -> nn.Module:
        return OneTokenProjection(self.text_hidden_fcs[0])

    def frame_request(self) -> FrameRequest:
        """16 frames evenly spaced over the whole clip, at CLIP's square size (the temporal
        tower resizes them to 224 itself)."""
        return FrameRequest(
            sample=partial(uniform_frames, count=self.config.num_frames),
            size=partial(square_size, size=self.spatial_tower.config.image_size),
        )

    def encode_video(self, frames: torch.Tensor, frame_indices: torch.Tensor | None = None) -> VisualFeatures:
        config = self.config
        num_clips = frames.shape[0]
        picked, frame_ids = requested_frames(self.frame_request(), frames, frame_indices, config.num_frames)
        images = picked.flatten(0, 1)

        patches = clip_patch_features(self.spatial_tower, images, config.mm_vision_select_layer)  # (B*F, P, 1024)
        context = _pool_tokens(self.image_mm_projector(patches), config.context_pool).view(num_clips, -1, config.hidden_size)

        video_in = ((resize_frames(images, (224, 224)) - self.imagenet_mean) / self.imagenet_std).view(-1, config.temporal_chunk, 3, 224, 224)
        video_tokens = self.temporal_tower(video_in).flatten(0, 1)  # (B*F, 256, width)
        video = _pool_tokens(self.mm_projector(video_tokens), config.video_pool).view(num_clips, -1, config.hidden_size)

        grid = int(patches.shape[1] ** 0.5)
        dense = patches.view(num_clips, config.num_frames, grid, grid, -1).permute(0, 1, 4, 2, 3)
        return VisualFeatures(llm_tokens=torch.cat([context, video], dim=1), dense=dense, dense_frames=frame_ids)

    def encode_regions(self, images: torch.Tensor) -> torch.Tensor:
        """The authors' TSF encoding: the CLIP image tower and ``image_mm_projector`` (no
        pooling), mean over the tokens."""
        patches = clip_patch_features(self.spatial_tower, images, self.config.mm_vision_select_layer)
        return self.image_mm_projector(patches).mean(dim=1)

    def build_inputs(
        self,
        visual: VisualFeatures,
        queries: Sequence[str],
        answers: Sequence[str] | None = None,
        num_tsf_tokens: int = 0,
    ) -> HostInputs:
        tokenizer = self.tokenizer
        placeholders = [IMAGE_PLACEHOLDER] * visual.llm_tokens.shape[1]
        tsf = tsf_placeholders(self, num_tsf_tokens)
        system = tokenizer(SYSTEM).input_ids  # with BOS, as the reference's first chunk
        prompts, targets = [], []
        for index, query in enumerate(queries):
            question = QUESTION.format(question=self.question_template.format(query=query))
            prompts.append(system + placeholders + tsf + tokenizer(question, add_special_tokens=False).input_ids)
            if answers is not None:
                targets.append(tokenizer(answers[index] + END, add_special_tokens=False).input_ids)
        return assemble_inputs(prompts, targets if answers is not None else None, tokenizer.pad_token_id, visual)


def _pool_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """(N, g*g, C) row-major grid -> (N, side*side, C) by adaptive average pooling."""
    grid = int(tokens.shape[1] ** 0.5)
    pooled = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid), side)
    return pooled.flatten(2).transpose(1, 2)
