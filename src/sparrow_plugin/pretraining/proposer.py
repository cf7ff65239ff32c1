"""The class-agnostic proposer's pre-training on box data (``sparrow fit --config
recipes/<host>/proposer.yaml``), as the authors' ``train_det_sam2.py`` does it: the SAM2
image encoder frozen, everything else trained with Hungarian-matched focal + L1 + GIoU
losses on every decoder layer and the encoder's proposals, ``sampling_offsets`` at a tenth
of the learning rate. Validation reports class-agnostic average recall at 10, 100 and 300
proposals (torchmetrics' COCO evaluation, IoU 0.5:0.95). When fitting ends the proposer is
written as a release in the authors' layout, which stage 2 reads like theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from safetensors.torch import load_file
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from sparrow_plugin.decoder.build import build_sam2
from sparrow_plugin.errors import CheckpointError
from sparrow_plugin.grounding.proposer import ClassAgnosticProposer, ProposerConfig, proposer_losses
from sparrow_plugin.grounding.releases import SAM2FeatureExtractor, write_proposer_release
from sparrow_plugin.pretraining.common import _optimizers

__all__ = ["ProposerPretraining", "RECALL_AT"]

RECALL_AT = (10, 100, 300)  # proposals per image at which average recall is reported
_SLOW_PARAMETERS = ("sampling_offsets", "reference_points")  # the authors' lr x 0.1


class ProposerPretraining(L.LightningModule):
    """Pre-training of :class:`~sparrow_plugin.grounding.proposer.ClassAgnosticProposer`.

    Args:
        output: release folder written when fitting ends.
        sam2_config: the SAM2 config whose image encoder makes the features (frozen).
        sam2_weights: its weights, an official checkpoint (``.pt``) or a SAM2 state dict
            (``.safetensors``, e.g. a tiny host's ``sam2.safetensors``); None: random.
        image_size: input size of the feature pass (the authors': 448; a host whose stage 2
            reads the decoder's own features uses the decoder's size).
        proposer: ProposerConfig fields (``feature_channels`` comes from the encoder).
        slow_lr_scale: learning-rate factor of the deformable sampling offsets.
    """

    def __init__(
        self,
        output: str,
        sam2_config: str = "sam2_hiera_l",
        sam2_weights: str | None = None,
        image_size: int = 448,
        proposer: dict | None = None,
        slow_lr_scale: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        sam2 = build_sam2(sam2_config, **_sam2_weights(sam2_weights))
        self.features = SAM2FeatureExtractor(sam2.image_encoder, image_size)
        self.proposer = ClassAgnosticProposer(ProposerConfig(feature_channels=sam2.image_encoder.neck.d_model, **(proposer or {})))
        self.recall = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", max_detection_thresholds=list(RECALL_AT))
        self.strict_loading = False  # checkpoints leave out the frozen encoder (see on_save_checkpoint)

    @classmethod
    def missing_inputs(cls, stage: str, init_args: dict) -> list[str]:
        """The SAM2 weights, if named and absent (asked before anything loads)."""
        weights = init_args.get("sam2_weights")
        return [f"{weights}: the SAM2 weights of the frozen image encoder (an official checkpoint, or a SAM2 state dict)"] if weights and not Path(weights).is_file() else []

    def training_step(self, batch: dict, batch_idx: int):
        losses = proposer_losses(self.proposer(self.features(batch["images"])), batch["boxes"], batch["head"])
        size = len(batch["images"])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k.count("_") == 1}, batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int):
        output = self.proposer(self.features(batch["images"]))
        self.log("val/loss", proposer_losses(output, batch["boxes"], batch["head"])["loss"], batch_size=len(batch["images"]))
        proposals = self.proposer.select(output, top_k=self.proposer.config.num_queries)
        size = batch["images"].shape[-1]  # pixels of the input, so that COCO's area ranges mean something
        predictions = [
            {"boxes": boxes * size, "scores": scores, "labels": torch.zeros(len(scores), dtype=torch.long, device=scores.device)}
            for boxes, scores in zip(proposals.boxes, proposals.scores)
        ]
        targets = [
            {"boxes": box_convert(boxes, "cxcywh", "xyxy") * size, "labels": torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)}
            for boxes in batch["boxes"]
        ]
        self.recall.update(predictions, targets)

    def on_validation_epoch_end(self) -> None:
        results = self.recall.compute()
        self.recall.reset()
        for k in RECALL_AT:
            self.log(f"val/AR@{k}", results[f"mar_{k}"], prog_bar=k == RECALL_AT[1], sync_dist=True)

    def configure_optimizers(self):
        named = [(name, p) for name, p in self.proposer.named_parameters() if p.requires_grad]
        slow = [p for name, p in named if any(part in name for part in _SLOW_PARAMETERS)]
        rest = [p for name, p in named if not any(part in name for part in _SLOW_PARAMETERS)]
        return _optimizers(self, [{"params": rest}, {"params": slow, "lr_scale": self.hparams.slow_lr_scale}])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("proposer.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = {f"proposer.{k}" for k in self.proposer.state_dict()}
        missing, unexpected = sorted(expected - set(checkpoint["state_dict"])), sorted(set(checkpoint["state_dict"]) - expected)
        if missing or unexpected:
            raise CheckpointError(None, "checkpoint does not match this proposer", missing, unexpected)

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            release = write_proposer_release(self.hparams.output, self.proposer, self.features.image_encoder, self.hparams.sam2_config)
            recall = {name[len("val/") :]: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith("val/AR@")}
            if recall:  # the last validation's, for `sparrow report --proposer`
                (release / "recall.json").write_text(json.dumps({**recall, "queries": self.proposer.config.num_queries}, indent=1))


def _sam2_weights(path: str | None) -> dict:
    """build_sam2's arguments for a weights file: a state dict (.safetensors) or a checkpoint."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise CheckpointError(path, "SAM2 weights not found")
    return {"state_dict": load_file(path)} if str(path).endswith(".safetensors") else {"checkpoint": path}
