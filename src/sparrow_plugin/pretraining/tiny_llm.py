"""The tiny host's pre-training, the video LLM part (see :mod:`sparrow_plugin.pretraining`).

:class:`TinyHostPretraining`, the video LLM: a dense colour/shape head on the ViT's
patches (the semantic pre-training a CLIP tower has), and referring question answering
on the train split: given the video and ``question : <query> answer :``, the LM learns
to describe the referent (``red circle .``, ``red circle and red star .``,
``no target .``) and linear probes on the answer position's hidden state learn its
colour, shape and count. The probes make that position carry the referent, which is
where SPARROW later reads [SEG] (the tiny host's answer is ``[SEG] .``).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader, Subset

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.data.synthetic import COLOURS, SHAPES
from sparrow_plugin.data.synthetic_scenes import SyntheticScenes, patch_labels
from sparrow_plugin.hosts.tiny import TinyHostConfig, TinyVideoLLM
from sparrow_plugin.losses import causal_lm_loss
from sparrow_plugin.pretraining.common import _COLOUR_NAMES, _optimizers

__all__ = ["TinyHostPretraining", "TinyHostDataModule"]


class TinyHostPretraining(L.LightningModule):
    """Pre-training of the tiny host's vision tower and LLM (see the module docstring).

    Args:
        output: release folder; the host is saved there when fitting ends.
        vocabulary_root: the synthetic benchmark whose train expressions make the
            tokenizer's vocabulary.
        config: the host's sizes.
        dense_weight, probe_weight: weights of the dense ViT loss and of the probes.
        seed: initialisation seed of the host.
    """

    def __init__(
        self,
        output: str,
        vocabulary_root: str,
        config: TinyHostConfig | None = None,
        dense_weight: float = 1.0,
        probe_weight: float = 1.0,
        seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        vocabulary = [e.text for e in MeViSDataset(vocabulary_root, "train", image_size=32).expressions]
        vocabulary.append(" ".join(COLOURS) + " " + " ".join(SHAPES) + " and")
        self.host = TinyVideoLLM.create(vocabulary, config or TinyHostConfig(), seed=seed)
        width, hidden = self.host.config.vision_width, self.host.hidden_size
        self.dense_heads = nn.ModuleDict({"colour": nn.Linear(width, len(COLOURS) + 1), "shape": nn.Linear(width, len(SHAPES) + 1)})
        self.probes = nn.ModuleDict(
            {"colour": nn.Linear(hidden, len(COLOURS) + 1), "shape": nn.Linear(hidden, len(SHAPES) + 1), "count": nn.Linear(hidden, 4)}
        )

    def training_step(self, batch: dict, batch_idx: int):
        losses = self._losses(batch)
        loss = losses["lm"] + self.hparams.dense_weight * losses["dense"] + self.hparams.probe_weight * losses["probes"]
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["video"]))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(batch["video"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        video = batch["video"]
        visual = self.host.encode_video(video.frames)
        answers = self._answers(batch)
        generation = self.host.generate(self.host.build_inputs(visual, video.queries), max_new_tokens=8)
        exact = torch.tensor([g.split() == a.split() for g, a in zip(generation.texts, answers)], dtype=torch.float)
        self.log("val/answer_exact", exact.mean(), prog_bar=True, batch_size=len(video))
        inputs = self.host.build_inputs(visual, video.queries, answers)
        states = self._answer_states(inputs, self.host(inputs))
        for name, head in self.probes.items():
            accuracy = (head(states).argmax(-1) == batch["probe_targets"][name]).float().mean()
            self.log(f"val/probe_{name}", accuracy, batch_size=len(video))

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        video = batch["video"]
        visual = self.host.encode_video(video.frames)
        inputs = self.host.build_inputs(visual, video.queries, self._answers(batch))
        output = self.host(inputs)
        states = self._answer_states(inputs, output)
        probes = sum(F.cross_entropy(head(states), batch["probe_targets"][name]) for name, head in self.probes.items())
        patches = visual.dense.permute(0, 1, 3, 4, 2)  # (B, T, g, g, C)
        dense = F.cross_entropy(self.dense_heads["colour"](patches).flatten(0, 3), batch["patch_colours"].flatten()) + F.cross_entropy(
            self.dense_heads["shape"](patches).flatten(0, 3), batch["patch_shapes"].flatten()
        )
        return {"lm": causal_lm_loss(output.logits, inputs.labels), "probes": probes, "dense": dense}

    @staticmethod
    def _answers(batch: dict) -> list[str]:
        return [
            " and ".join(f"{_COLOUR_NAMES[c]} {SHAPES[s]}" for c, s in referents) + " ." if referents else "no target ."
            for referents in batch["referents"]
        ]

    @staticmethod
    def _answer_states(inputs, output) -> torch.Tensor:
        """Hidden state at the position before the answer: where [SEG] is read later."""
        first_answer = (inputs.labels != -100).float().argmax(dim=1)
        return output.grounding_states[torch.arange(len(first_answer)), first_answer - 1]

    def configure_optimizers(self):
        return _optimizers(self, self.parameters())

    def on_train_end(self) -> None:
        self.host.save_pretrained(self.hparams.output)


class TinyHostDataModule(L.LightningDataModule):
    """Referring samples of the synthetic benchmark plus what pre-training supervises:
    the referents' looks (for the answers and probes) and per-patch colour/shape labels."""

    def __init__(
        self, root: str, image_size: int = 128, grid: int = 8, batch_size: int = 16, val_samples: int = 64, num_workers: int = 0
    ):
        super().__init__()
        self.save_hyperparameters()
        self._scenes: dict[str, SyntheticScenes] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        scenes = self._scenes.setdefault(split, SyntheticScenes(hp.root, split, hp.image_size))
        dataset = _WithSceneLabels(MeViSDataset(hp.root, split, image_size=hp.image_size, num_frames=None), scenes, hp.grid)
        if not shuffle:
            every = max(1, len(dataset) // hp.val_samples)
            dataset = Subset(dataset, range(0, len(dataset), every))
        return DataLoader(dataset, hp.batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=hp.num_workers, collate_fn=_collate_with_labels)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid_u", shuffle=False)


class _WithSceneLabels(torch.utils.data.Dataset):
    def __init__(self, dataset: MeViSDataset, scenes: SyntheticScenes, grid: int):
        self.dataset, self.scenes, self.grid = dataset, scenes, grid

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        video = item["video"]
        colours, shapes = self.scenes.attributes(video)
        objects = {o.obj_id: o for o in self.scenes.objects[video]}
        referents = sorted((objects[i].colour, objects[i].shape) for i in item["obj_ids"])
        frame_masks = [self.scenes.masks(video, int(t)) for t in item["frame_indices"]]
        item["patch_colours"] = torch.stack([patch_labels(m, colours, self.grid) for m in frame_masks])
        item["patch_shapes"] = torch.stack([patch_labels(m, shapes, self.grid) for m in frame_masks])
        item["referents"] = referents
        return item


def _collate_with_labels(items: list[dict]) -> dict:
    referents = [item["referents"] for item in items]
    colours = [{c for c, _ in r} for r in referents]
    shapes = [{s for _, s in r} for r in referents]
    return {
        "video": collate_referring(items),
        "referents": referents,
        "patch_colours": torch.stack([item["patch_colours"] for item in items]),
        "patch_shapes": torch.stack([item["patch_shapes"] for item in items]),
        "probe_targets": {
            # one colour (shape) shared by every referent, else "mixed or none"
            "colour": torch.tensor([next(iter(c)) if len(c) == 1 else len(COLOURS) for c in colours]),
            "shape": torch.tensor([next(iter(s)) if len(s) == 1 else len(SHAPES) for s in shapes]),
            "count": torch.tensor([min(len(r), 3) for r in referents]),
        },
    }
