"""Grounding plugins: L→V adapters for [SEG] and [BOX] (proposer and filtration come later)."""

from sparrow_plugin.grounding.adapters import GroundingAdapter

__all__ = ["GroundingAdapter"]
