"""SAM2 as SPARROW's mask decoder: building, strict loading, token prompts, tracking."""

from sparrow_plugin.decoder.build import SAM2_CONFIGS, build_sam2, load_sam2_weights, resolve_sam2_config
from sparrow_plugin.decoder.promptable_sam2 import PromptableSAM2
from sparrow_plugin.decoder.video_decoder import SAM2VideoDecoder

__all__ = [
    "SAM2_CONFIGS",
    "build_sam2",
    "load_sam2_weights",
    "resolve_sam2_config",
    "PromptableSAM2",
    "SAM2VideoDecoder",
]
