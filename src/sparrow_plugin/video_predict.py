"""What ``sparrow predict VIDEO "expression"`` writes: masks, an overlay video and a JSON.

Per expression ``k`` (in the order given)::

    out/<k>/mask/<frame>.png          0/255, the union of the segmented objects, full size
    out/<k>/object_<j>/<frame>.png    0/255, object j alone (one per [SEG], or per kept box)
    out/<k>/overlay.mp4               the video with each object outlined in its colour, its
                                      kept box and score on the frames it was prompted on,
                                      the expression and the answer above
    out/<k>/prediction.json           the answer, and per object its box, score, prompted
                                      frames and per-frame presence

and ``out/predictions.json``, every expression's ``prediction.json`` in one list.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sparrow_plugin.predict import _font, _wrap, outline_tile, pick_outline_colours
from sparrow_plugin.video_io import write_video

__all__ = ["VideoPredictionWriter", "overlay_frames"]

_DEFAULT_FPS = 10.0  # the overlay's rate for a folder of frames, which has none
_SAMPLED_PIXELS = 4096  # frame pixels sampled to pick outline colours that stand out


class VideoPredictionWriter(BasePredictionWriter):
    """Writes each expression's prediction on a :class:`~sparrow_plugin.data.video_clip.VideoClipDataModule`'s
    video as it finishes (the layout is in the module docstring)."""

    def __init__(self, output_dir: str):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        datamodule = trainer.datamodule
        frames, fps = datamodule.video_frames, datamodule.video_fps or _DEFAULT_FPS
        for index, record in enumerate(prediction):
            folder = self.output_dir / record["exp_id"]
            height, width = batch.original_sizes[index]
            objects = record["object_masks"]
            objects = objects if objects is not None else torch.zeros(0, len(record["frame_names"]), height, width, dtype=torch.bool)
            union = objects.any(dim=0)
            _write_masks(folder / "mask", union, record["frame_names"])
            for j, mask in enumerate(objects):
                _write_masks(folder / f"object_{j}", mask, record["frame_names"])
            entry = _entry(record, batch.queries[index], (height, width))
            caption = f"{batch.queries[index]} -> {record['answer']}" + (" [cut off]" if record["truncated"] else "")
            boxes = [(o["box"], o["box_score"], prompted) for o, prompted in zip(entry["objects"], record["prompted_frames"] or [])]
            write_video(folder / "overlay.mp4", overlay_frames(frames, objects, boxes, caption), fps)
            (folder / "prediction.json").write_text(json.dumps(entry, indent=1))

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()  # every rank's expressions are on disk
        if trainer.is_global_zero:
            entries = [json.loads(path.read_text()) for path in self.output_dir.glob("*/prediction.json")]
            entries.sort(key=lambda entry: int(entry["exp_id"]))
            (self.output_dir / "predictions.json").write_text(json.dumps(entries, indent=1))


def _write_masks(folder: Path, masks: torch.Tensor, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(names, masks):
        Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(folder / f"{name}.png")


def _entry(record: dict, query: str, size: tuple[int, int]) -> dict:
    """The JSON of one expression: boxes in pixels of the original frame."""
    height, width = size
    objects = []
    count = 0 if record["object_masks"] is None else len(record["object_masks"])
    for j in range(count):
        box = record["boxes"][j] if record["boxes"] is not None else None
        kept = box is not None and not torch.isnan(box).any()
        scores = record["object_scores"]
        objects.append({
            "box": [round(float(v), 2) for v in box * torch.tensor([width, height, width, height])] if kept else None,
            "box_score": float(record["box_scores"][j]) if record["box_scores"] is not None and kept else None,
            "prompted_frames": [record["frame_names"][t] for t in record["prompted_frames"][j]] if record["prompted_frames"] else [],
            "presence": [round(float(p), 4) for p in torch.sigmoid(scores[j].float())] if scores is not None else None,
        })
    return {
        "exp_id": record["exp_id"],
        "expression": query,
        "answer": record["answer"],
        "truncated": record["truncated"],
        "prompted_frame": record["frame_names"][record["cond_frame"]],
        "frames": len(record["frame_names"]),
        "objects": objects,
    }


def overlay_frames(frames: np.ndarray, objects: torch.Tensor, boxes: list[tuple], caption: str) -> np.ndarray:
    """(T, band + H, W, 3) uint8: each object of ``objects`` (K, T, H, W) outlined in its
    colour on every frame; ``boxes``, per object ``(xyxy in pixels or None, score, prompted
    frame positions)``, drawn with their score on the frames they prompted; the caption in
    a band above."""
    num_frames, height, width = frames.shape[:3]
    sample = frames.reshape(-1, 3)[np.random.default_rng(0).integers(0, num_frames * height * width, _SAMPLED_PIXELS)]
    colours = pick_outline_colours(sample, max(len(objects), 1))
    font = _font()
    lines = _wrap(caption, font, width - 8)
    line_height = int(font.getbbox("Ag")[3]) + 4
    band = line_height * len(lines) + 6
    out = np.zeros((num_frames, band + height, width, 3), np.uint8)
    for t in tqdm(range(num_frames), desc="overlay video", disable=num_frames < 50):
        tile = frames[t]
        for j, mask in enumerate(objects):
            tile = outline_tile(tile, mask[t].numpy(), colours[j])
        image = Image.new("RGB", (width, band + height))
        image.paste(Image.fromarray(tile), (0, band))
        draw = ImageDraw.Draw(image)
        for k, line in enumerate(lines):
            draw.text((4, 3 + k * line_height), line, fill=(255, 255, 255), font=font)
        for j, (box, score, prompted) in enumerate(boxes):
            if box is not None and t in prompted:
                x1, y1, x2, y2 = box
                draw.rectangle((x1, band + y1, x2, band + y2), outline=colours[j], width=2)
                draw.text((x1 + 2, band + y1 + 2), f"{score:.2f}", fill=colours[j], font=font)
        out[t] = np.asarray(image)
    return out
