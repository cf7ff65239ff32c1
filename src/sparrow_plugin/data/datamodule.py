"""The Lightning DataModule for referring video segmentation in the MeViS layout."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Subset

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.mevis import MeViSDataset

__all__ = ["ReferringVideoDataModule"]


class ReferringVideoDataModule(L.LightningDataModule):
    """Train / validation / test splits of one MeViS-layout dataset.

    Args:
        root: dataset root (``<root>/<split>/meta_expressions.json`` ...).
        train_split, val_split, test_split: split folder names.
        predict_split: split ``sparrow predict`` runs on (default: the test split; MeViS
            ``valid`` has no masks and is scored by the benchmark server).
        image_size: frames are resized to this square size (the decoder's input).
        train_frames: frames per training sample (random sorted subset); None = all.
        eval_frames: frames per evaluation sample; None = all (the benchmark protocol).
        batch_size, eval_batch_size: samples per batch.
        num_workers: DataLoader workers.
        val_limit: use only the first N validation samples (quick checks); None = all.
    """

    def __init__(
        self,
        root: str | Path,
        train_split: str = "train",
        val_split: str = "valid_u",
        test_split: str = "valid_u",
        predict_split: str | None = None,
        image_size: int = 1024,
        train_frames: int | None = 8,
        eval_frames: int | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        val_limit: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self._datasets: dict[str, MeViSDataset] = {}

    def dataset(self, split: str, training: bool) -> MeViSDataset:
        if split not in self._datasets:
            hp = self.hparams
            self._datasets[split] = MeViSDataset(
                self.root,
                split,
                image_size=hp.image_size,
                num_frames=hp.train_frames if training else hp.eval_frames,
                random_frames=training,
            )
        return self._datasets[split]

    def kinds(self) -> list[str]:
        """Expression kinds of the evaluation splits (for per-kind reporting)."""
        splits = {self.hparams.val_split, self.hparams.test_split}
        return sorted({k for split in splits if (self.root / split).is_dir() for k in self.dataset(split, False).kinds()})

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.hparams.train_split, True), self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset(self.hparams.val_split, False)
        if self.hparams.val_limit is not None:
            dataset = Subset(dataset, range(min(self.hparams.val_limit, len(dataset))))
        return self._loader(dataset, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.hparams.test_split, False), self.hparams.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        split = self.hparams.predict_split or self.hparams.test_split
        return self._loader(self.dataset(split, False), self.hparams.eval_batch_size, shuffle=False)

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_referring,
            persistent_workers=self.hparams.num_workers > 0,
        )
