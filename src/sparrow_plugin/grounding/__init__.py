"""Grounding plugins: the L→V adapters for [SEG] and [BOX] (the box proposer and the
filtration head join them with stage 2)."""

from sparrow_plugin.modules import PromptProjection

__all__ = ["PromptProjection"]
