"""Writing predictions: benchmark submission PNGs and overlays to look at.

``sparrow predict --config recipe.yaml --trainer.callbacks+=sparrow_plugin.predict.MaskWriter
--trainer.callbacks.init_args.output_dir out/`` writes, per expression::

    out/<video>/<exp_id>/<frame>.png      0/255 masks at the original size (the MeViS and
                                          Ref-YouTube-VOS submission layout)
    out/overlays/<video>_<exp_id>.jpg     the frames side by side, prediction in colour,
                                          with the query and the model's answer
    out/answers.json                      {"<video>/<exp_id>": answer text}
    out/truncated.json                    ["<video>/<exp_id>", ...]: answers cut off by
                                          max_new_tokens (only when the model reports it)

Under multi-process prediction every rank writes the PNGs of the samples it was given
(Lightning's predict sampler does not repeat samples) and its answers to a shard,
``answers.rank<k>.json``; after a barrier rank 0 merges the shards into ``answers.json``
(and ``truncated.json``) and deletes them. ``output_dir`` must therefore be visible to
every rank (one machine, or a shared filesystem).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw

from sparrow_plugin.errors import SparrowError

__all__ = ["MaskWriter", "overlay_strip"]

_OVERLAY_COLOUR = np.array([255, 64, 32], dtype=np.float32)


class MaskWriter(BasePredictionWriter):
    """Saves every predicted mask; overlays for the first ``max_overlays`` expressions.

    Args:
        output_dir: where the PNG folders, the overlays and ``answers.json`` go.
        max_overlays: overlay strips to write in all (0: none); rank 0 writes them.
    """

    def __init__(self, output_dir: str, max_overlays: int = 16):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.max_overlays = max_overlays
        self._reset()

    def _reset(self) -> None:
        self.written_overlays = 0
        self.answers: dict[str, str] = {}
        self.truncated: list[str] = []  # keys of the answers cut off by max_new_tokens
        self.reports_truncation = False  # whether the model's records say it (older ones do not)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._reset()  # the same callback may serve several predict runs

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        """``prediction``: the model's records, one per sample of ``batch``, each with
        ``video``, ``exp_id``, ``frame_names``, ``masks`` ((T, H, W) bool or None: no [SEG]),
        ``answer`` and optionally ``truncated``; other keys are ignored."""
        writes_overlays = trainer.strategy.global_rank == 0  # one rank, so the cap holds in all
        for index, record in enumerate(prediction):
            key = f"{record['video']}/{record['exp_id']}"
            folder = self.output_dir / record["video"] / record["exp_id"]
            folder.mkdir(parents=True, exist_ok=True)
            masks = record["masks"]
            height, width = batch.original_sizes[index]
            if masks is None:  # no [SEG]: an empty mask per frame, still written
                masks = torch.zeros(len(record["frame_names"]), height, width, dtype=torch.bool)
            for name, mask in zip(record["frame_names"], masks):
                Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(folder / f"{name}.png")
            self.answers[key] = record["answer"]
            cut_off = bool(record.get("truncated", False))
            self.reports_truncation |= "truncated" in record
            if cut_off:
                self.truncated.append(key)
            if writes_overlays and self.written_overlays < self.max_overlays:
                caption = f"{batch.queries[index]} -> {record['answer']}" + (" [cut off]" if cut_off else "")
                strip = overlay_strip(batch.frames[index], masks, caption)
                (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
                strip.save(self.output_dir / "overlays" / f"{record['video']}_{record['exp_id']}.jpg", quality=90)
                self.written_overlays += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        strategy = trainer.strategy
        self.output_dir.mkdir(parents=True, exist_ok=True)
        truncated = self.truncated if self.reports_truncation else None
        self._shard(strategy.global_rank).write_text(json.dumps({"answers": self.answers, "truncated": truncated}))
        strategy.barrier()  # every rank's shard is on disk before rank 0 reads them
        if strategy.global_rank == 0:
            self._merge_shards(getattr(strategy, "world_size", 1))  # a single-device strategy has none

    def _shard(self, rank: int) -> Path:
        return self.output_dir / f"answers.rank{rank}.json"

    def _merge_shards(self, world_size: int) -> None:
        """Rank 0: ``answers.rank<k>.json`` for k < world_size -> answers.json (+ truncated.json)."""
        shards = [self._shard(rank) for rank in range(world_size)]
        absent = [str(shard) for shard in shards if not shard.is_file()]
        if absent:
            raise SparrowError(
                f"MaskWriter: answer shards of other ranks not found: {', '.join(absent)}; "
                "output_dir must be a folder every rank can see (one machine or a shared filesystem)"
            )
        contents = [json.loads(shard.read_text()) for shard in shards]
        answers = {key: text for content in contents for key, text in content["answers"].items()}
        (self.output_dir / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True))
        reported = [content["truncated"] for content in contents if content["truncated"] is not None]
        truncated_file = self.output_dir / "truncated.json"
        if reported:
            truncated_file.write_text(json.dumps(sorted({key for keys in reported for key in keys}), indent=1))
        else:
            truncated_file.unlink(missing_ok=True)  # a previous run's list would describe another model
        for shard in shards:
            shard.unlink()


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
