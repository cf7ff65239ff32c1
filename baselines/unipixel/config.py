"""UniPixel's settings: its release's config.json (a Qwen2.5-VL config plus UniPixel's keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparrow_plugin.errors import ConfigError

__all__ = ["UniPixelConfig"]

_UNIPIXEL_KEYS = (
    "sam2_config", "sam2_image_size", "sam2_prompt_dim", "sam2_hidden_tokens", "ref_token_id", "seg_token_id", "mem_token_id",
    "num_frames", "min_pixels", "max_pixels", "second_per_grid_t",
)
# keys of the research code's training arguments, meaningless to the model
_TRAINING_KEYS = (
    "model_name_or_path", "base_model", "conv_type", "partial_checkpoint", "sam2_checkpoint", "sam2_batch_mode",
    "sam2_apply_postprocessing", "sam2_enable_decoder", "sam2_inference_mode", "sample_objects", "base_model_path",
)


@dataclass
class UniPixelConfig:
    """UniPixel (PolyU-ChenLab/UniPixel) as our shim builds it.

    Attributes:
        qwen: the Qwen2.5-VL part of config.json (transformers' Qwen2_5_VLConfig).
        sam2_config: SAM2 config of the release's ``sam2.*`` weights (SAM 2.1 Hiera-B+).
        sam2_image_size: SAM2 input size (the released models use 768).
        sam2_prompt_dim: SAM2's prompt width (256 for every official SAM2).
        sam2_hidden_tokens: prompt tokens per ``<|seg|>`` (2).
        ref_token_id, seg_token_id, mem_token_id: ids of UniPixel's added tokens.
        num_frames: frames the LLM reads (16, evenly spaced).
        min_pixels, max_pixels: pixel budget per frame for the LLM (UniPixel's eval:
            128 and 256 patches of 28x28).
        second_per_grid_t: seconds per temporal patch (2 frames at 2 fps: 1.0).
    """

    qwen: dict = field(default_factory=dict)
    sam2_config: str = "sam2.1_hiera_b+"
    sam2_image_size: int = 768
    sam2_prompt_dim: int = 256
    sam2_hidden_tokens: int = 2
    ref_token_id: int | None = None
    seg_token_id: int | None = None
    mem_token_id: int | None = None
    num_frames: int = 16
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 256 * 28 * 28
    second_per_grid_t: float = 1.0

    def __post_init__(self):
        if "vision_config" not in self.qwen:
            raise ConfigError("UniPixel config: the Qwen2.5-VL fields (vision_config, ...) are missing")
        self.sam2_config = self.sam2_config.rsplit("/", 1)[-1]  # the release says 'configs/sam2.1_hiera_b+'

    @classmethod
    def from_release(cls, raw: dict) -> "UniPixelConfig":
        qwen = {k: v for k, v in raw.items() if k not in _UNIPIXEL_KEYS and k not in _TRAINING_KEYS}
        qwen.pop("model_type", None)
        qwen.pop("architectures", None)
        return cls(qwen=qwen, **{k: raw[k] for k in _UNIPIXEL_KEYS if k in raw})
