"""MeViS-layout referring video segmentation data (MeViS, ReVOS, LV-VIS, our synthetic set).

Reads the MeViS layout as shipped (``docs/data_formats.md``)::

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
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from torchvision.ops import masks_to_boxes

from sparrow_plugin.errors import DatasetError
from sparrow_plugin.frames import pixels_of, resize_frames, uniform_frames
from sparrow_plugin.interfaces import FrameRequest
from sparrow_plugin.tsf.tracks import Track, annotation_track

__all__ = ["ReferringExpression", "MeViSDataset", "MeViSObjectDataset", "normalize_expression", "normalised_boxes", "read_json", "is_json_int", "is_json_number", "rle_runs"]


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


def is_json_int(value) -> bool:
    """An integer as JSON gives it (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_number(value) -> bool:
    """A finite integer or float as JSON gives it (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        random_frames: training sampling: a frame where the target is visible is drawn at
            random (the frame SAM2 is prompted on), and the sample is a random sorted
            subset of ``num_frames`` frames that holds it; otherwise evenly spaced frames.
        frame_request: the host's :class:`~sparrow_plugin.interfaces.FrameRequest`; its
            frames are read from the whole clip, apart from the decoder's, and returned as
            ``llm_frames``. None: no host frames.
        tsf_tracks: the target's track on the host's frames, for TSF: ``annotation`` (from
            the split's masks, :func:`~sparrow_plugin.tsf.tracks.annotation_track`), a
            mapping ``"<video>/<exp_id>" -> Track`` over every clip frame (a TSF cache), or
            None (no track).
        require_frames: False reads only the annotations (scoring a prediction folder needs
            no JPEGImages).

    Each item is a dict:
        ``frames`` float32 (T, 3, S, S) in [0, 1]; ``masks`` bool (T, S, S), the union of
        the referred objects resized to S (None without mask_dict); ``object_masks`` bool
        (K, T, S, S), one per referred object (None without mask_dict); ``full_masks``
        bool (T, H, W), the union at the original size (None without mask_dict);
        ``object_boxes`` float (K, T, 4) normalised xyxy and ``object_visible`` bool
        (K, T) (None without mask_dict); ``has_target`` bool, an object is visible
        somewhere in the whole video (None without mask_dict); ``cond_frame`` int, the
        position in ``frames`` of the frame SAM2 is prompted on in training;
        ``frame_indices`` long (T,); ``llm_frames`` float32 (T_h, 3, h, w) and
        ``llm_frame_indices`` long (T_h,), or None; ``tsf_track`` a
        :class:`~sparrow_plugin.tsf.tracks.Track` on the host's frames, or None;
        ``index`` int, the sample's index;
        ``query`` str; ``kind`` str; ``video``, ``exp_id`` str; ``obj_ids`` list[int];
        ``frame_names`` list[str]; ``original_size`` (H, W).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 1024,
        num_frames: int | None = None,
        random_frames: bool = False,
        frame_request: FrameRequest | None = None,
        tsf_tracks: str | dict | None = None,
        require_frames: bool = True,
    ):
        self.root, self.split = Path(root), split
        self.require_frames = require_frames
        self.tsf_tracks = tsf_tracks
        paths = self.layout_paths(self.root, split)
        self.frames_dir, self.meta_path, self.mask_path = paths["frames"], paths["expressions"], paths["masks"]
        self.split_dir = self.frames_dir.parent
        self.image_size, self.num_frames, self.random_frames = image_size, num_frames, random_frames
        self.frame_request = frame_request
        self._rng: tuple[int, np.random.Generator] | None = None
        self._visible_cache: dict[int, np.ndarray] = {}
        self._sizes: dict[str, tuple[int, int]] | None = None
        if not self.split_dir.is_dir():
            raise DatasetError(self.split_dir, f"split folder not found (expected {self.frames_dir} in this layout)")
        self.mask_dict = self._read_annotations()
        self.expressions = self._read_expressions(read_json(self.meta_path, "expressions of the split"))

    @classmethod
    def layout_paths(cls, root: Path, split: str) -> dict[str, Path]:
        """Where a split's parts lie: ``frames`` (``<video>/<frame>.jpg`` below it),
        ``expressions`` (the expressions JSON) and ``masks`` (absent for a split without
        masks)."""
        return {"frames": root / split / "JPEGImages", "expressions": root / split / "meta_expressions.json", "masks": root / split / "mask_dict.json"}

    def _read_annotations(self):
        """The split's ``mask_dict.json``, None for a split without masks."""
        return read_json(self.mask_path, "masks of the split") if self.mask_path.exists() else None

    def ground_truth(self, expression: ReferringExpression) -> np.ndarray | None:
        """(T, H, W) bool union of the referred objects on every frame, at the annotation's
        size; None for a no-target expression of a video whose size nothing records (no RLE
        of any of its objects, no frame on disk), whose ground truth is empty at any size."""
        size = self.frame_size(expression.video)
        if size is None:
            return None
        objects = self._object_masks(expression, range(len(expression.frames)), expression.frames, size)
        return objects.any(dim=0).numpy() if len(objects) else np.zeros((len(expression.frames), *size), dtype=bool)

    def frame_size(self, video: str) -> tuple[int, int] | None:
        """(H, W) of a video's frames: from the RLE of any of its annotated objects, else
        from its first frame on disk, else None."""
        if self._sizes is None:
            self._sizes = {}
            for expression in self.expressions:
                for anno_id in expression.anno_ids:
                    rle = next((r for r in self.mask_dict[str(anno_id)] if r is not None), None) if self.mask_dict else None
                    if rle is not None and isinstance(rle, dict) and isinstance(rle.get("size"), list):
                        self._sizes.setdefault(expression.video, tuple(rle["size"]))
        if video not in self._sizes:
            first = next(e for e in self.expressions if e.video == video).frames[0]
            path = self._frame_path(video, first)
            if path.is_file():
                with Image.open(path) as image:
                    self._sizes[video] = (image.height, image.width)
        return self._sizes.get(video)

    @property
    def has_masks(self) -> bool:
        return self.mask_dict is not None

    def kinds(self) -> list[str]:
        return sorted({e.kind for e in self.expressions})

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> dict:
        return self._load(self.expressions[index], index)

    def _load(self, expression: ReferringExpression, index: int) -> dict:
        total = len(expression.frames)
        visible = self.visible_frames(expression) if self.has_masks else None
        frame_indices, cond_frame = self._choose_frames(total, visible)
        llm_indices = self.frame_request.sample(total) if self.frame_request is not None else []
        # every frame read once, whether the decoder, the host or both use it
        pixels = {i: self.read_frame(expression.video, expression.frames[i]) for i in sorted({*frame_indices, *llm_indices})}
        frame_names = [expression.frames[i] for i in frame_indices]
        frames = np.stack([pixels[i] for i in frame_indices])
        height, width = frames.shape[1:3]
        item = {
            "frames": self.resize_frames(frames),
            "masks": None,
            "object_masks": None,
            "full_masks": None,
            "object_boxes": None,
            "object_visible": None,
            "has_target": None if visible is None else bool(visible.any()),
            "cond_frame": cond_frame,
            "index": index,
            "frame_indices": torch.as_tensor(frame_indices, dtype=torch.long),
            "llm_frames": None,
            "llm_frame_indices": None,
            "query": expression.text,
            "kind": expression.kind,
            "video": expression.video,
            "exp_id": expression.exp_id,
            "obj_ids": list(expression.obj_ids),
            "frame_names": frame_names,
            "original_size": (height, width),
        }
        if self.frame_request is not None:
            item["llm_frames"] = self._host_frames(pixels, llm_indices, frame_indices, item["frames"], (height, width))
            item["llm_frame_indices"] = torch.as_tensor(llm_indices, dtype=torch.long)
        item["tsf_track"] = self._tsf_track(expression, llm_indices) if self.tsf_tracks is not None else None
        if self.has_masks:
            objects = self._object_masks(expression, frame_indices, frame_names, (height, width))
            item["object_visible"] = objects.flatten(2).any(dim=-1)
            item["object_boxes"] = normalised_boxes(objects)
            item["full_masks"] = objects.any(dim=0)
            size = (self.image_size,) * 2
            resized = F.interpolate(objects.flatten(0, 1)[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
            item["object_masks"] = resized.view(*objects.shape[:2], *size)
            item["masks"] = item["object_masks"].any(dim=0)
        return item

    def annotation_boxes(self, expression: ReferringExpression, frame_indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, T, 4) normalised xyxy boxes (pixel edges, zeros where unseen) and (K, T) bool
        visibility of the K referred objects on the frames (default: all), read from the
        RLEs without decoding them."""
        if self.mask_dict is None:
            raise DatasetError(self.mask_path, "object boxes come from the split's masks, and it has none")
        frame_indices = list(range(len(expression.frames))) if frame_indices is None else frame_indices
        boxes = torch.zeros(len(expression.anno_ids), len(frame_indices), 4)
        for k, anno_id in enumerate(expression.anno_ids):
            per_frame = self.mask_dict[str(anno_id)]
            for t, index in enumerate(frame_indices):
                if per_frame[index] is None:
                    continue
                rle = self._checked_rle(per_frame[index], f"anno_id {anno_id}, frame {expression.frames[index]!r}")
                if int(mask_utils.area(rle)) == 0:
                    continue
                x, y, w, h = mask_utils.toBbox(rle).tolist()
                height, width = rle["size"]
                boxes[k, t] = torch.tensor([x / width, y / height, (x + w) / width, (y + h) / height])
        return boxes, (boxes[..., 2:] > boxes[..., :2]).all(dim=-1)

    def _tsf_track(self, expression: ReferringExpression, llm_indices: list[int]) -> Track:
        """The target's track on the host's frames (``tsf_tracks``)."""
        if not llm_indices:
            raise ValueError("TSF tracks are read on the host's frames: the dataset needs the host's frame_request")
        if self.tsf_tracks == "annotation":
            return annotation_track(*self.annotation_boxes(expression, llm_indices))
        key = f"{expression.video}/{expression.exp_id}"
        track = self.tsf_tracks.get(key)
        if track is None:
            raise DatasetError(self.meta_path, f"expression {key!r} has no track in the TSF cache: build the cache for this split")
        if len(track) != len(expression.frames):
            raise DatasetError(self.meta_path, f"the TSF cache's track of {key!r} has {len(track)} frames, the video {len(expression.frames)}: rebuild the cache")
        return track.on(llm_indices)

    def _host_frames(self, pixels: dict, llm_indices: list[int], frame_indices: list[int], frames: torch.Tensor, size) -> torch.Tensor:
        """The host's frames at its size; taken from the decoder's already resized ``frames``
        when they are those frames at that size and interpolation (the tiny host's case),
        instead of resizing the same pixels twice."""
        request = self.frame_request
        wanted = request.size(*size)
        positions = {index: position for position, index in enumerate(frame_indices)}
        if tuple(wanted) == (self.image_size,) * 2 and request.interpolation == "bilinear" and all(i in positions for i in llm_indices):
            return frames[[positions[i] for i in llm_indices]]
        return resize_frames(self.to_tensor(np.stack([pixels[i] for i in llm_indices])), wanted, request.interpolation)

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
            for name in frames if self.require_frames else ():
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
        if self.mask_dict is not None and "anno_id" not in raw:
            # without it the expression would silently count as "no target"
            raise DatasetError(self.meta_path, f"{where}: no 'anno_id' (the annotations it refers to; [] for an expression with no target)")
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
        return self.frames_dir / video / f"{name}.jpg"

    def _choose_frames(self, total: int, visible: np.ndarray | None) -> tuple[list[int], int]:
        """The decoder's frames of a clip and the position among them of the frame SAM2 is
        prompted on in training: drawn among the frames where the target is visible (any
        frame when it is visible nowhere); 0 at evaluation, whose prompting the model decides."""
        cond = None
        if self.random_frames:
            candidates = np.flatnonzero(visible) if visible is not None and visible.any() else np.arange(total)
            cond = int(self.rng.choice(candidates))
        if self.num_frames is None or self.num_frames >= total:
            indices = list(range(total))
        elif self.random_frames:
            others = torch.randperm(total - 1)[: self.num_frames - 1]
            indices = sorted([cond, *(others + (others >= cond).long()).tolist()])
        else:
            indices = uniform_frames(total, self.num_frames)
        return indices, (0 if cond is None else indices.index(cond))

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator for the prompted frame: seeded from torch's seed (which
        Lightning's ``seed_everything`` sets, and DataLoader sets per worker), apart from
        torch's stream so drawing it changes no other random choice. Keyed by that seed, so
        a worker that received a copy of the dataset draws its own sequence."""
        seed = torch.initial_seed()
        if self._rng is None or self._rng[0] != seed:
            self._rng = (seed, np.random.default_rng(seed))
        return self._rng[1]

    def visible_frames(self, expression: ReferringExpression) -> np.ndarray:
        """(total,) bool: frames of the whole video where a referred object has a non-empty
        mask (read off the RLEs, nothing decoded)."""
        visible = np.zeros(len(expression.frames), dtype=bool)
        for anno_id in expression.anno_ids:
            if anno_id not in self._visible_cache:
                self._visible_cache[anno_id] = np.array(
                    [rle is not None and self._rle_area(rle, anno_id, name) > 0 for rle, name in zip(self.mask_dict[str(anno_id)], expression.frames)]
                )
            visible |= self._visible_cache[anno_id]
        return visible

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

    @staticmethod
    def to_tensor(frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [0, 1]."""
        return pixels_of(frames)

    def resize_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, S, S) float in [0, 1], the decoder's size."""
        return resize_frames(self.to_tensor(frames), (self.image_size, self.image_size))

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
        rle = self._checked_rle(rle, where, frame_size=size)
        try:
            decoded = mask_utils.decode(rle)
        except Exception as error:  # pycocotools raises bare exceptions for malformed counts
            raise DatasetError(self.mask_path, f"{where}: RLE does not decode ({error})") from None
        return decoded.astype(bool)

    def _rle_area(self, rle, anno_id: int, frame_name: str) -> int:
        where = f"anno_id {anno_id}, frame {frame_name!r}"
        try:
            return int(mask_utils.area(self._checked_rle(rle, where)))
        except DatasetError:
            raise
        except Exception as error:  # pycocotools raises bare exceptions for malformed counts
            raise DatasetError(self.mask_path, f"{where}: RLE does not decode ({error})") from None

    def _checked_rle(self, rle, where: str, frame_size=None) -> dict:
        """A mask_dict entry as pycocotools reads it (byte counts), checked to be of the
        frame's size (when given) and to cover exactly its ``size``: pycocotools decodes runs
        that add up to more or fewer pixels without a word (an RLE of a smaller frame would
        load as a shifted, wrapped mask)."""
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise DatasetError(self.mask_path, f"{where}: expected a COCO RLE {{'size': [H, W], 'counts': ...}} or null")
        counts, size = rle["counts"], rle["size"]
        counts = counts.encode() if isinstance(counts, str) else counts
        if not isinstance(counts, bytes):
            raise DatasetError(self.mask_path, f"{where}: RLE counts must be a compressed COCO string, got {type(counts).__name__}")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise DatasetError(self.mask_path, f"{where}: RLE size must be [H, W], got {size!r}")
        if frame_size is not None and list(size) != list(frame_size):
            raise DatasetError(self.mask_path, f"{where}: RLE size {list(size)} disagrees with the frame size {list(frame_size)}")
        runs = rle_runs(counts)
        if runs is None:
            raise DatasetError(self.mask_path, f"{where}: RLE counts are not a valid COCO RLE string")
        if sum(runs) != size[0] * size[1]:
            raise DatasetError(
                self.mask_path, f"{where}: RLE counts cover {sum(runs)} pixels, its size {list(size)} has {size[0] * size[1]}"
            )
        return {"size": list(size), "counts": counts}


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
        return self._load(self.objects[index], index)


def rle_runs(counts: bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``: 5
    bits per character, a continuation bit, runs after the second stored as differences),
    or None when the string is malformed (cut off mid-run, a negative run)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = shift = 0
        more = True
        while more:
            if position >= len(counts):
                return None
            char = counts[position] - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return runs


def normalised_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, T, H, W) bool masks -> (K, T, 4) float xyxy boxes in [0, 1] (pixel edges, so a
    full-frame mask is (0, 0, 1, 1)); zeros where a mask is empty."""
    height, width = masks.shape[-2:]
    flat = masks.flatten(0, 1)
    boxes = torch.zeros(flat.shape[0], 4)
    present = flat.flatten(1).any(dim=1)
    if present.any():
        corners = masks_to_boxes(flat[present]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        boxes[present] = corners / torch.tensor([width, height, width, height], dtype=torch.float32)
    return boxes.view(*masks.shape[:2], 4)


def _int_list(value) -> tuple[int, ...] | None:
    values = value if isinstance(value, list) else [value]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        return None
