"""GLUS (LISA-style LLaVA + CLIP + SAM2 with a memory bank) as a SPARROW host."""

from baselines.glus.config import GLUSConfig
from baselines.glus.model import GLUS
from sparrow_plugin.registry import register_host

__all__ = ["GLUS", "GLUSConfig"]

register_host("glus", GLUS.from_pretrained, check=GLUS.missing_downloads)
