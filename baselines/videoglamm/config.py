"""VideoGLaMM's settings: what its release's config.json says, plus what its code fixes."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparrow_plugin.errors import ConfigError

__all__ = ["VideoGLaMMConfig", "PHI3_FIELDS"]

# config.json keys that belong to the Phi-3 LLM (transformers' Phi3Config)
PHI3_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "original_max_position_embeddings",
    "initializer_range", "rms_norm_eps", "rope_theta", "rope_scaling", "sliding_window", "bos_token_id",
    "eos_token_id", "pad_token_id", "tie_word_embeddings", "attention_dropout", "resid_pdrop", "embd_pdrop",
)


@dataclass
class VideoGLaMMConfig:
    """VideoGLaMM (mbzuai-oryx/VideoGLaMM) as our shim builds it.

    Attributes:
        llm: Phi-3 fields of the release's config.json (Phi-3-mini-4k: hidden 3072).
        mm_hidden_size: temporal tower width (InternVideo2-1B: 1408).
        image_mm_hidden_size: spatial tower width (CLIP ViT-L/14: 1024).
        mm_vision_select_layer: CLIP hidden state read (-2: the second-to-last layer).
        image_mm_vision_tower: the CLIP folder (``openai/clip-vit-large-patch14-336``).
        mm_vision_tower: the temporal tower's checkpoint (InternVideo2 ``.pt``).
        num_frames: frames the two towers read (uniformly sampled, last one repeated).
        context_pool, video_pool: token grids after projection (24x24 -> 12x12 for CLIP,
            16x16 -> 8x8 for InternVideo2).
        out_dim: SAM2 prompt width of ``text_hidden_fcs``.
        sam2_config: the SAM2 config of the release's ``visual_model`` (SAM 2.0 Hiera-L).
        temporal_chunk: frames per temporal-tower call (InternVideo2-f4: 4).
        temporal_tower_class: ``package.module.Class`` of the temporal tower (see
            ``towers.py``); None: it must be passed to ``from_pretrained``.
    """

    llm: dict = field(default_factory=dict)
    mm_hidden_size: int = 1408
    image_mm_hidden_size: int = 1024
    mm_vision_select_layer: int = -2
    image_mm_vision_tower: str = "openai/clip-vit-large-patch14-336"
    mm_vision_tower: str = "OpenGVLab/InternVideo2-Stage2_1B-224p-f4/InternVideo2-stage2_1b-224p-f4.pt"
    num_frames: int = 16
    context_pool: int = 12
    video_pool: int = 8
    out_dim: int = 256
    sam2_config: str = "sam2_hiera_l"
    temporal_chunk: int = 4
    temporal_tower_class: str | None = None

    def __post_init__(self):
        if "hidden_size" not in self.llm:
            raise ConfigError("VideoGLaMM config: the Phi-3 fields (hidden_size, ...) are missing")
        if self.num_frames % self.temporal_chunk:
            raise ConfigError(f"num_frames {self.num_frames} must be a multiple of temporal_chunk {self.temporal_chunk}")

    @classmethod
    def from_release(cls, raw: dict) -> "VideoGLaMMConfig":
        """From a release's config.json (unknown keys are the research code's and ignored)."""
        known = {name for name in cls.__dataclass_fields__ if name != "llm"}
        return cls(llm={k: raw[k] for k in PHI3_FIELDS if k in raw}, **{k: raw[k] for k in known if k in raw})

    @property
    def hidden_size(self) -> int:
        return self.llm["hidden_size"]
