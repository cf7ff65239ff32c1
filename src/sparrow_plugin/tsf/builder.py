"""``sparrow tsf build``: the TSF track cache of a split, through Lightning's predict loop.

The loop shards the split's expressions over devices and nodes with the same strategies
as training (``--devices 2 --strategy ddp``); each rank appends its tracks to its own
shard of the cache (:class:`~sparrow_plugin.tsf.cache.TrackCache`), so an interrupted
build resumes where it stopped: rank 0 opens the cache (checking it is this build's, and
dropping a line cut off mid-write), every rank skips the expressions already built.

Sources of tracks:

- ``annotation``: the referred objects' boxes from the split's masks (the released code's
  way), read from the RLEs without decoding them.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.errors import ConfigError
from sparrow_plugin.tsf.cache import TrackCache, dataset_record
from sparrow_plugin.tsf.tracks import Track, annotation_track

__all__ = ["SOURCES", "TrackBuilder", "build_track_cache"]

SOURCES = ("annotation",)


class _Expressions(Dataset):
    """The split's expressions not yet in the cache, as (key, object boxes, visibility)."""

    def __init__(self, dataset: MeViSDataset, done: set[str]):
        self.dataset = dataset
        self.expressions = [e for e in dataset.expressions if f"{e.video}/{e.exp_id}" not in done]

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int):
        expression = self.expressions[index]
        boxes, visible = self.dataset.annotation_boxes(expression)
        return f"{expression.video}/{expression.exp_id}", boxes, visible


class TrackBuilder(L.LightningModule):
    """Tracks of one split into one cache (see the module docstring).

    Args:
        root, split: the dataset (MeViS layout) and the split to build.
        out: the cache folder.
        source: where the boxes come from (:data:`SOURCES`).
        overwrite: replace a cache another build made (otherwise refused).
    """

    def __init__(self, root: str | Path, split: str, out: str | Path, source: str = "annotation", overwrite: bool = False):
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"tsf source must be one of {list(SOURCES)}, got {source!r}")
        self.root, self.split, self.source, self.overwrite = Path(root), split, source, overwrite
        self.cache = TrackCache(out, {"source": source, "dataset": dataset_record(root, split)})
        self.done: set[str] = set()

    def setup(self, stage: str) -> None:
        # rank 0 opens (and repairs) the cache before any rank reads what is done
        if self.global_rank == 0:
            self.cache.open_for_build(self.overwrite)
        self.trainer.strategy.barrier("tsf-cache-open")
        self.done = set(self.cache.built())

    def predict_dataloader(self) -> DataLoader:
        expressions = _Expressions(MeViSDataset(self.root, self.split, image_size=32), self.done)
        return DataLoader(expressions, batch_size=8, collate_fn=list)

    def predict_step(self, batch, batch_idx: int) -> list[tuple[str, Track]]:
        return [(key, annotation_track(boxes, visible)) for key, boxes, visible in batch]


class _CacheWriter(BasePredictionWriter):
    """Each rank appends its batches' tracks to its own shard as they finish."""

    def __init__(self):
        super().__init__(write_interval="batch")

    def write_on_batch_end(self, trainer, pl_module: TrackBuilder, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        pl_module.cache.append(trainer.global_rank, prediction)


def build_track_cache(root: str | Path, split: str, out: str | Path, source: str = "annotation", overwrite: bool = False, **trainer_args) -> int:
    """Build (or resume) the cache; returns how many tracks it holds (as this rank sees it
    at the end). ``trainer_args`` go to the Lightning Trainer (accelerator, devices,
    strategy, num_nodes)."""
    builder = TrackBuilder(root, split, out, source, overwrite)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, callbacks=[_CacheWriter()], enable_model_summary=False, **trainer_args)
    trainer.predict(builder, return_predictions=False)
    return len(builder.cache.built())
