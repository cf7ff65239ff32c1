"""Collating dataset items into the :class:`~sparrow_plugin.interfaces.VideoBatch` models read."""

from __future__ import annotations

import torch

from sparrow_plugin.interfaces import VideoBatch

__all__ = ["collate_referring"]


def collate_referring(items: list[dict]) -> VideoBatch:
    """Stack frames and masks; keep per-sample metadata and full-size masks as lists."""
    _same_shape(items, "frames", "clips of different lengths", "use a fixed number of frames per sample or an evaluation batch size of 1")
    has_masks = all(item["masks"] is not None for item in items)
    has_llm_frames = all(item.get("llm_frames") is not None for item in items)
    if has_llm_frames:
        _same_shape(items, "llm_frames", "host frames of different sizes", "videos of other sizes need a batch size of 1 with this host")
    return VideoBatch(
        frames=torch.stack([item["frames"] for item in items]),
        masks=torch.stack([item["masks"] for item in items]) if has_masks else None,
        object_masks=[item["object_masks"] for item in items] if has_masks else None,
        full_masks=[item["full_masks"] for item in items] if has_masks else None,
        queries=[item["query"] for item in items],
        kinds=[item["kind"] for item in items],
        keys=[(item["video"], item["exp_id"]) for item in items],
        obj_ids=[item["obj_ids"] for item in items],
        frame_names=[item["frame_names"] for item in items],
        original_sizes=[item["original_size"] for item in items],
        indices=torch.tensor([item["index"] for item in items], dtype=torch.long),
        frame_indices=torch.stack([item["frame_indices"] for item in items]),
        has_target=torch.tensor([item["has_target"] for item in items]) if has_masks else None,
        cond_frames=torch.tensor([item["cond_frame"] for item in items], dtype=torch.long),
        object_boxes=[item["object_boxes"] for item in items] if has_masks else None,
        object_visible=[item["object_visible"] for item in items] if has_masks else None,
        llm_frames=torch.stack([item["llm_frames"] for item in items]) if has_llm_frames else None,
        llm_frame_indices=torch.stack([item["llm_frame_indices"] for item in items]) if has_llm_frames else None,
        tsf=[item["tsf_track"] for item in items] if all(item.get("tsf_track") is not None for item in items) else None,
    )


def _same_shape(items: list[dict], key: str, problem: str, advice: str) -> None:
    shapes = {tuple(item[key].shape) for item in items}
    if len(shapes) > 1:
        names = [f"{item['video']}:{tuple(item[key].shape)}" for item in items]
        raise ValueError(f"{problem} in one batch ({', '.join(names)}); {advice}")
