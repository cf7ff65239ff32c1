"""MeViS-layout referring video segmentation data (MeViS, ReVOS, LV-VIS, our synthetic set).

Reads the layout of ``shared/specs/datasets.md`` as shipped::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/meta_expressions.json
    <root>/<split>/mask_dict.json            (absent for MeViS `valid`)

One sample is one (video, expression). Structure is checked when the dataset is built
(every referenced annotation and frame file exists, no expression is empty); pixels are
checked when a sample is read (a JPEG that does not decode, an RLE whose size is not the
frame's). Either way the error is a :class:`~sparrow_plugin.errors.DatasetError` naming
the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from sparrow_plugin.errors import DatasetError

__all__ = ["ReferringExpression", "MeViSDataset", "MeViSObjectDataset", "normalize_expression", "read_json"]


@dataclass(frozen=True)
class ReferringExpression:
    """One (video, expression) unit of the MeViS protocol."""

    video: str
    exp_id: str
    text: str  # normalised: lower case, single spaces
    anno_ids: tuple[int, ...]  # empty for a no-target expression
    obj_ids: tuple[int, ...]  # the video's object ids, aligned with anno_ids
    kind: str  # "kind" field if the file has one (our synthetic set), else "all"
    frames: tuple[str, ...]  # sorted frame names, without extension


def normalize_expression(text: str) -> str:
    """Lower-case and collapse white space, as the MeViS evaluation does."""
    return re.sub(r"\s+", " ", text).strip().lower()


def read_json(path: Path, what: str):
    if not path.is_file():
        raise DatasetError(path, f"file not found (the {what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(path, f"not valid JSON: {error}") from None


class MeViSDataset(Dataset):
    """Referring expressions over videos in the MeViS layout.

    Args:
        root: dataset root (the folder holding ``<split>/``).
        split: ``train``, ``valid_u``, ``valid`` (no masks), ...
        image_size: frames are resized to ``image_size`` x ``image_size`` (the decoder's
            input; SAM2 also stretches frames to a square).
        num_frames: frames per sample; None reads every frame of the video (evaluation).
        random_frames: pick a random sorted subset of ``num_frames`` frames (training)
            instead of evenly spaced ones.

    Each item is a dict:
        ``frames`` float32 (T, 3, S, S) in [0, 1]; ``masks`` bool (T, S, S), the union of
        the referred objects resized to S (None without mask_dict); ``object_masks`` bool
        (K, T, S, S), one per referred object (None without mask_dict); ``full_masks``
        bool (T, H, W), the union at the original size (None without mask_dict);
        ``frame_indices`` long (T,); ``query`` str; ``kind`` str; ``video``, ``exp_id``
        str; ``obj_ids`` list[int]; ``frame_names`` list[str]; ``original_size`` (H, W).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 1024,
        num_frames: int | None = None,
        random_frames: bool = False,
    ):
        self.root, self.split = Path(root), split
        self.split_dir = self.root / split
        self.image_size, self.num_frames, self.random_frames = image_size, num_frames, random_frames
        self.meta_path = self.split_dir / "meta_expressions.json"
        self.mask_path = self.split_dir / "mask_dict.json"
        if not self.split_dir.is_dir():
            raise DatasetError(self.split_dir, "split folder not found (expected <root>/<split>/ in the MeViS layout)")
        self.mask_dict = read_json(self.mask_path, "masks of the split") if self.mask_path.exists() else None
        self.expressions = self._read_expressions(read_json(self.meta_path, "expressions of the split"))

    @property
    def has_masks(self) -> bool:
        return self.mask_dict is not None

    def kinds(self) -> list[str]:
        return sorted({e.kind for e in self.expressions})

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> dict:
        return self._load(self.expressions[index])

    def _load(self, expression: ReferringExpression) -> dict:
        frame_indices = self._choose_frames(len(expression.frames))
        frame_names = [expression.frames[i] for i in frame_indices]
        frames = np.stack([self.read_frame(expression.video, name) for name in frame_names])
        height, width = frames.shape[1:3]
        item = {
            "frames": self.resize_frames(frames),
            "masks": None,
            "object_masks": None,
            "full_masks": None,
            "frame_indices": torch.as_tensor(frame_indices, dtype=torch.long),
            "query": expression.text,
            "kind": expression.kind,
            "video": expression.video,
            "exp_id": expression.exp_id,
            "obj_ids": list(expression.obj_ids),
            "frame_names": frame_names,
            "original_size": (height, width),
        }
        if self.mask_dict is not None:
            objects = self._object_masks(expression, frame_indices, frame_names, (height, width))
            item["full_masks"] = objects.any(dim=0)
            size = (self.image_size,) * 2
            resized = F.interpolate(objects.flatten(0, 1)[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
            item["object_masks"] = resized.view(*objects.shape[:2], *size)
            item["masks"] = item["object_masks"].any(dim=0)
        return item

    # ------------------------------------------------------------------ structure checks

    def _read_expressions(self, meta) -> list[ReferringExpression]:
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
            raise DatasetError(self.meta_path, 'expected {"videos": {<video>: {"frames": [...], "expressions": {...}}}}')
        expressions = []
        for video, entry in meta["videos"].items():
            frames = entry.get("frames") if isinstance(entry, dict) else None
            if not frames:
                raise DatasetError(self.meta_path, f"video {video!r} lists no frames")
            frames = tuple(sorted(str(f) for f in frames))
            for name in frames:
                if not self._frame_path(video, name).is_file():
                    raise DatasetError(self._frame_path(video, name), f"missing frame {name!r} of video {video!r}")
            for exp_id, raw in (entry.get("expressions") or {}).items():
                expressions.append(self._read_expression(video, exp_id, raw, frames))
        if not expressions:
            raise DatasetError(self.meta_path, "no expressions found")
        return expressions

    def _read_expression(self, video: str, exp_id: str, raw, frames: tuple[str, ...]) -> ReferringExpression:
        where = f"video {video!r} expression {exp_id!r}"
        if not isinstance(raw, dict):
            raise DatasetError(self.meta_path, f"{where}: expected an object with 'exp' and 'anno_id'")
        text = normalize_expression(str(raw.get("exp") or ""))
        if not text:
            raise DatasetError(self.meta_path, f"{where}: empty expression text")
        anno_ids, obj_ids = _int_list(raw.get("anno_id", [])), _int_list(raw.get("obj_id", []))
        if anno_ids is None or obj_ids is None:
            raise DatasetError(self.meta_path, f"{where}: anno_id and obj_id must be integers, got {raw!r}")
        if len(obj_ids) != len(anno_ids):
            obj_ids = anno_ids  # some releases list obj_id differently; anno_id is what masks use
        if self.mask_dict is not None:
            for anno_id in anno_ids:
                masks = self.mask_dict.get(str(anno_id))
                if masks is None:
                    raise DatasetError(self.mask_path, f"no masks for anno_id {anno_id} ({where})")
                if len(masks) != len(frames):
                    raise DatasetError(
                        self.mask_path,
                        f"anno_id {anno_id} has {len(masks)} masks but video {video!r} has {len(frames)} frames",
                    )
        return ReferringExpression(video, str(exp_id), text, anno_ids, obj_ids, str(raw.get("kind", "all")), frames)

    # ------------------------------------------------------------------ pixels

    def _frame_path(self, video: str, name: str) -> Path:
        return self.split_dir / "JPEGImages" / video / f"{name}.jpg"

    def _choose_frames(self, total: int) -> list[int]:
        if self.num_frames is None or self.num_frames >= total:
            return list(range(total))
        if self.random_frames:
            return sorted(torch.randperm(total)[: self.num_frames].tolist())
        return np.linspace(0, total - 1, self.num_frames).round().astype(int).tolist()

    def read_frame(self, video: str, name: str) -> np.ndarray:
        """One frame as (H, W, 3) uint8; a file that does not decode raises DatasetError."""
        path = self._frame_path(video, name)
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(path, f"missing frame {name!r} of video {video!r}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise DatasetError(path, f"corrupt JPEG, cannot decode it ({error})") from None

    def resize_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) float in [0, 1]."""
        tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
        size = (self.image_size, self.image_size)
        if tensor.shape[-2:] == size:
            return tensor
        return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)

    def _object_masks(self, expression, frame_indices, frame_names, size) -> torch.Tensor:
        """(K, T, H, W) masks of the K referred objects (K = 0 for a no-target expression)."""
        masks = np.zeros((len(expression.anno_ids), len(frame_indices), *size), dtype=bool)
        for k, anno_id in enumerate(expression.anno_ids):
            per_frame = self.mask_dict[str(anno_id)]
            for t, (index, name) in enumerate(zip(frame_indices, frame_names)):
                rle = per_frame[index]
                if rle is not None:
                    masks[k, t] = self.decode_rle(rle, anno_id, name, size)
        return torch.from_numpy(masks)

    def decode_rle(self, rle, anno_id: int, frame_name: str, size) -> np.ndarray:
        """A mask_dict entry as (H, W) bool, checked against the frame size."""
        where = f"anno_id {anno_id}, frame {frame_name!r}"
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise DatasetError(self.mask_path, f"{where}: expected a COCO RLE {{'size': [H, W], 'counts': ...}} or null")
        if list(rle["size"]) != list(size):
            raise DatasetError(
                self.mask_path, f"{where}: RLE size {list(rle['size'])} disagrees with the frame size {list(size)}"
            )
        counts = rle["counts"]
        try:
            decoded = mask_utils.decode({"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts})
        except Exception as error:  # pycocotools raises bare exceptions for malformed counts
            raise DatasetError(self.mask_path, f"{where}: RLE does not decode ({error})") from None
        return decoded.astype(bool)


class MeViSObjectDataset(MeViSDataset):
    """One item per annotated object (video, anno_id) instead of per expression.

    For promptable-segmentation training (a box or click on one object, its masks through
    the clip); items have the keys of :class:`MeViSDataset`, ``query`` being the text of
    one expression that refers to the object.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.mask_dict is None:
            raise DatasetError(self.mask_path, "object-level data needs the split's mask_dict.json")
        objects: dict[tuple[str, int], ReferringExpression] = {}
        for expression in self.expressions:
            for anno_id in expression.anno_ids:
                objects.setdefault((expression.video, anno_id), expression)
        self.objects = [
            ReferringExpression(e.video, e.exp_id, e.text, (anno_id,), (e.obj_ids[e.anno_ids.index(anno_id)],), e.kind, e.frames)
            for (_, anno_id), e in objects.items()
        ]

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> dict:
        return self._load(self.objects[index])


def _int_list(value) -> tuple[int, ...] | None:
    values = value if isinstance(value, list) else [value]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        return None
