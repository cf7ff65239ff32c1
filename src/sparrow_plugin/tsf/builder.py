"""``sparrow tsf build``: the TSF track cache of a split, through Lightning's predict loop.

The loop shards the split's expressions over devices and nodes with the same strategies
as training (``--devices 2 --strategy ddp``); each rank appends its tracks to its own
shard of the cache (:class:`~sparrow_plugin.tsf.cache.TrackCache`), so an interrupted
build resumes where it stopped: rank 0 opens the cache (checking it is this build's, and
dropping a line cut off mid-write), every rank skips the expressions already built.

Sources of tracks:

- ``annotation``: the referred objects' boxes from the split's masks (the released code's
  way), read from the RLEs without decoding them.
- ``detect+track`` (the paper's way): GroundingDINO (:mod:`sparrow_plugin.tsf.detect`)
  finds the expression on every frame; the most confident detection of the clip starts a
  track (:mod:`sparrow_plugin.tsf.trackers`): ``iou`` through the other frames'
  detections, or ``sam2``, SAM2 propagating the box (any config and checkpoint). A clip where nothing is detected gets a track of stand-in boxes with
  score 0. The producer records the detector's file digest and both thresholds, so a cache
  of another detector is refused.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset


from sparrow_plugin.data.layouts import dataset_class
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.errors import ConfigError
from sparrow_plugin.tsf.cache import TrackCache, dataset_record, file_digest
from sparrow_plugin.tsf.trackers import IoUVelocityTracker, SAM2BoxTracker
from sparrow_plugin.tsf.tracks import Track, annotation_track

__all__ = ["SOURCES", "TrackBuilder", "build_track_cache"]

SOURCES = ("annotation", "detect+track")


class _Expressions(Dataset):
    """The split's expressions not yet in the cache: (key, object boxes, visibility) for
    ``annotation``, (key, text, (T, 3, H, W) frames) for ``detect+track``."""

    def __init__(self, dataset: MeViSDataset, done: set[str], source: str):
        self.dataset, self.source = dataset, source
        self.expressions = [e for e in dataset.expressions if f"{e.video}/{e.exp_id}" not in done]

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int):
        expression = self.expressions[index]
        key = f"{expression.video}/{expression.exp_id}"
        if self.source == "annotation":
            return key, *self.dataset.annotation_boxes(expression)
        frames = [self.dataset.read_frame(expression.video, name) for name in expression.frames]
        return key, expression.text, self.dataset.to_tensor(np.stack(frames))


class TrackBuilder(L.LightningModule):
    """Tracks of one split into one cache (see the module docstring).

    Args:
        root, split: the dataset and the split to build.
        layout: the dataset's layout (``sparrow_plugin.data.layouts``).
        out: the cache folder.
        source: where the boxes come from (:data:`SOURCES`).
        overwrite: replace a cache another build made (otherwise refused).
        detector: ``detect+track``: the GroundingDINO folder; box_threshold, text_threshold
            its thresholds (None: :class:`GroundingDinoDetector`'s defaults).
        tracker: ``iou`` or ``sam2`` (with ``sam2_config`` and ``sam2_checkpoint``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        out: str | Path,
        source: str = "annotation",
        overwrite: bool = False,
        layout: str = "mevis",
        detector: str | Path | None = None,
        box_threshold: float | None = None,
        text_threshold: float | None = None,
        tracker: str = "iou",
        sam2_config: str | None = None,
        sam2_checkpoint: str | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"tsf source must be one of {list(SOURCES)}, got {source!r}")
        producer = {"source": source, "dataset": dataset_record(root, split, layout)}
        self.layout = layout
        self.detector = self.tracker = None
        if source == "detect+track":
            if detector is None:
                raise ConfigError("tsf source 'detect+track' needs a detector: give --detector, a GroundingDINO folder")
            from sparrow_plugin.tsf.detect import GroundingDinoDetector

            thresholds = {"box_threshold": box_threshold, "text_threshold": text_threshold}
            self.detector = GroundingDinoDetector(detector, **{name: value for name, value in thresholds.items() if value is not None})
            weights = sorted(p for p in Path(detector).iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".txt"))
            producer["detector"] = {
                "digest": file_digest(*weights), "box_threshold": self.detector.box_threshold, "text_threshold": self.detector.text_threshold,
            }
            if tracker == "iou":
                self.tracker = IoUVelocityTracker()
                producer["tracker"] = {"name": "iou", "min_iou": self.tracker.min_iou, "patience": self.tracker.patience}
            elif tracker == "sam2":
                if sam2_config is None or sam2_checkpoint is None:  # an untrained SAM2 tracks nothing
                    raise ConfigError("tracker 'sam2' needs --sam2-config (a SAM2 config name or YAML) and --sam2-checkpoint (its official .pt)")
                self.tracker = SAM2BoxTracker(sam2_config, checkpoint=sam2_checkpoint)
                producer["tracker"] = {"name": "sam2", "config": sam2_config, "digest": file_digest(sam2_checkpoint)}
            else:
                raise ConfigError(f"tracker must be 'iou' or 'sam2', got {tracker!r}")
        self.root, self.split, self.source, self.overwrite = Path(root), split, source, overwrite
        self.cache = TrackCache(out, producer)
        self.done: set[str] = set()

    def setup(self, stage: str) -> None:
        # rank 0 opens (and repairs) the cache before any rank reads what is done
        if self.global_rank == 0:
            self.cache.open_for_build(self.overwrite)
        self.trainer.strategy.barrier("tsf-cache-open")
        self.done = set(self.cache.built())

    def predict_dataloader(self) -> DataLoader:
        expressions = _Expressions(dataset_class(self.layout)(self.root, self.split, image_size=32), self.done, self.source)
        return DataLoader(expressions, batch_size=8 if self.source == "annotation" else 1, collate_fn=list)

    def predict_step(self, batch, batch_idx: int) -> list[tuple[str, Track]]:
        if self.source == "annotation":
            return [(key, annotation_track(boxes, visible)) for key, boxes, visible in batch]
        return [(key, self._detect_and_track(text, frames)) for key, text, frames in batch]

    def _detect_and_track(self, text: str, frames: torch.Tensor) -> Track:
        detections = [self.detector.detect(frame, text) for frame in frames]
        best = [float(scores[0]) if len(scores) else -1.0 for _, scores in detections]
        start = max(range(len(best)), key=best.__getitem__)
        if best[start] < 0:  # nothing found anywhere: stand-in boxes, not candidates
            return Track.not_found(len(frames))
        return self.tracker.track(frames, start, detections[start][0][0], detections)


class _CacheWriter(BasePredictionWriter):
    """Each rank appends its batches' tracks to its own shard as they finish."""

    def __init__(self):
        super().__init__(write_interval="batch")

    def write_on_batch_end(self, trainer, pl_module: TrackBuilder, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        pl_module.cache.append(trainer.global_rank, prediction)


def build_track_cache(
    root: str | Path, split: str, out: str | Path, source: str = "annotation", overwrite: bool = False, detector: str | None = None,
    box_threshold: float | None = None, text_threshold: float | None = None, tracker: str = "iou", sam2_config: str | None = None,
    sam2_checkpoint: str | None = None, layout: str = "mevis", **trainer_args,
) -> int:
    """Build (or resume) the cache; returns how many tracks it holds (as this rank sees it
    at the end). ``trainer_args`` go to the Lightning Trainer (accelerator, devices,
    strategy, num_nodes)."""
    builder = TrackBuilder(
        root, split, out, source, overwrite, layout, detector=detector, box_threshold=box_threshold, text_threshold=text_threshold,
        tracker=tracker, sam2_config=sam2_config, sam2_checkpoint=sam2_checkpoint,
    )
    trainer = L.Trainer(logger=False, enable_checkpointing=False, callbacks=[_CacheWriter()], enable_model_summary=False, **trainer_args)
    trainer.predict(builder, return_predictions=False)
    return len(builder.cache.built())
