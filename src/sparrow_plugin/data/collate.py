"""Collating dataset items into the :class:`~sparrow_plugin.interfaces.VideoBatch` models read."""

from __future__ import annotations

import torch

from sparrow_plugin.interfaces import VideoBatch

__all__ = ["collate_referring"]


def collate_referring(items: list[dict]) -> VideoBatch:
    """Stack frames and masks; keep per-sample metadata and full-size masks as lists."""
    lengths = {item["frames"].shape[0] for item in items}
    if len(lengths) > 1:
        names = [f"{item['video']}:{item['frames'].shape[0]}" for item in items]
        raise ValueError(
            f"clips of different lengths in one batch ({', '.join(names)}); "
            "use a fixed number of frames per sample or an evaluation batch size of 1"
        )
    has_masks = all(item["masks"] is not None for item in items)
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
    )
