"""VideoGCG (grounded conversation generation) annotations, as VideoGLaMM's release ships them.

One annotation file, ``instruction_data/<split>.json``::

    {"videos": [{"id": ..., "file_names": [<frame path>, ...], "width": W, "height": H,
                 "length": T,                                  (optional; checked when given)
                 "dense_cap": {"caption": str, "token_pos": [...], "mask_id": [...]}}, ...],
     "annotations": [{"id": ..., "segmentations": [<COCO RLE or null>, ...]}, ...]}

``file_names`` are relative to an image root (VideoGLaMM's loader puts them under
``burst/frames/<split>/`` or ``ytvis/vos/train/JPEGImages/`` depending on the source); the
dataset does not read frames, it only gives their paths. ``segmentations`` has one entry
per frame: a COCO RLE ``{"size": [H, W], "counts": ...}`` (compressed string, or a list of
run lengths) or null for a frame where the object is absent (an empty mask).

``token_pos`` and ``mask_id`` are parallel lists, one entry per grounded phrase. The meaning
of a ``token_pos`` entry varies between releases; it is read as follows:

* a pair of ints ``[start, end]`` with ``0 <= start < end <= len(caption)``: a character
  span, the phrase is ``caption[start:end]`` (stripped of surrounding white space). A pair
  of word indices that fits this rule is therefore read as a character span;
* otherwise a list of ints: word indices into ``caption.split()``, the phrase is those
  words joined by single spaces (in the order given);
* a bare int: one word index (what VideoGLaMM's BURST/YouTube-VIS release holds: the index
  of the word that preceded the ``{obj_N}`` marker in the generated caption).

Anything else (a word index past the caption's words, an empty list, a string) is a
:class:`~sparrow_plugin.errors.DatasetError` naming the file and the video. A ``mask_id``
entry is an annotation id or a list of them; the phrase's mask is the union over those ids
of the annotations' per-frame masks (null = empty on that frame).

Phrases are kept in caption order (the order of the ``[SEG]`` tokens in the answer), and
entries at the very same position (same span, same phrase) are one phrase whose mask is the
union of theirs, as VideoGLaMM's loader does for repeated word indices. Two phrases whose
spans overlap otherwise cannot both be marked in the answer and are a DatasetError.

Structure is checked when the dataset is built (keys, types, phrases, every mask id has an
annotation with one entry per frame, every RLE has the video's ``[height, width]``); RLE
counts are checked when a video's masks are decoded (:meth:`VideoGCGDataset.video`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from sparrow_plugin.data.mevis import is_json_int, read_json, rle_runs
from sparrow_plugin.errors import DatasetError

__all__ = [
    "GCG_QUESTION",
    "GCGVideo",
    "VideoGCGDataset",
    "phrase_span",
    "grounded_answer",
    "decode_rle",
    "encode_rle",
]

# The first of VideoGLaMM's GCG questions (utils/video_gcg_dataset.py), the one its GCG
# evaluation (eval_gcg_infer.py) asks. VideoGLaMM's training draws one of six at random and
# puts its video token in front; the kit reproduces only this text, with no video token
# (the host's chat template places the frames).
GCG_QUESTION = (
    "Could you please give me a detailed description of the video? "
    "Please respond with interleaved segmentation masks for the corresponding parts of the answer."
)


@dataclass(frozen=True, eq=False)
class GCGVideo:
    """One video of the benchmark with its grounded caption, decoded."""

    id: object  # as the file gives it (an int in VideoGLaMM's release); str(id) keys predictions
    caption: str
    phrases: list[str]  # in caption order
    masks: list[np.ndarray]  # one (T, H, W) bool per phrase
    frame_paths: list[Path]
    size: tuple[int, int]  # (H, W)


@dataclass(frozen=True)
class _Entry:
    """A video's structure, as checked when the dataset is built."""

    id: object
    caption: str
    phrases: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # character spans in the caption, sorted
    mask_ids: tuple[tuple[int, ...], ...]  # per phrase
    file_names: tuple[str, ...]
    size: tuple[int, int]  # (H, W)


def phrase_span(caption: str, position) -> tuple[int, int, str] | None:
    """``(start, end, phrase)`` of one ``token_pos`` entry, by the rules of the module
    docstring: ``caption[start:end]`` is where the phrase is marked in the answer; None when
    the entry is neither a character span nor word indices of this caption."""
    if is_json_int(position):
        position = [position]
    if not isinstance(position, (list, tuple)) or not position or not all(is_json_int(v) for v in position):
        return None
    if len(position) == 2 and 0 <= position[0] < position[1] <= len(caption):
        start, end = position
        text = caption[start:end]
        stripped = text.strip()
        if not stripped:
            return None
        start += len(text) - len(text.lstrip())
        return start, start + len(stripped), stripped
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", caption)]  # the words of caption.split()
    if not all(0 <= v < len(words) for v in position):
        return None
    phrase = " ".join(caption[words[v][0] : words[v][1]] for v in position)
    return words[min(position)][0], words[max(position)][1], phrase


def grounded_answer(caption: str, spans, phrases) -> str:
    """The caption with each phrase marked as ``<p> phrase </p> [SEG]`` at its (sorted,
    non-overlapping) span, VideoGLaMM's GCG answer style."""
    pieces, last = [], 0
    for (start, end), phrase in zip(spans, phrases):
        pieces += [caption[last:start], f"<p> {phrase} </p> [SEG]"]
        last = end
    pieces.append(caption[last:])
    return "".join(pieces)


def encode_rle(mask: np.ndarray) -> dict:
    """An (H, W) mask as a JSON-ready COCO RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle, size: tuple[int, int]) -> np.ndarray:
    """A COCO RLE (compressed counts, or a list of run lengths) as (H, W) bool, checked to
    be of ``size`` and to cover exactly its pixels (pycocotools decodes runs that add up to
    another count without a word). Raises ValueError with the problem."""
    _check_rle_shape(rle, size)
    counts = rle["counts"]
    height, width = size
    if isinstance(counts, list):
        if not all(is_json_int(v) and v >= 0 for v in counts):
            raise ValueError("RLE counts must be non-negative integers")
        runs = counts
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        counts = counts.encode() if isinstance(counts, str) else counts
        runs = rle_runs(counts)
        if runs is None:
            raise ValueError("RLE counts are not a valid COCO RLE string")
        rle = {"size": [height, width], "counts": counts}
    if sum(runs) != height * width:
        raise ValueError(f"RLE counts cover {sum(runs)} pixels, its size {[height, width]} has {height * width}")
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as error:  # pycocotools raises bare exceptions for malformed counts
        raise ValueError(f"RLE does not decode ({error})") from None


def _check_rle_shape(rle, size) -> None:
    """The RLE's structure and ``size`` (no decoding); ValueError with the problem."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("expected a COCO RLE {'size': [H, W], 'counts': ...} or null")
    if not isinstance(rle["counts"], (str, bytes, list)):
        raise ValueError(f"RLE counts must be a COCO string or a list of run lengths, got {type(rle['counts']).__name__}")
    given = rle["size"]
    if not (isinstance(given, (list, tuple)) and len(given) == 2 and all(is_json_int(v) and v > 0 for v in given)):
        raise ValueError(f"RLE size must be [H, W], got {given!r}")
    if list(given) != list(size):
        raise ValueError(f"RLE size {list(given)} differs from the video's [height, width] {list(size)}")


class VideoGCGDataset(Dataset):
    """VideoGCG videos with their grounded captions (the module docstring has the format).

    Args:
        annotations: the annotation JSON (``instruction_data/<split>.json``).
        image_root: the folder ``file_names`` are relative to; None leaves them as given.
            Frames are not read (nor required to exist): the paths are for the host.

    :meth:`video` gives a :class:`GCGVideo` (numpy masks). Each item is a dict:
        ``caption`` str; ``phrases`` list[str], in caption order; ``masks`` bool
        (K, T, H, W), phrase k's mask on every frame; ``frame_paths`` list[Path];
        ``index`` int; ``conversation`` ``[{"role": "user", "content": GCG_QUESTION},
        {"role": "assistant", "content": <the caption, each phrase marked
        "<p> phrase </p> [SEG]">}]``, VideoGLaMM's GCG prompt style as far as the kit
        reproduces it (its first question, no video token; see :data:`GCG_QUESTION`).
    """

    def __init__(self, annotations: str | Path, image_root: str | Path | None = None):
        self.path = Path(annotations)
        self.image_root = Path(image_root) if image_root is not None else None
        data = read_json(self.path, "VideoGCG annotations")
        if not isinstance(data, dict) or not isinstance(data.get("videos"), list) or not isinstance(data.get("annotations"), list):
            raise DatasetError(self.path, 'expected {"videos": [...], "annotations": [...]} (VideoGLaMM\'s VideoGCG format)')
        self._segmentations = self._read_annotations(data["annotations"])
        self.entries = [self._read_video(raw, position) for position, raw in enumerate(data["videos"])]
        seen = set()
        for entry in self.entries:
            if str(entry.id) in seen:
                raise DatasetError(self.path, f"video id {entry.id!r} appears more than once")
            seen.add(str(entry.id))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        """The videos' ids as strings (the keys of a predictions file)."""
        return [str(entry.id) for entry in self.entries]

    def video(self, index: int) -> GCGVideo:
        entry = self.entries[index]
        masks = [self._phrase_mask(entry, ids) for ids in entry.mask_ids]
        return GCGVideo(entry.id, entry.caption, list(entry.phrases), masks, self._frame_paths(entry), entry.size)

    def conversation(self, index: int) -> list[dict]:
        entry = self.entries[index]
        answer = grounded_answer(entry.caption, entry.spans, entry.phrases)
        return [{"role": "user", "content": GCG_QUESTION}, {"role": "assistant", "content": answer}]

    def __getitem__(self, index: int) -> dict:
        video = self.video(index)
        entry = self.entries[index]
        masks = np.stack(video.masks) if video.masks else np.zeros((0, len(entry.file_names), *entry.size), dtype=bool)
        return {
            "caption": video.caption,
            "phrases": video.phrases,
            "masks": torch.from_numpy(masks),
            "frame_paths": video.frame_paths,
            "index": index,
            "conversation": self.conversation(index),
        }

    # ------------------------------------------------------------------ structure checks

    def _read_annotations(self, annotations: list) -> dict[int, list]:
        segmentations = {}
        for position, raw in enumerate(annotations):
            if not isinstance(raw, dict) or "id" not in raw or "segmentations" not in raw:
                raise DatasetError(self.path, f"annotation #{position}: expected an object with 'id' and 'segmentations'")
            anno_id = raw["id"]
            if not is_json_int(anno_id) or not isinstance(raw["segmentations"], list):
                raise DatasetError(self.path, f"annotation {anno_id!r}: 'id' must be an integer and 'segmentations' a list (one RLE or null per frame)")
            segmentations[anno_id] = raw["segmentations"]
        return segmentations

    def _read_video(self, raw, position: int) -> _Entry:
        if not isinstance(raw, dict) or "id" not in raw:
            raise DatasetError(self.path, f"video #{position}: expected an object with an 'id'")
        where = f"video {raw['id']!r}"
        missing = [key for key in ("file_names", "width", "height", "dense_cap") if key not in raw]
        if missing:
            raise DatasetError(self.path, f"{where}: no {', '.join(repr(k) for k in missing)}")
        names, width, height = raw["file_names"], raw["width"], raw["height"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DatasetError(self.path, f"{where}: 'file_names' must be a non-empty list of frame paths")
        if not (is_json_int(width) and is_json_int(height) and width > 0 and height > 0):
            raise DatasetError(self.path, f"{where}: 'width' and 'height' must be positive integers, got {width!r} and {height!r}")
        if "length" in raw and raw["length"] != len(names):
            raise DatasetError(self.path, f"{where}: 'length' is {raw['length']!r} but 'file_names' lists {len(names)} frames")
        dense = raw["dense_cap"]
        missing = [key for key in ("caption", "token_pos", "mask_id") if not isinstance(dense, dict) or key not in dense]
        if missing:
            raise DatasetError(self.path, f"{where}: 'dense_cap' has no {', '.join(repr(k) for k in missing)}")
        caption, positions, mask_ids = dense["caption"], dense["token_pos"], dense["mask_id"]
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetError(self.path, f"{where}: 'dense_cap.caption' must be a non-empty string, got {caption!r}")
        if not isinstance(positions, list) or not isinstance(mask_ids, list) or len(positions) != len(mask_ids):
            raise DatasetError(
                self.path,
                f"{where}: 'dense_cap.token_pos' and 'dense_cap.mask_id' must be lists of the same length (one entry per grounded phrase), "
                f"got {_length(positions)} and {_length(mask_ids)}",
            )
        size = (height, width)
        found: dict[tuple[int, int, str], list[int]] = {}  # (start, end, phrase) -> mask ids
        for k, (position_k, ids_k) in enumerate(zip(positions, mask_ids)):
            span = phrase_span(caption, position_k)
            if span is None:
                raise DatasetError(
                    self.path,
                    f"{where}: token_pos[{k}] = {position_k!r} is neither a character span [start, end] of the caption "
                    f"({len(caption)} characters) nor word indices into its {len(caption.split())} words",
                )
            ids = [ids_k] if is_json_int(ids_k) else ids_k
            if not isinstance(ids, list) or not ids or not all(is_json_int(v) for v in ids):
                raise DatasetError(self.path, f"{where}: mask_id[{k}] must be an annotation id or a non-empty list of them, got {ids_k!r}")
            for anno_id in ids:
                self._check_annotation(anno_id, where, len(names), size)
            merged = found.setdefault(span, [])
            merged.extend(v for v in ids if v not in merged)
        keys = sorted(found)
        for before, after in zip(keys, keys[1:]):
            if after[0] < before[1]:
                raise DatasetError(self.path, f"{where}: the phrases {before[2]!r} and {after[2]!r} overlap in the caption")
        return _Entry(
            raw["id"],
            caption,
            tuple(key[2] for key in keys),
            tuple(key[:2] for key in keys),
            tuple(tuple(found[key]) for key in keys),
            tuple(names),
            size,
        )

    def _check_annotation(self, anno_id: int, where: str, frames: int, size: tuple[int, int]) -> None:
        per_frame = self._segmentations.get(anno_id)
        if per_frame is None:
            raise DatasetError(self.path, f"{where}: mask_id {anno_id} has no annotation")
        if len(per_frame) != frames:
            raise DatasetError(self.path, f"{where}: annotation {anno_id} has {len(per_frame)} segmentations but the video has {frames} frames")
        for t, rle in enumerate(per_frame):
            if rle is not None:
                try:
                    _check_rle_shape(rle, size)
                except ValueError as problem:
                    raise DatasetError(self.path, f"{where}: annotation {anno_id}, frame {t}: {problem}") from None

    # ------------------------------------------------------------------ pixels

    def _phrase_mask(self, entry: _Entry, ids: tuple[int, ...]) -> np.ndarray:
        mask = np.zeros((len(entry.file_names), *entry.size), dtype=bool)
        for anno_id in ids:
            for t, rle in enumerate(self._segmentations[anno_id]):
                if rle is None:
                    continue
                try:
                    mask[t] |= decode_rle(rle, entry.size)
                except ValueError as problem:
                    raise DatasetError(self.path, f"video {entry.id!r}: annotation {anno_id}, frame {t}: {problem}") from None
        return mask

    def _frame_paths(self, entry: _Entry) -> list[Path]:
        return [self.image_root / name if self.image_root is not None else Path(name) for name in entry.file_names]


def _length(value) -> str:
    return str(len(value)) if isinstance(value, list) else type(value).__name__
