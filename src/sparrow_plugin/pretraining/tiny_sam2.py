"""The tiny host's pre-training, the SAM2 part (see :mod:`sparrow_plugin.pretraining`).

:class:`TinySAM2Pretraining`, SAM2's promptable segmentation on single synthetic
frames: box prompts (SAM2's own task) and attribute prompts, two learned tokens
("red" + "circle", "green" + "any shape", or an absent combination whose answer is an
empty mask). A dense head on the image features predicts each patch's colour and
shape; it makes both prompt kinds learn clearly faster. The attribute tokens and the
dense head are pre-training scaffolding: only SAM2's own weights are released.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Subset

from sparrow_plugin.data.synthetic import COLOURS, SHAPES
from sparrow_plugin.data.synthetic_scenes import SceneFrameDataset, collate_scene_frames, patch_labels
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.interfaces import DecoderSpec
from sparrow_plugin.losses import mask_bce_loss, mask_dice_loss, presence_loss
from sparrow_plugin.metrics import jaccard
from sparrow_plugin.pretraining.common import _ANY_COLOUR, _ANY_SHAPE, ATTRIBUTE_PROMPTS_FILE, _optimizers

__all__ = ["TinySAM2Pretraining", "SceneFrameDataModule"]


class TinySAM2Pretraining(L.LightningModule):
    """Promptable segmentation pre-training of the tiny SAM2 (see the module docstring).

    Args:
        output: release folder; ``sam2.safetensors`` is written there when fitting ends.
        sam2_config: the SAM2 config to build (random init).
        box_ratio: share of batches prompted with boxes (the rest: attribute tokens).
        absent_ratio: share of attribute prompts naming a colour+shape that is not there.
        dense_weight: weight of the dense colour/shape loss on the image features.
    """

    def __init__(
        self,
        output: str,
        sam2_config: str = "sam2.1_hiera_tiny128",
        box_ratio: float = 0.25,
        absent_ratio: float = 0.15,
        dense_weight: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        # SAM2's own mask gate stays on: absent prompts are then answered by the presence
        # head and the masks' capacity goes to the positives (measured after 600 steps:
        # attribute-prompt J 0.64 with the gate, 0.44 with it lifted)
        self.decoder = SAM2VideoDecoder.from_spec(DecoderSpec(sam2_config), mode="per_frame")
        width = self.decoder.prompt_dim
        self.attribute_tokens = nn.Embedding(len(COLOURS) + len(SHAPES) + 2, width)
        self.dense_heads = nn.ModuleDict(
            {"colour": nn.Conv2d(width, len(COLOURS) + 1, 1), "shape": nn.Conv2d(width, len(SHAPES) + 1, 1)}
        )

    def training_step(self, batch: dict, batch_idx: int):
        generator = torch.Generator().manual_seed(self.global_step)
        use_boxes = torch.rand(1, generator=generator).item() < self.hparams.box_ratio
        images, kind = batch["image"], "box" if use_boxes else "attribute"
        targets, prompt = self._prompts(batch, use_boxes, generator)
        if use_boxes:
            out = self.decoder(images[:, None], None, boxes=prompt[:, None])
        else:
            out = self.decoder(images[:, None], self.attribute_tokens(prompt))
        losses = {
            "bce": mask_bce_loss(out.mask_logits, targets[:, None]),
            "dice": mask_dice_loss(out.mask_logits, targets[:, None]),
            "presence": presence_loss(out.object_logits, targets[:, None]),
        }
        if self.hparams.dense_weight > 0:
            losses["dense"] = self.hparams.dense_weight * self._dense_loss(batch)
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        self.log_dict({f"train/{kind}_{k}": v for k, v in losses.items()}, batch_size=len(images))
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        generator = torch.Generator().manual_seed(batch_idx)  # the same prompts every time
        images = batch["image"]
        for use_boxes, name in ((True, "box"), (False, "attribute")):
            targets, prompt = self._prompts(batch, use_boxes, generator)
            if use_boxes:
                out = self.decoder(images[:, None], None, boxes=prompt[:, None])
            else:
                out = self.decoder(images[:, None], self.attribute_tokens(prompt))
            score = jaccard(out.mask_logits[:, 0] > 0, targets).mean()
            self.log(f"val/{name}_J", score, prog_bar=True, batch_size=len(images))

    def _prompts(self, batch: dict, use_boxes: bool, generator: torch.Generator):
        """Per image: a target mask and its prompt (an xyxy box, or two attribute ids)."""
        targets, prompts = [], []
        size = batch["image"].shape[-1]
        for masks, colours, shapes in zip(batch["masks"], batch["colours"], batch["shapes"]):
            visible = masks.flatten(1).any(1).nonzero().flatten()
            pick = int(visible[torch.randint(len(visible), (1,), generator=generator)]) if len(visible) else 0
            if use_boxes:
                target = masks[pick]
                ys, xs = target.nonzero(as_tuple=True)
                box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() if len(ys) else torch.zeros(4)
                jitter = torch.randn(4, generator=generator) * 0.1 * (box[2:] - box[:2]).repeat(2) if self.training else 0
                prompts.append((box + jitter).clamp(0, size - 1))
                targets.append(target)
                continue
            draw = torch.rand(3, generator=generator)
            if draw[0] < self.hparams.absent_ratio:
                present = set(zip(colours.tolist(), shapes.tolist()))
                absent = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if (c, s) not in present]
                colour, shape = absent[int(draw[1] * len(absent))]
                prompts.append(torch.tensor([colour, len(COLOURS) + shape]))
                targets.append(torch.zeros_like(masks[0]))
                continue
            colour, shape = colours[pick], shapes[pick]
            if draw[2] < 0.6:  # colour and shape
                selected, prompt = (colours == colour) & (shapes == shape), [int(colour), len(COLOURS) + int(shape)]
            elif draw[2] < 0.8:  # every object of one colour
                selected, prompt = colours == colour, [int(colour), _ANY_SHAPE]
            else:  # every object of one shape
                selected, prompt = shapes == shape, [_ANY_COLOUR, len(COLOURS) + int(shape)]
            prompts.append(torch.tensor(prompt))
            targets.append(masks[selected].any(0))
        return torch.stack(targets).to(self.device), torch.stack(prompts).to(self.device)

    def _dense_loss(self, batch: dict) -> torch.Tensor:
        sam = self.decoder.sam
        features, _, sizes = sam.encode_frames(self.decoder.normalise(batch["image"]))
        grid = sizes[-1][0]
        top = features[-1].permute(1, 2, 0).reshape(len(batch["image"]), -1, grid, grid)
        colour = torch.stack([patch_labels(m, c, grid) for m, c in zip(batch["masks"], batch["colours"])]).to(self.device)
        shape = torch.stack([patch_labels(m, s, grid) for m, s in zip(batch["masks"], batch["shapes"])]).to(self.device)
        return F.cross_entropy(self.dense_heads["colour"](top), colour) + F.cross_entropy(self.dense_heads["shape"](top), shape)

    def configure_optimizers(self):
        return _optimizers(self, self.parameters())

    def on_train_end(self) -> None:
        output = Path(self.hparams.output)
        output.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.decoder.sam.state_dict().items()}
        save_file(state, output / "sam2.safetensors")
        save_file({"weight": self.attribute_tokens.weight.detach().cpu().contiguous()}, output / ATTRIBUTE_PROMPTS_FILE)


class SceneFrameDataModule(L.LightningDataModule):
    """Single synthetic frames with every object on them (train / valid_u)."""

    def __init__(self, root: str, image_size: int = 128, batch_size: int = 32, val_images: int = 96, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = SceneFrameDataset(hp.root, "train", hp.image_size)
        return DataLoader(dataset, hp.batch_size, shuffle=True, drop_last=True, num_workers=hp.num_workers, collate_fn=collate_scene_frames)

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = SceneFrameDataset(hp.root, "valid_u", hp.image_size)
        every = max(1, len(dataset) // hp.val_images)
        subset = Subset(dataset, range(0, len(dataset), every))
        return DataLoader(subset, hp.batch_size, num_workers=hp.num_workers, collate_fn=collate_scene_frames)
