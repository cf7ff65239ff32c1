"""Writing predictions: benchmark submission PNGs and overlays to look at.

``sparrow predict --config recipe.yaml --trainer.callbacks+=sparrow_plugin.predict.MaskWriter
--trainer.callbacks.init_args.output_dir out/`` writes, per expression::

    out/<video>/<exp_id>/<frame>.png      0/255 masks at the original size (the MeViS and
                                          Ref-YouTube-VOS submission layout)
    out/overlays/<video>_<exp_id>.jpg     the frames side by side, prediction in colour,
                                          with the query and the model's answer
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw

__all__ = ["MaskWriter", "overlay_strip"]

_OVERLAY_COLOUR = np.array([255, 64, 32], dtype=np.float32)


class MaskWriter(BasePredictionWriter):
    """Saves every predicted mask; overlays for the first ``max_overlays`` expressions.

    Args:
        output_dir: where the PNG folders, the overlays and ``answers.json`` go.
        max_overlays: overlay strips to write (0: none).
    """

    def __init__(self, output_dir: str, max_overlays: int = 16):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.max_overlays = max_overlays
        self.written_overlays = 0
        self.answers: dict[str, str] = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for index, record in enumerate(prediction):
            folder = self.output_dir / record["video"] / record["exp_id"]
            folder.mkdir(parents=True, exist_ok=True)
            masks = record["masks"]
            height, width = batch.original_sizes[index]
            if masks is None:  # no [SEG]: an empty mask per frame, still written
                masks = torch.zeros(len(record["frame_names"]), height, width, dtype=torch.bool)
            for name, mask in zip(record["frame_names"], masks):
                Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(folder / f"{name}.png")
            self.answers[f"{record['video']}/{record['exp_id']}"] = record["answer"]
            if self.written_overlays < self.max_overlays:
                strip = overlay_strip(batch.frames[index], masks, f"{batch.queries[index]} -> {record['answer']}")
                (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
                strip.save(self.output_dir / "overlays" / f"{record['video']}_{record['exp_id']}.jpg", quality=90)
                self.written_overlays += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "answers.json").write_text(json.dumps(self.answers, indent=1, sort_keys=True))


def overlay_strip(frames: torch.Tensor, masks: torch.Tensor, caption: str, max_frames: int = 8) -> Image.Image:
    """Frames (T, 3, S, S) in [0, 1] side by side at the masks' (T, H, W) size, masks tinted."""
    height, width = masks.shape[-2:]
    step = max(1, len(frames) // max_frames)
    tiles = []
    for frame, mask in zip(frames[::step], masks[::step]):
        image = F.interpolate(frame[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        pixels = image.permute(1, 2, 0).numpy() * 255
        tint = mask.numpy()[..., None].astype(np.float32) * 0.55
        tiles.append((pixels * (1 - tint) + _OVERLAY_COLOUR * tint).clip(0, 255).astype(np.uint8))
    strip = Image.fromarray(np.concatenate(tiles, axis=1))
    canvas = Image.new("RGB", (strip.width, strip.height + 18), (0, 0, 0))
    canvas.paste(strip, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), caption, fill=(255, 255, 255))
    return canvas
