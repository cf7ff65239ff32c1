"""VideoGLaMM (Phi-3-mini + CLIP + InternVideo2 + SAM2) as a SPARROW host."""

from baselines.videoglamm.config import VideoGLaMMConfig
from baselines.videoglamm.model import VideoGLaMM
from sparrow_plugin.registry import register_host

__all__ = ["VideoGLaMM", "VideoGLaMMConfig"]

register_host("videoglamm", VideoGLaMM.from_pretrained, check=VideoGLaMM.missing_downloads)
