"""UniPixel (Qwen2.5-VL + SAM 2.1) as a SPARROW host."""

from baselines.unipixel.config import UniPixelConfig
from baselines.unipixel.model import UniPixel
from sparrow_plugin.registry import register_host

__all__ = ["UniPixel", "UniPixelConfig"]

register_host("unipixel", UniPixel.from_pretrained, check=UniPixel.missing_downloads)
