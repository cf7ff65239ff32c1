"""What ``sparrow predict VIDEO "expression"`` (and ``SparrowPredictor.predict_to_folder``) writes.

Per expression ``k`` (in the order given)::

    out/<k>/mask/<frame>.png          0/255, the union of the segmented objects, full size
    out/<k>/object_<j>/<frame>.png    0/255, object j alone (one per [SEG], or per kept box)
    out/<k>/overlay.mp4               the video with each object outlined in its colour, its
                                      kept box and score on the frames it was prompted on,
                                      the expression and the answer above
    out/<k>/prediction.json           the answer, and per object its box, score, prompted
                                      frames and per-frame presence

and ``out/predictions.json``, every expression's ``prediction.json`` in one list. The
objects' masks are written as they are decoded; the union and the overlay then follow
from them and the video, one frame at a time, so nothing here holds a whole video.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sparrow_plugin.predict import _font, _wrap, outline_tile, pick_outline_colours
from sparrow_plugin.video_io import VideoSource, write_video

__all__ = ["OverlayPainter", "prediction_entry", "write_expression"]

_DEFAULT_FPS = 10.0  # the overlay's rate for a folder of frames, which has none
_SAMPLED_PIXELS = 4096  # frame pixels sampled to pick outline colours that stand out
_COLOUR_SAMPLE_FRAMES = 8  # frames those pixels are sampled from


def write_expression(
    source: VideoSource, folder: Path, exp_id: str, expression: str, answer: str, truncated: bool, cond_frame: int,
    boxes: Sequence[list[float] | None], box_scores: Sequence[float | None], prompted: Sequence[list[int]], presence: Sequence[Sequence[float]],
) -> dict:
    """The union masks, the overlay video and the JSON of one expression whose objects'
    masks are already in ``folder/object_<j>/``; returns the JSON entry.

    Args:
        boxes, box_scores: per object, its kept box (xyxy pixels of the original frame)
            and score, or None.
        prompted: per object, the frames (positions) it was prompted on.
        presence: per object, its presence probability on every frame.
    """
    names, count = source.names, len(boxes)
    caption = f"{expression} -> {answer}" + (" [cut off]" if truncated else "")
    last = len(source) - 1
    sample = source.read(sorted({round(k * last / (_COLOUR_SAMPLE_FRAMES - 1)) for k in range(_COLOUR_SAMPLE_FRAMES)}))
    painter = OverlayPainter(sample, count, caption, source.width)
    drawn = list(zip(boxes, box_scores, prompted))
    (folder / "mask").mkdir(parents=True, exist_ok=True)

    def overlay():
        for t in tqdm(range(len(source)), desc=f"overlay video {exp_id}", disable=len(source) < 50):
            masks = np.zeros((count, source.height, source.width), bool)
            for j in range(count):
                masks[j] = np.array(Image.open(folder / f"object_{j}" / f"{names[t]}.png")) > 0
            Image.fromarray(masks.any(axis=0).astype(np.uint8) * 255).save(folder / "mask" / f"{names[t]}.png")
            yield painter.paint(source.read([t])[0], masks, drawn, t)

    write_video(folder / "overlay.mp4", overlay(), source.fps or _DEFAULT_FPS)
    entry = prediction_entry(exp_id, expression, answer, truncated, names, cond_frame, boxes, box_scores, prompted, presence)
    (folder / "prediction.json").write_text(json.dumps(entry, indent=1))
    return entry


def prediction_entry(
    exp_id: str, expression: str, answer: str, truncated: bool, frame_names: Sequence[str], cond_frame: int,
    boxes: Sequence[list[float] | None], box_scores: Sequence[float | None], prompted: Sequence[list[int]], presence: Sequence[Sequence[float]],
) -> dict:
    """The JSON of one expression (arguments as :func:`write_expression`'s)."""
    return {
        "exp_id": exp_id,
        "expression": expression,
        "answer": answer,
        "truncated": truncated,
        "prompted_frame": frame_names[cond_frame],
        "frames": len(frame_names),
        "objects": [
            {
                "box": box,
                "box_score": score if box is not None else None,
                "prompted_frames": [frame_names[t] for t in frames],
                "presence": [round(float(p), 4) for p in values],
            }
            for box, score, frames, values in zip(boxes, box_scores, prompted, presence)
        ],
    }


class OverlayPainter:
    """Draws one overlay frame at a time: each object outlined in its colour, its kept box
    and score on the frames it prompted, the caption in a band above.

    Args:
        sample: (N, H, W, 3) uint8 frames whose pixels pick the outline colours that stand out.
        num_objects: how many objects get a colour.
        caption: the text above the frames.
        width: the frames' width.
    """

    def __init__(self, sample: np.ndarray, num_objects: int, caption: str, width: int):
        pixels = sample.reshape(-1, 3)
        self.colours = pick_outline_colours(pixels[np.random.default_rng(0).integers(0, len(pixels), _SAMPLED_PIXELS)], max(num_objects, 1))
        self.font = _font()
        self.lines = _wrap(caption, self.font, width - 8)
        self.line_height = int(self.font.getbbox("Ag")[3]) + 4
        self.band = self.line_height * len(self.lines) + 6

    def paint(self, frame: np.ndarray, masks: np.ndarray, boxes: Sequence[tuple], t: int) -> np.ndarray:
        """(band + H, W, 3) uint8: ``frame`` (H, W, 3) with ``masks`` (K, H, W) bool;
        ``boxes``, per object ``(xyxy in pixels or None, score, prompted frame positions)``,
        drawn where ``t`` is among its prompted frames."""
        height, width = frame.shape[:2]
        tile = frame
        for j, mask in enumerate(masks):
            tile = outline_tile(tile, mask, self.colours[j])
        image = Image.new("RGB", (width, self.band + height))
        image.paste(Image.fromarray(tile), (0, self.band))
        draw = ImageDraw.Draw(image)
        for k, line in enumerate(self.lines):
            draw.text((4, 3 + k * self.line_height), line, fill=(255, 255, 255), font=self.font)
        for j, (box, score, prompted) in enumerate(boxes):
            if box is not None and t in prompted:
                x1, y1, x2, y2 = box
                draw.rectangle((x1, self.band + y1, x2, self.band + y2), outline=self.colours[j], width=2)
                draw.text((x1 + 2, self.band + y1 + 2), f"{score:.2f}", fill=self.colours[j], font=self.font)
        return np.asarray(image)
