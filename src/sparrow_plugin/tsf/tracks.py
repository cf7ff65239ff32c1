"""Target tracks for TSF: one box per frame of a clip, where the target is.

A track is what the builder's *boxes* stage produces, and what the cache stores; region
encoding and K-means selection run on it later, on the host's own frames. Sources:

- :func:`annotation_track` (the released code's way, the default): the dataset's masks.
  On each frame the box of the first referred object visible there; on a frame where none
  is, the previous frame's box, else the whole frame (the code's fallbacks), with score 0
  so that selection can tell.
- :func:`read_box_file` (the released code's inference input): a text file with one line
  per frame, ``x1 y1 x2 y2`` or ``x y w h`` in pixels, separated by spaces or commas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sparrow_plugin.errors import DatasetError

__all__ = ["Track", "annotation_track", "read_box_file", "box_file_format"]

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass
class Track:
    """Boxes of one target over the frames of a clip.

    Attributes:
        boxes: (T, 4) float normalised xyxy, one per clip frame.
        scores: (T,) float confidence of each box (1 for an annotated box, 0 for a
            frame where the target was not found and a fallback box stands in).
    """

    boxes: torch.Tensor
    scores: torch.Tensor

    def __post_init__(self):
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4 or self.scores.shape != self.boxes.shape[:1]:
            raise ValueError(f"a track needs (T, 4) boxes and (T,) scores, got {tuple(self.boxes.shape)} and {tuple(self.scores.shape)}")

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @classmethod
    def not_found(cls, num_frames: int) -> "Track":
        """A track of a target found nowhere: whole-frame stand-ins, score 0."""
        return cls(torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(num_frames, 1), torch.zeros(num_frames))

    def on(self, frames) -> "Track":
        """The track on some of its frames (indices, in order)."""
        return Track(self.boxes[frames], self.scores[frames])


def _with_fallbacks(boxes: list[torch.Tensor | None]) -> Track:
    """Frames without a box take the previous frame's, else the whole frame; score 0."""
    filled, scores, previous = [], [], None
    for box in boxes:
        if box is not None:
            previous = box
        filled.append(previous if previous is not None else torch.tensor([0.0, 0.0, 1.0, 1.0]))
        scores.append(1.0 if box is not None else 0.0)
    return Track(torch.stack(filled).float(), torch.tensor(scores))


def annotation_track(object_boxes: torch.Tensor, object_visible: torch.Tensor) -> Track:
    """The released code's track from the referred objects' annotations.

    Args:
        object_boxes: (M, T, 4) normalised xyxy boxes of the M referred objects.
        object_visible: (M, T) bool, whether each object is visible on each frame.
    """
    boxes = []
    for t in range(object_boxes.shape[1]):
        visible = object_visible[:, t].nonzero().flatten()
        boxes.append(object_boxes[int(visible[0]), t].float() if len(visible) else None)
    return _with_fallbacks(boxes)


def box_file_format(rows: list[list[float]], width: int, height: int) -> Literal["xyxy", "xywh"]:
    """Decide whether the rows are ``xyxy`` or ``xywh`` by voting, as the released code does
    (ties: ``xywh``): a row whose third and fourth numbers are smaller than its first two
    cannot be xyxy; a row that would reach beyond the frame as xywh cannot be xywh."""
    votes = {"xyxy": 0, "xywh": 0}
    for a, b, c, d in rows:
        if c < a or d < b:
            votes["xywh"] += 1
        elif a + c > width + 1 or b + d > height + 1:
            votes["xyxy"] += 1
    return "xyxy" if votes["xyxy"] > votes["xywh"] else "xywh"


def read_box_file(path: str | Path, num_frames: int, width: int, height: int, box_format: Literal["auto", "xyxy", "xywh"] = "auto") -> Track:
    """A track from a per-video box file: line ``i`` is frame ``i`` (frames past the last
    line take the last line, as the released code does).

    Args:
        path: the text file; num_frames: frames of the clip; width, height: their size in
            pixels (the boxes' frame); box_format: ``auto`` votes (:func:`box_file_format`).
    Raises:
        DatasetError: naming the file and line, for a line without four numbers, a box of
            no area, or a file without boxes.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise DatasetError(path, f"cannot read the box file: {error.strerror or error}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        values = [float(v) for v in _NUMBER.findall(line)]
        if len(values) < 4:
            raise DatasetError(path, f"line {number} has {len(values)} numbers, a box needs 4 (x1 y1 x2 y2 or x y w h): {line.strip()!r}")
        rows.append(values[:4])
    if not rows:
        raise DatasetError(path, "holds no boxes (one line per frame: x1 y1 x2 y2 or x y w h)")
    chosen = box_file_format(rows, width, height) if box_format == "auto" else box_format
    boxes = torch.tensor(rows, dtype=torch.float64)
    if chosen == "xywh":
        boxes[:, 2:] += boxes[:, :2]
    if bool(((boxes[:, 2:] - boxes[:, :2]) <= 0).any()):
        line = int(((boxes[:, 2:] - boxes[:, :2]) <= 0).any(dim=1).nonzero()[0]) + 1
        raise DatasetError(path, f"box {line} has no area read as {chosen}: {rows[line - 1]}")
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    boxes = (boxes / scale).clamp(0, 1).float()
    index = torch.arange(num_frames).clamp(max=len(boxes) - 1)
    return Track(boxes[index], torch.ones(num_frames))
