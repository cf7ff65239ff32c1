"""Spatio-temporal video grounding data (VidSTG, HC-STVG) in TubeDETR's preprocessed JSON.

One JSON file per split (``vidstg/test.json``, ``hcstvg/test.json``, ...)::

    {"videos": [{"video_id", "original_video_id", "video_path", "fps", "width", "height",
                 "start_frame", "end_frame", "tube_start_frame", "tube_end_frame",
                 "caption", "qtype", "target_id"}, ...],
     "trajectories": {<original_video_id>: {<target_id as str>:
                          {<frame index as str>: {"bbox": [x, y, w, h]}}}}}

``video_path`` is relative to the videos folder (TubeDETR's ``<vid_folder>/video``);
``[start_frame, end_frame)`` is the clip and ``[tube_start_frame, tube_end_frame)`` the
ground-truth tube, both in frame indices of the original video (ends exclusive); ``fps``
is the video's frame rate; ``qtype`` is ``declarative`` or ``interrogative``. HC-STVG has
no ``qtype``: an entry without one is ``declarative``.

TubeDETR's own HC-STVG files (``test_proc.json`` etc.) have another layout, a JSON list
of ``{"video_id", "video_path", "frame_count", "width", "height", "tube_start_frame",
"tube_end_frame", "trajectory": [[x, y, w, h], ...], "caption"}`` (one box per tube
frame); such a file is read too, as TubeDETR reads it: the clip is ``[0, frame_count - 1)``
and the frame rate ``frame_count / 20`` (HC-STVG videos last 20 s).

Sampling (TubeDETR's ``vid2imgids``, without its ``video_max_len`` cap of 200 frames):
with ``rate = fps / video_fps``, the clip's first frame is kept, then every frame ``f``
of the clip with ``int(f * rate) > int(last_kept * rate)``; at 5 fps of a 25 fps video
the clip ``[3, 40)`` gives ``3, 5, 10, 15, ..., 35``. A video slower than ``fps`` gives
every frame. The ground-truth span is the half-open range of sampled positions whose
original frame lies in the tube (empty, at the position where the tube would start, when
no sampled frame does); each of those frames' box is the trajectory's box, as
``[x1, y1, x2, y2]`` pixels.

Structure is checked when the dataset is built (keys, types, a box for every sampled
frame of the tube); videos are opened only when an item is read, with PyAV. Either way a
problem is a :class:`~sparrow_plugin.errors.DatasetError` naming the file (the JSON file
or the video) and the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from sparrow_plugin.data.mevis import is_json_int, is_json_number, read_json
from sparrow_plugin.errors import ConfigError, DatasetError
from sparrow_plugin.frames import resize_frames

__all__ = ["STVGQuery", "STVGDataset", "QTYPES", "sample_frame_ids", "decode_video_frames", "conversation"]

QTYPES = ("declarative", "interrogative")
_HCSTVG_SECONDS = 20  # TubeDETR's hcstvg.py: every HC-STVG video lasts 20 s
_VIDEO_KEYS = (
    "video_id", "original_video_id", "video_path", "fps", "width", "height",
    "start_frame", "end_frame", "tube_start_frame", "tube_end_frame", "caption", "target_id",
)  # fmt: skip
_HCSTVG_KEYS = ("video_id", "video_path", "frame_count", "width", "height", "tube_start_frame", "tube_end_frame", "trajectory", "caption")


@dataclass(frozen=True)
class STVGQuery:
    """One query (a caption over a clip) and its ground truth on the sampled frames."""

    index: int
    video_id: str  # the annotation's video_id as a string (the key of a predictions file)
    original_video_id: str
    video_path: str  # relative to the videos folder
    video_fps: float
    width: int
    height: int
    start_frame: int  # clip, original frame indices, end exclusive
    end_frame: int
    tube_start_frame: int  # ground-truth tube, original frame indices, end exclusive
    tube_end_frame: int
    caption: str
    qtype: str  # "declarative" or "interrogative"
    target_id: str
    frame_ids: tuple[int, ...]  # original indices of the sampled frames
    gt_span: tuple[int, int]  # half-open, in sampled positions
    gt_boxes: dict[int, list[float]] = field(hash=False)  # sampled position -> [x1, y1, x2, y2] pixels


def sample_frame_ids(start_frame: int, end_frame: int, video_fps: float, fps: float) -> list[int]:
    """The original frame indices TubeDETR samples from the clip ``[start_frame, end_frame)``
    at ``fps``: the first frame, then each frame whose ``int(frame * fps / video_fps)`` is
    above the last kept frame's (the float expression is TubeDETR's, to the rounding)."""
    rate = fps / video_fps
    frame_ids = [start_frame]
    for frame_id in range(start_frame, end_frame):
        if int(frame_ids[-1] * rate) < int(frame_id * rate):
            frame_ids.append(frame_id)
    return frame_ids


def conversation(caption: str, qtype: str, gt_span: tuple[int, int]) -> list[dict[str, str]]:
    """The kit's conversation template for a query (not TubeDETR's, which has none).

    User: the caption followed by ``" When and where does this happen in the video?"`` for
    a declarative query, the caption alone for an interrogative one (it is a question).
    Assistant: ``"From frame {s} to frame {e}: [BOX] [SEG]."`` with ``s`` the span's first
    and ``e`` its last sampled position (inclusive: ``gt_span[1] - 1``); a span empty on
    the sampled frames answers ``"It does not happen in the sampled frames."``.
    """
    caption = caption.strip()
    question = caption if qtype == "interrogative" else f"{caption} When and where does this happen in the video?"
    start, end = gt_span
    answer = f"From frame {start} to frame {end - 1}: [BOX] [SEG]." if end > start else "It does not happen in the sampled frames."
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


class STVGDataset(Dataset):
    """VidSTG / HC-STVG queries in TubeDETR's preprocessed JSON (module docstring).

    Args:
        annotations: the split's JSON file.
        video_root: the folder ``video_path`` is relative to; None reads the annotations
            alone (:meth:`query`, scoring), and reading an item is refused.
        fps: the sampling rate, frames per second (TubeDETR's default 5).
        image_size: None returns the frames as decoded; else resized to ``image_size`` x
            ``image_size`` (stretched, antialiased bilinear).

    Each item is a dict:
        ``frames`` uint8 (T, H, W, 3), or float32 (T, 3, S, S) in [0, 1] with
        ``image_size``; ``frame_ids`` list[int], the sampled frames' original indices;
        ``gt_span`` (start, end) half-open in sampled positions; ``gt_boxes`` dict sampled
        position -> [x1, y1, x2, y2] in pixels of the original frame (also with
        ``image_size``); ``caption`` str; ``qtype`` str; ``video_id`` str; ``index`` int;
        ``conversation`` the two turns of :func:`conversation` (the kit's template).
    """

    def __init__(self, annotations: str | Path, video_root: str | Path | None, fps: float = 5, image_size: int | None = None):
        self.annotations = Path(annotations)
        self.video_root = Path(video_root) if video_root is not None else None
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ConfigError(f"fps must be a positive number, got {fps!r}")
        if image_size is not None and not (isinstance(image_size, int) and image_size > 0):
            raise ConfigError(f"image_size must be a positive integer or None, got {image_size!r}")
        self.fps, self.image_size = fps, image_size
        self.queries = self._read(read_json(self.annotations, "STVG annotations"))

    def __len__(self) -> int:
        return len(self.queries)

    def query(self, index: int) -> STVGQuery:
        """The annotation of query ``index``, with its sampled frames and ground truth; no
        video is opened."""
        return self.queries[index]

    def __getitem__(self, index: int) -> dict:
        query = self.queries[index]
        if self.video_root is None:
            raise ConfigError("this STVGDataset was built without video_root (annotations only); pass video_root to read frames")
        path = self.video_root / query.video_path
        where = f"query {query.index} (video_id {query.video_id!r})"
        frames = decode_video_frames(path, query.frame_ids, query.end_frame, where)
        if frames.shape[1:3] != (query.height, query.width):
            raise DatasetError(
                path, f"{where}: frames are {frames.shape[2]}x{frames.shape[1]}, the annotation says {query.width}x{query.height} (its boxes are in those pixels)"
            )
        pixels = torch.from_numpy(frames)
        if self.image_size is not None:
            pixels = resize_frames(pixels.permute(0, 3, 1, 2).float().div_(255), (self.image_size, self.image_size))
        return {
            "frames": pixels,
            "frame_ids": list(query.frame_ids),
            "gt_span": query.gt_span,
            "gt_boxes": {position: list(box) for position, box in query.gt_boxes.items()},
            "caption": query.caption,
            "qtype": query.qtype,
            "video_id": query.video_id,
            "index": index,
            "conversation": conversation(query.caption, query.qtype, query.gt_span),
        }

    # ------------------------------------------------------------------ structure checks

    def _read(self, data) -> list[STVGQuery]:
        if isinstance(data, list):  # TubeDETR's HC-STVG *_proc.json
            videos, trajectories = self._from_hcstvg_list(data)
        elif isinstance(data, dict) and isinstance(data.get("videos"), list) and isinstance(data.get("trajectories"), dict):
            videos, trajectories = data["videos"], data["trajectories"]
        else:
            raise DatasetError(self.annotations, 'expected {"videos": [...], "trajectories": {...}} (TubeDETR\'s preprocessed VidSTG / HC-STVG JSON)')
        if not videos:
            raise DatasetError(self.annotations, "no queries (empty 'videos' list)")
        queries, seen = [], set()
        for index, video in enumerate(videos):
            query = self._read_query(index, video, trajectories)
            if query.video_id in seen:
                raise DatasetError(self.annotations, f"video_id {query.video_id!r} appears twice (queries are keyed by it)")
            seen.add(query.video_id)
            queries.append(query)
        return queries

    def _read_query(self, index: int, video, trajectories: dict) -> STVGQuery:
        if not isinstance(video, dict):
            raise DatasetError(self.annotations, f"videos[{index}]: expected an object, got {type(video).__name__}")
        where = f"videos[{index}] (video_id {video.get('video_id')!r})"
        missing = [key for key in _VIDEO_KEYS if key not in video]
        if missing:
            raise DatasetError(self.annotations, f"{where}: missing keys {', '.join(missing)}")
        ints = {}
        for key in ("width", "height", "start_frame", "end_frame", "tube_start_frame", "tube_end_frame"):
            value = video[key]
            if not is_json_int(value) or value < 0:
                raise DatasetError(self.annotations, f"{where}: {key} must be a non-negative integer, got {value!r}")
            ints[key] = value
        video_fps = video["fps"]
        if not is_json_number(video_fps) or video_fps <= 0:
            raise DatasetError(self.annotations, f"{where}: fps must be a positive number, got {video_fps!r}")
        if ints["end_frame"] <= ints["start_frame"]:
            raise DatasetError(self.annotations, f"{where}: empty clip [start_frame, end_frame) = [{ints['start_frame']}, {ints['end_frame']})")
        if not isinstance(video["caption"], str) or not video["caption"].strip():
            raise DatasetError(self.annotations, f"{where}: caption must be a non-empty string, got {video['caption']!r}")
        if not isinstance(video["video_path"], str) or not video["video_path"]:
            raise DatasetError(self.annotations, f"{where}: video_path must be a non-empty string, got {video['video_path']!r}")
        qtype = video.get("qtype", "declarative")
        if qtype not in QTYPES:
            raise DatasetError(self.annotations, f"{where}: qtype must be one of {', '.join(QTYPES)}, got {qtype!r}")

        frame_ids = sample_frame_ids(ints["start_frame"], ints["end_frame"], float(video_fps), self.fps)
        inside = [p for p, f in enumerate(frame_ids) if ints["tube_start_frame"] <= f < ints["tube_end_frame"]]
        if inside:
            gt_span = (inside[0], inside[-1] + 1)
        else:
            position = sum(f < ints["tube_start_frame"] for f in frame_ids)
            gt_span = (position, position)
        original, target = str(video["original_video_id"]), str(video["target_id"])
        boxes_of = trajectories.get(original, {}).get(target) if isinstance(trajectories.get(original), dict) else None
        gt_boxes = {}
        for position in inside:
            frame = frame_ids[position]
            entry = boxes_of.get(str(frame)) if isinstance(boxes_of, dict) else None
            if entry is None:
                raise DatasetError(
                    self.annotations,
                    f"{where}: sampled frame {frame} lies in the tube [{ints['tube_start_frame']}, {ints['tube_end_frame']}) "
                    f"but trajectories[{original!r}][{target!r}] has no box for it",
                )
            box = entry.get("bbox") if isinstance(entry, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(is_json_number(v) for v in box)):
                raise DatasetError(self.annotations, f"{where}: trajectories[{original!r}][{target!r}][{str(frame)!r}]: expected {{'bbox': [x, y, w, h]}}, got {entry!r}")
            x, y, w, h = (float(v) for v in box)
            gt_boxes[position] = [x, y, x + w, y + h]
        return STVGQuery(
            index=index,
            video_id=str(video["video_id"]),
            original_video_id=original,
            video_path=video["video_path"],
            video_fps=float(video_fps),
            caption=video["caption"],
            qtype=qtype,
            target_id=target,
            frame_ids=tuple(frame_ids),
            gt_span=gt_span,
            gt_boxes=gt_boxes,
            **ints,
        )

    def _from_hcstvg_list(self, data: list) -> tuple[list[dict], dict]:
        """TubeDETR's HC-STVG list layout as the VidSTG one: clip ``[0, frame_count - 1)``
        at ``frame_count / 20`` fps, the box list indexed from ``tube_start_frame``."""
        videos, trajectories = [], {}
        for index, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise DatasetError(self.annotations, f"[{index}]: expected an object, got {type(entry).__name__}")
            missing = [key for key in _HCSTVG_KEYS if key not in entry]
            if missing:
                raise DatasetError(self.annotations, f"[{index}] (video_id {entry.get('video_id')!r}): missing keys {', '.join(missing)}")
            count, tube_start, boxes = entry["frame_count"], entry["tube_start_frame"], entry["trajectory"]
            if not is_json_int(count) or count < 2 or not is_json_int(tube_start) or not isinstance(boxes, list):
                raise DatasetError(self.annotations, f"[{index}] (video_id {entry['video_id']!r}): frame_count, tube_start_frame must be integers and trajectory a list")
            key = f"{entry['video_id']}"
            trajectories[key] = {"0": {str(tube_start + k): {"bbox": box} for k, box in enumerate(boxes)}}
            videos.append(
                {
                    **{k: entry[k] for k in ("video_id", "video_path", "width", "height", "tube_start_frame", "tube_end_frame", "caption")},
                    "original_video_id": key,
                    "target_id": 0,
                    "fps": count / _HCSTVG_SECONDS,
                    "start_frame": 0,
                    "end_frame": count - 1,
                }
            )
        return videos, trajectories


def decode_video_frames(path: Path, frame_ids, end_frame: int, where: str = "") -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames ``frame_ids`` (sorted original indices) of a video.

    Seeks to the keyframe at or before the first wanted frame, decodes forward and keeps
    the wanted ones; a frame's index is its timestamp times the stream's frame rate. The
    video must have at least ``end_frame`` frames (it is decoded up to frame
    ``end_frame - 1``). A missing file, one PyAV cannot open or decode, or a short video
    raises :class:`~sparrow_plugin.errors.DatasetError` naming the file and ``where``.
    """
    path = Path(path)
    prefix = f"{where}: " if where else ""
    wanted = sorted(set(frame_ids))
    if not path.is_file():
        raise DatasetError(path, f"{prefix}video file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise DatasetError(path, f"{prefix}PyAV cannot open the video ({error})") from None
    with container:
        if not container.streams.video:
            raise DatasetError(path, f"{prefix}no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if rate is None or stream.time_base is None:
            raise DatasetError(path, f"{prefix}the video stream has no frame rate or time base: its frames cannot be located")
        try:
            frames, last = _decode_from(container, stream, Fraction(rate), wanted, end_frame - 1, seek=wanted[0] > 0)
            if frames is None:  # the seek landed past the first wanted frame: decode from the start
                frames, last = _decode_from(container, stream, Fraction(rate), wanted, end_frame - 1, seek=False)
        except av.error.FFmpegError as error:
            raise DatasetError(path, f"{prefix}the video does not decode ({error})") from None
    if last is None or last < end_frame - 1:
        count = 0 if last is None else last + 1
        raise DatasetError(path, f"{prefix}the video has {count} frames, the clip ends at frame {end_frame} (end_frame, exclusive)")
    absent = [index for index in wanted if index not in frames]
    if absent:
        raise DatasetError(path, f"{prefix}no frame with the timestamp of frame(s) {', '.join(map(str, absent[:5]))} (variable frame rate?)")
    return np.stack([frames[index] for index in frame_ids])


def _decode_from(container, stream, rate: Fraction, wanted: list[int], last_needed: int, seek: bool):
    """Frames of ``wanted`` by index and the last index decoded, decoding up to
    ``last_needed``; (None, None) when the seek went past ``wanted[0]``."""
    start = stream.start_time or 0
    time_base = Fraction(stream.time_base)
    container.seek(start + int(wanted[0] / rate / time_base) if seek else start, stream=stream, backward=True, any_frame=False)
    keep, frames, index = set(wanted), {}, None
    for frame in container.decode(stream):
        first = index is None
        if frame.pts is not None:
            index = round((frame.pts - start) * time_base * rate)
        elif not first or not seek:
            index = 0 if first else index + 1  # no timestamp: the frame after the last one
        else:
            continue  # after a seek, frames are located from the first timestamp on
        if seek and first and index > wanted[0]:
            return None, None
        if index in keep and index not in frames:
            frames[index] = frame.to_ndarray(format="rgb24")
        if index >= last_needed:
            break
    return frames, index

