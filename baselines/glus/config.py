"""GLUS' settings: its release's config.json (a LISA/LLaVA config) plus what its code fixes."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparrow_plugin.errors import ConfigError

__all__ = ["GLUSConfig", "LLAMA_FIELDS"]

LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "rope_theta", "rope_scaling",
    "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "attention_bias",
)


@dataclass
class GLUSConfig:
    """GLUS (GLUS-video/GLUS) as our shim builds it.

    Attributes:
        llm: LLaMA fields of config.json (LISA-7B-v1: hidden 4096, vocabulary 32004).
        mm_hidden_size: CLIP width (ViT-L/14: 1024).
        mm_vision_select_layer: CLIP hidden state read (-2).
        vision_tower: the CLIP folder (``openai/clip-vit-large-patch14``, 224 px).
        out_dim: SAM2 prompt width of ``text_hidden_fcs``.
        context_frames: global context frames before the query frame (4).
        sam2_config: SAM2 config of ``model.visual_model`` (SAM 2.0 Hiera-L).
    """

    llm: dict = field(default_factory=dict)
    mm_hidden_size: int = 1024
    mm_vision_select_layer: int = -2
    vision_tower: str = "openai/clip-vit-large-patch14"
    out_dim: int = 256
    context_frames: int = 4
    sam2_config: str = "sam2_hiera_l"

    def __post_init__(self):
        if "hidden_size" not in self.llm:
            raise ConfigError("GLUS config: the LLaMA fields (hidden_size, ...) are missing")

    @classmethod
    def from_release(cls, raw: dict) -> "GLUSConfig":
        known = {name for name in cls.__dataclass_fields__ if name != "llm"}
        values = {k: raw[k] for k in known if k in raw}
        if "mm_vision_tower" in raw and "vision_tower" not in raw:
            values["vision_tower"] = raw["mm_vision_tower"]
        return cls(llm={k: raw[k] for k in LLAMA_FIELDS if k in raw}, **values)
