"""The tiny host's pre-training: what released hosts arrive with, at toy scale.

Real hosts come with a CLIP/InternVideo/Qwen vision tower, a language model that reads
them, and a SAM2 that segments what it is prompted with. The tiny host starts random, and
SPARROW's stage 1 cannot learn all of that in minutes (measured: with random parts the
[SEG] state barely depends on the query, and the tiny SAM2 segments every shape). So the
tiny host gets its own pre-training, in two independent parts that ``make tiny-host``
runs side by side, one CPU thread each (two small processes use the two cores better
than one: 1.4x from a second thread, 2x from a second process):

- :class:`TinySAM2Pretraining`, SAM2's promptable segmentation on single synthetic
  frames: box prompts (SAM2's own task) and attribute prompts, two learned tokens
  ("red" + "circle", "green" + "any shape", or an absent combination whose answer is an
  empty mask). A dense head on the image features predicts each patch's colour and
  shape; it makes both prompt kinds learn clearly faster. The attribute tokens and the
  dense head are pre-training scaffolding: only SAM2's own weights are released.
- :class:`TinyHostPretraining`, the video LLM: a dense colour/shape head on the ViT's
  patches (the semantic pre-training a CLIP tower has), and referring question answering
  on the train split: given the video and ``question : <query> answer :``, the LM learns
  to describe the referent (``red circle .``, ``red circle and red star .``,
  ``no target .``) and linear probes on the answer position's hidden state learn its
  colour, shape and count. The probes make that position carry the referent, which is
  where SPARROW later reads [SEG] (the tiny host's answer is ``[SEG] .``).

- :class:`TinyGroundingHeadPretraining`, run after both: the host's grounding head (its
  ``text_hidden_fcs``) learns to map the answer position's hidden state to the SAM2
  attribute prompt of what the query names ("the two green shapes" -> green + any shape).
  Trained through SAM2's mask loss alone, SPARROW's stage 1 needs far more than its budget
  to find that prompt space (measured: J&F 0.31 after 600 steps against 0.50 with the head).

All three write into one release folder (``sam2.safetensors``, the host files and the
attribute prompts the head is aligned to) that
:meth:`~sparrow_plugin.hosts.tiny.TinyVideoLLM.from_pretrained` reads.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.data.synthetic import COLOURS, PLURALS, SHAPES
from sparrow_plugin.data.synthetic_scenes import SceneFrameDataset, SyntheticScenes, collate_scene_frames, patch_labels
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.hosts.tiny import TinyHostConfig, TinyVideoLLM
from sparrow_plugin.interfaces import DecoderSpec
from sparrow_plugin.losses import causal_lm_loss, mask_bce_loss, mask_dice_loss, presence_loss
from sparrow_plugin.metrics import jaccard
from sparrow_plugin.modules import PromptProjection

__all__ = [
    "TinySAM2Pretraining",
    "SceneFrameDataModule",
    "TinyHostPretraining",
    "TinyHostDataModule",
    "TinyGroundingHeadPretraining",
    "named_attributes",
]

_ANY_COLOUR, _ANY_SHAPE = len(COLOURS) + len(SHAPES), len(COLOURS) + len(SHAPES) + 1
ATTRIBUTE_PROMPTS_FILE = "attribute_prompts.safetensors"
_COLOUR_NAMES = list(COLOURS)
_SINGULAR = {plural: singular for singular, plural in PLURALS.items()}


# ----------------------------------------------------------------------------- SAM2


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
        features, _, sizes = sam.encode_frames(self.decoder._normalise(batch["image"]))
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


# ----------------------------------------------------------------------------- the video LLM


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


# ----------------------------------------------------------------------------- grounding head


class TinyGroundingHeadPretraining(L.LightningModule):
    """Fits the host's grounding head to its SAM2's attribute prompts (see the module docstring).

    Args:
        release: the folder both other parts wrote; the host is saved back there with
            its head.
        tokens: prompt tokens of the head (the SAM2 part prompts with 2: colour, shape).
    """

    def __init__(
        self,
        release: str,
        tokens: int = 2,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.host = TinyVideoLLM.from_pretrained(release)
        self.host.requires_grad_(False)
        prompts = load_file(Path(release) / ATTRIBUTE_PROMPTS_FILE)["weight"]
        self.register_buffer("attribute_prompts", prompts, persistent=False)
        self.head = PromptProjection(self.host.hidden_size, prompts.shape[1], tokens)

    def training_step(self, batch, batch_idx: int):
        with torch.no_grad():
            self.host.eval()
            visual = self.host.encode_video(batch.frames)
            answer = self.host.answer_template.format(grounding=".")  # any text: only the position before it is read
            inputs = self.host.build_inputs(visual, batch.queries, [answer] * len(batch))
            states = TinyHostPretraining._answer_states(inputs, self.host(inputs))
        targets = self.attribute_prompts[torch.tensor([named_attributes(q) for q in batch.queries], device=self.device)]
        loss = F.mse_loss(self.head(states), targets)
        self.log(f"{'train' if self.training else 'val'}/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch, batch_idx: int):
        self.training_step(batch, batch_idx)

    def configure_optimizers(self):
        return _optimizers(self, self.head.parameters())

    def on_train_end(self) -> None:
        self.host.config.grounding_head_tokens = self.hparams.tokens
        self.host.config.grounding_head_dim = self.attribute_prompts.shape[1]
        self.host.grounding_head = self.head
        self.host.save_pretrained(self.hparams.release)


def named_attributes(query: str) -> tuple[int, int]:
    """Attribute prompt ids of what a synthetic query names: its first colour word and first
    shape word ("any" when it names none): "the two circles" -> (any colour, circle)."""
    words = query.split()
    colour = next((_COLOUR_NAMES.index(w) for w in words if w in _COLOUR_NAMES), None)
    shape = next((SHAPES.index(_SINGULAR.get(w, w)) for w in words if _SINGULAR.get(w, w) in SHAPES), None)
    return (_ANY_COLOUR if colour is None else colour), (_ANY_SHAPE if shape is None else len(COLOURS) + shape)



def _optimizers(module, parameters):
    optimizer = module.optimizer_factory(parameters)
    if module.scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": module.scheduler_factory(optimizer), "interval": "step"}}
