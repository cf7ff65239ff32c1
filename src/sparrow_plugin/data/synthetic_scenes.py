"""Scene-level view of the synthetic benchmark: every object in every frame, with its looks.

The MeViS layout is organised by expression. Pre-training the tiny host also needs what
is in a frame regardless of any expression: every object's mask, colour and shape (for
prompts and for dense colour/shape labels). Our generator records each object in
``meta_expressions.json`` under ``"objects"``; this module reads it through the same
checked loader as the benchmark (:class:`~sparrow_plugin.data.mevis.MeViSDataset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sparrow_plugin.data.mevis import MeViSDataset, read_json
from sparrow_plugin.data.synthetic import COLOURS, SHAPES
from sparrow_plugin.errors import DatasetError

__all__ = ["SceneObject", "SyntheticScenes", "SceneFrameDataset", "collate_scene_frames", "patch_labels"]

_COLOUR_INDEX = {name: index for index, name in enumerate(COLOURS)}


@dataclass(frozen=True)
class SceneObject:
    obj_id: int
    anno_id: int
    colour: int  # index into COLOURS
    shape: int  # index into SHAPES


class SyntheticScenes:
    """Objects of every video of one split, and their masks per frame.

    Args:
        root, split: the synthetic benchmark (written by ``sparrow data synth``).
        image_size: masks and frames are resized to this square size.
    """

    def __init__(self, root: str | Path, split: str, image_size: int):
        self.benchmark = MeViSDataset(root, split, image_size=image_size)
        if not self.benchmark.has_masks:
            raise DatasetError(self.benchmark.mask_path, "scene data needs the split's masks")
        meta = read_json(self.benchmark.meta_path, "expressions of the split")["videos"]
        self.image_size = image_size
        self.frames = {video: sorted(entry["frames"]) for video, entry in meta.items()}
        self.objects: dict[str, list[SceneObject]] = {}
        for video, entry in meta.items():
            if "objects" not in entry:
                raise DatasetError(
                    self.benchmark.meta_path,
                    f"video {video!r} has no 'objects' field: scene data comes from our synthetic benchmark only",
                )
            self.objects[video] = [
                SceneObject(int(obj_id), int(o["anno_id"]), _COLOUR_INDEX[o["colour"]], SHAPES.index(o["shape"]))
                for obj_id, o in entry["objects"].items()
            ]
        self.videos = sorted(self.objects)

    def frame(self, video: str, index: int) -> torch.Tensor:
        """(3, S, S) float in [0, 1]."""
        return self.benchmark.resize_frames(self.benchmark.read_frame(video, self.frames[video][index])[None])[0]

    def masks(self, video: str, index: int) -> torch.Tensor:
        """(K, S, S) bool visible masks of the video's K objects on one frame."""
        name = self.frames[video][index]
        rows = []
        for obj in self.objects[video]:
            rle = self.benchmark.mask_dict[str(obj.anno_id)][index]
            if rle is None:
                rows.append(torch.zeros(self.image_size, self.image_size, dtype=torch.bool))
                continue
            mask = self.benchmark.decode_rle(rle, obj.anno_id, name, rle["size"])
            resized = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(self.image_size,) * 2, mode="nearest")
            rows.append(resized[0, 0] > 0.5)
        return torch.stack(rows)

    def attributes(self, video: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,) colour and shape indices of the video's objects."""
        objects = self.objects[video]
        return torch.tensor([o.colour for o in objects]), torch.tensor([o.shape for o in objects])



def patch_labels(masks: torch.Tensor, values: torch.Tensor, grid: int, min_cover: float = 0.25) -> torch.Tensor:
    """Per patch of a ``grid`` x ``grid`` tiling, the value of the object covering it most.

    Args:
        masks: (K, S, S) bool object masks; values: (K,) long, one label per object.
    Returns:
        (grid, grid) long: ``values[k] + 1`` of the best-covering object, 0 where no object
        covers at least ``min_cover`` of the patch.
    """
    if masks.shape[0] == 0:
        return torch.zeros(grid, grid, dtype=torch.long)
    cover = F.avg_pool2d(masks.float()[None], masks.shape[-1] // grid)[0]  # (K, g, g)
    best, index = cover.max(dim=0)
    labels = values[index] + 1
    labels[best < min_cover] = 0
    return labels


class SceneFrameDataset(Dataset):
    """One item per (video, frame) of a split, with every object on it.

    Items: ``image`` (3, S, S) float; ``masks`` (K, S, S) bool; ``colours``, ``shapes``
    (K,) long.
    """

    def __init__(self, root: str | Path, split: str, image_size: int):
        self.scenes = SyntheticScenes(root, split, image_size)
        self.items = [(video, t) for video in self.scenes.videos for t in range(len(self.scenes.frames[video]))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        video, t = self.items[index]
        colours, shapes = self.scenes.attributes(video)
        return {"image": self.scenes.frame(video, t), "masks": self.scenes.masks(video, t), "colours": colours, "shapes": shapes}


def collate_scene_frames(items: list[dict]) -> dict:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "masks": [item["masks"] for item in items],
        "colours": [item["colours"] for item in items],
        "shapes": [item["shapes"] for item in items],
    }

