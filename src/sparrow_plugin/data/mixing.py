"""Training on a mix of datasets with per-dataset sampling weights, reproducibly and resumably.

A recipe lists the sources (``ReferringVideoDataModule(train_mix=[...])``)::

    train_mix:
      - {root: data/mevis, layout: mevis, split: train, weight: 2}
      - {root: data/ref-youtube-vos, layout: ref-youtube-vos, split: train, weight: 1}

Each epoch draws ``samples_per_epoch`` samples (default: all sources' sizes summed): the
source of each draw is chosen with probability proportional to its weight, and within a
source samples come in a random order that runs through all of them before any repeats.
The stream is a function of the seed and the epoch alone, so it is the same on every run and
on any number of devices (rank r takes draws r, r + world, ...). The data module records
how many batches of the epoch were consumed in the checkpoint, and a resumed run skips them:
it draws exactly the batches the interrupted run would have drawn next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import DistributedSampler

__all__ = ["TrainSource", "MixSampler"]


@dataclass
class TrainSource:
    """One dataset of a training mix.

    Args:
        root: the dataset's root folder.
        layout: ``mevis`` or ``ref-youtube-vos`` (see ``ReferringVideoDataModule``).
        split: the split to train on.
        weight: its share of the draws, relative to the other sources' (> 0).
    """

    root: str
    layout: str = "mevis"
    split: str = "train"
    weight: float = 1.0


class MixSampler(DistributedSampler):
    """Indices into the concatenation of the sources, drawn by weight (module docstring).

    A ``DistributedSampler`` so that Lightning leaves it in place under DDP (it shards
    itself: rank ``r`` of ``world`` takes every world-th draw of the epoch's stream).

    Args:
        sizes: samples of each source, in the order they are concatenated.
        weights: sampling weight of each source.
        samples_per_epoch: draws per epoch, over all ranks; None = ``sum(sizes)``.
        seed: the stream's seed.
        world, rank: the process group's size and this process's rank.

    ``skip`` (attribute, 0 by default): draws of this rank to leave out at the start of the
    current epoch, set when resuming inside it.
    """

    def __init__(self, sizes, weights, samples_per_epoch: int | None = None, seed: int = 0, world: int = 1, rank: int = 0):
        # the parent's state is not used; it is called for the attributes Lightning reads
        super().__init__(range(sum(sizes)), num_replicas=world, rank=rank, shuffle=False)
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"one weight per source: {len(sizes)} sources, {len(weights)} weights")
        if any(w <= 0 for w in weights) or any(s <= 0 for s in sizes):
            raise ValueError(f"sources need samples and positive weights, got sizes {list(sizes)} and weights {list(weights)}")
        self.sizes, self.weights = list(sizes), np.asarray(weights, dtype=np.float64)
        self.samples_per_epoch = samples_per_epoch if samples_per_epoch is not None else sum(sizes)
        self.seed, self.world, self.rank = seed, world, rank
        self.skip = 0

    def stream(self, epoch: int) -> np.ndarray:
        """All ranks' draws of an epoch, as indices into the concatenated sources."""
        rng = np.random.default_rng([self.seed, epoch])
        sources = rng.choice(len(self.sizes), size=self.samples_per_epoch, p=self.weights / self.weights.sum())
        offsets = np.cumsum([0, *self.sizes[:-1]])
        draws = np.empty(self.samples_per_epoch, dtype=np.int64)
        for source, size in enumerate(self.sizes):
            positions = np.flatnonzero(sources == source)
            rounds = -(-len(positions) // size) if len(positions) else 0
            order = np.concatenate([rng.permutation(size) for _ in range(rounds)]) if rounds else np.empty(0, np.int64)
            draws[positions] = offsets[source] + order[: len(positions)]
        return draws

    def __iter__(self):
        mine = self.stream(self.epoch)[self.rank :: self.world][: self.samples_per_epoch // self.world]
        return iter(mine[self.skip :].tolist())

    def __len__(self) -> int:
        return self.samples_per_epoch // self.world - self.skip

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a skip holds for the epoch it was read in only
        super().set_epoch(epoch)
