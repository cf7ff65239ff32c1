"""Class-agnostic boxes from COCO-format detection files, for the proposer's pre-training.

Any COCO-format JSON works (COCO, Objects365, OpenImages, V3Det, SA-1B as the authors used
them, or our synthetic benchmark's ``boxes_coco.json``); it is read with pycocotools.
Categories are ignored, crowd boxes are skipped, and so are boxes narrower or lower than
2 pixels (the authors' ``min_wh``). Several sources mix with a weight each; every batch
holds images of one source only, because a source's data family decides which objectness
head it trains (``coco`` or ``sa1b``), as in the authors' sampler.

An item: ``image`` (3, S, S) float in [0, 1] (resized to a square, as the authors' final
resize), ``boxes`` (N, 4) normalised cxcywh, ``head`` str, ``source`` int, ``image_id``
int. Training items are flipped horizontally with probability 0.5.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from sparrow_plugin.errors import ConfigError, DatasetError
from sparrow_plugin.frames import resize_frames
from sparrow_plugin.grounding.proposer import OBJECTNESS_HEADS

__all__ = ["BoxSource", "CocoBoxes", "SourceBatchSampler", "BoxDataModule", "collate_boxes"]

MIN_BOX_SIDE = 2.0  # pixels


@dataclass
class BoxSource:
    """One COCO-format source.

    Attributes:
        annotations: the COCO JSON file.
        images: folder its ``file_name`` entries are relative to (default: the JSON's folder).
        head: the objectness head it trains: ``coco`` (COCO-like boxes) or ``sa1b``.
        weight: images of this source per epoch, as a multiple of its size (1: each once).
        samples: images of this source per epoch, whatever its size (the authors'
            ``--samples-per-dataset 20000``); overrides ``weight``.
    """

    annotations: str
    images: str | None = None
    head: str = "coco"
    weight: float = 1.0
    samples: int | None = None

    def __post_init__(self):
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"box source samples must be >= 1, got {self.samples} ({self.annotations})")
        if self.head not in OBJECTNESS_HEADS:
            raise ConfigError(f"box source head must be one of {OBJECTNESS_HEADS}, got {self.head!r} ({self.annotations})")
        if self.weight <= 0:
            raise ConfigError(f"box source weight must be > 0, got {self.weight} ({self.annotations})")


class CocoBoxes(Dataset):
    """The images of one COCO-format file and their class-agnostic boxes."""

    def __init__(self, source: BoxSource, image_size: int, train: bool, index: int = 0):
        self.source, self.image_size, self.train, self.index = source, image_size, train, index
        path = Path(source.annotations)
        if not path.is_file():
            raise DatasetError(path, "box annotations not found (a COCO-format detection JSON)")
        self.images_root = Path(source.images) if source.images else path.parent
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(path))
        except (ValueError, KeyError, TypeError, AssertionError) as error:
            raise DatasetError(path, f"not a COCO-format detection file ({type(error).__name__}: {error})") from None
        self.image_ids = sorted(self.coco.getImgIds())
        if not self.image_ids:
            raise DatasetError(path, "lists no images")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, position: int) -> dict:
        image_id = self.image_ids[position]
        info = self.coco.imgs[image_id]
        pixels = self._read(self.images_root / info["file_name"])
        height, width = pixels.shape[:2]
        boxes = self.boxes(image_id, width, height)
        image = resize_frames(torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255), (self.image_size,) * 2)[0]
        if self.train and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes[:, 0] = 1 - boxes[:, 0]
        return {"image": image, "boxes": boxes, "head": self.source.head, "source": self.index, "image_id": image_id}

    def boxes(self, image_id: int, width: int, height: int) -> torch.Tensor:
        """(N, 4) normalised cxcywh boxes of an image, crowd and degenerate boxes left out."""
        kept = []
        for annotation in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = annotation["bbox"]
            if annotation.get("iscrowd", 0) or w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
                continue
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
            kept.append([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
        return torch.tensor(kept, dtype=torch.float32).reshape(-1, 4).clamp(0, 1)

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(path, "image listed in the box annotations not found") from None
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetError(path, f"corrupt image, cannot decode it ({error})") from None


class SourceBatchSampler(Sampler[list[int]]):
    """Batches of one source each: per epoch, ``weight x size`` images of every source (a
    fresh permutation, repeated when the weight is above 1), cut into batches and shuffled;
    the seed and the epoch (Lightning calls ``set_epoch``) decide the order. Training drops
    each source's last partial batch; evaluation (``shuffle=False``) keeps every image once.
    Under several processes each takes every world_size-th batch (in training, as many as
    every rank can take)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int = 0, shuffle: bool = True):
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.sizes, self.weights, self.batch_size, self.seed, self.shuffle = list(sizes), list(weights), batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _counts(self) -> list[int]:
        """Images of each source per epoch, training's cut to full batches."""
        counts = [max(self.batch_size, int(round(weight * size))) if self.shuffle else size for size, weight in zip(self.sizes, self.weights)]
        return [count // self.batch_size * self.batch_size for count in counts] if self.shuffle else counts

    def _rank(self) -> tuple[int, int]:
        return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for offset, size, count in zip(self.offsets, self.sizes, self._counts()):
            repeats = math.ceil(count / size) if size else 0
            order = np.concatenate([rng.permutation(size) if self.shuffle else np.arange(size) for _ in range(repeats)])[:count] if repeats else []
            batches += [(offset + order[i : i + self.batch_size]).tolist() for i in range(0, count, self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        rank, world = self._rank()
        # training: every rank the same number of steps; evaluation: every image once
        end = len(batches) - len(batches) % world if self.shuffle else len(batches)
        return iter(batches[rank:end:world])

    def __len__(self) -> int:
        batches = sum(math.ceil(count / self.batch_size) for count in self._counts())
        rank, world = self._rank()
        return batches // world if self.shuffle else len(range(rank, batches, world))


def collate_boxes(items: list[dict]) -> dict:
    heads = {item["head"] for item in items}
    if len(heads) != 1:
        raise ConfigError(f"a batch of box data must hold one objectness head, got {sorted(heads)}")
    return {
        "images": torch.stack([item["image"] for item in items]),
        "boxes": [item["boxes"] for item in items],
        "head": heads.pop(),
        "image_ids": [item["image_id"] for item in items],
    }


class BoxDataModule(L.LightningDataModule):
    """Training and validation box data for the proposer.

    Args:
        sources: training sources (:class:`BoxSource` fields as mappings).
        val_sources: validation sources (their images once each, in order).
        image_size: images are resized to this square (the proposer's input).
        batch_size: images per batch (one source per batch).
        val_limit: validate on the first N images of each validation source; None: all.
        num_workers: DataLoader workers.
        seed: the batch order's seed.
    """

    def __init__(
        self,
        sources: list[dict],
        val_sources: list[dict] | None = None,
        image_size: int = 448,
        batch_size: int = 16,
        val_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sources = [BoxSource(**s) for s in sources]
        self.val_sources = [BoxSource(**s) for s in (val_sources or [])]
        if not self.sources:
            raise ConfigError("the proposer's box data needs at least one source")

    @classmethod
    def missing_inputs(cls, stage: str, init_args: dict) -> list[str]:
        """The box files a stage reads that are not on disk (asked before anything loads)."""
        sources = list(init_args.get("sources") or []) if stage == "fit" else []
        sources += list(init_args.get("val_sources") or [])
        missing = []
        for source in sources:
            annotations = Path(source["annotations"])
            if not annotations.is_file():
                missing.append(f"{annotations}: COCO-format box annotations (a proposer data source)")
            elif source.get("images") and not Path(source["images"]).is_dir():
                missing.append(f"{source['images']}: the images of {annotations}")
        return missing

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        datasets = [CocoBoxes(s, hp.image_size, train=True, index=i) for i, s in enumerate(self.sources)]
        weights = [s.samples / len(d) if s.samples is not None else s.weight for s, d in zip(self.sources, datasets)]
        sampler = SourceBatchSampler([len(d) for d in datasets], weights, hp.batch_size, seed=hp.seed)
        return DataLoader(ConcatDataset(datasets), batch_sampler=sampler, collate_fn=collate_boxes, num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        datasets = [CocoBoxes(s, hp.image_size, train=False, index=i) for i, s in enumerate(self.val_sources)]
        if hp.val_limit is not None:
            datasets = [Subset(d, range(min(hp.val_limit, len(d)))) for d in datasets]
        sizes = [len(d) for d in datasets]
        sampler = SourceBatchSampler(sizes, [1.0] * len(sizes), hp.batch_size, shuffle=False)
        return DataLoader(ConcatDataset(datasets), batch_sampler=sampler, collate_fn=collate_boxes, num_workers=hp.num_workers)
