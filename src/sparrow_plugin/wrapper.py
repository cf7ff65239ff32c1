"""SparrowWrapper: SPARROW around any host, as a LightningModule.

It receives its parts (a host, or the name of a registered one) and owns what SPARROW
adds: grounding tokens, LoRA, the L→V [SEG] adapter, the SAM2 decoder, the losses, the
metrics and the choice of what trains. That choice is structural: the whole model is
frozen, then exactly the parameters of LoRA layers, the host's V→L adapters, the new
token rows, the [SEG] adapter (and SAM2's mask decoder, if asked) are unfrozen.
Checkpoints hold only what trains; the frozen host is reloaded from its own release.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from sparrow_plugin.config import PARAMETER_GROUPS, SparrowConfig
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.errors import CheckpointError, ConfigError
from sparrow_plugin.grounding import PromptProjection
from sparrow_plugin.interfaces import HostAdapter, VideoBatch
from sparrow_plugin.losses import causal_lm_loss, mask_bce_loss, mask_dice_loss, presence_loss
from sparrow_plugin.metrics import MeViSMetric
from sparrow_plugin.registry import get_host_factory

__all__ = ["SparrowWrapper", "resolve_host"]


class SparrowWrapper(L.LightningModule):
    """SPARROW training and evaluation around a host.

    Args:
        base: a registered host name (``"tiny"``, ``"videoglamm"``, ...), a host class or a
            host instance.
        host_args: keyword arguments for the host's factory (e.g. ``{"path": ...}``).
        config: what trains and how (see :class:`~sparrow_plugin.config.SparrowConfig`).
        optimizer: builds the optimizer from parameter groups (LightningCLI
            ``class_path``); group learning rates are scaled by ``config.lr_scale``.
        lr_scheduler: optional, stepped every optimizer step.
    """

    def __init__(
        self,
        base: str | type | nn.Module = "tiny",
        host_args: dict[str, Any] | None = None,
        config: SparrowConfig | dict | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=[] if isinstance(base, str) else ["base"])
        self.config = SparrowConfig.from_dict(config) if isinstance(config, dict) else (config or SparrowConfig())
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.host = resolve_host(base, host_args or {})

        names = self.host.grounding_token_names
        self.token_ids = self.host.add_tokens([names[role] for role in ("box", "seg", "tsf")])
        self.seg_token_id = self.token_ids[names["seg"]]
        self.decoder = SAM2VideoDecoder.from_spec(
            self.host.decoder_spec(), mode=self.config.decoder.mode, cond_frame=self.config.decoder.cond_frame
        )
        self.decoder.sam.gate_masks_in_training = self.config.decoder.gate_masks_in_training
        self.seg_adapter = self.host.seg_projection() or PromptProjection(
            self.host.hidden_size, self.decoder.prompt_dim, num_tokens=self.config.decoder.prompt_tokens
        )
        self._inject_lora()
        self.trainable_groups = self._select_trainable()
        self.metrics = nn.ModuleDict({stage: MeViSMetric(self.config.kinds) for stage in ("val", "test")})
        self.test_results: dict[str, float] = {}
        self.strict_loading = False  # checkpoints hold only what trains; checked in on_load_checkpoint

    # ------------------------------------------------------------------ assembly

    def _inject_lora(self) -> None:
        settings = self.config.lora
        targets = list(settings.targets or self.host.default_lora_targets)
        lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none")
        try:
            inject_adapter_in_model(lora, self.host.language_model)
        except ValueError as error:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in self.host.language_model.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(f"LoRA targets {targets} match no module of the host LLM; its linear layers: {linear}") from error

    def _select_trainable(self) -> dict[str, list[nn.Parameter]]:
        """Freeze everything, then unfreeze the plugin parts by structure."""
        self.requires_grad_(False)
        groups = {
            "lora": [
                p
                for module in self.host.language_model.modules()
                if isinstance(module, LoraLayer)
                for adapter in (module.lora_A, module.lora_B)
                for p in adapter.parameters()
            ],
            "adapters": [p for module in self.host.adapter_modules() for p in module.parameters()],
            "tokens": list(self.host.new_token_parameters()),
            "seg_adapter": list(self.seg_adapter.parameters()),
            "mask_decoder": list(self.decoder.sam.sam_mask_decoder.parameters()) if self.config.decoder.train_mask_decoder else [],
        }
        assert set(groups) == set(PARAMETER_GROUPS)
        for params in groups.values():
            for p in params:
                p.requires_grad_(True)
        return groups

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: VideoBatch, batch_idx: int):
        return self._shared_step(batch, "train")

    def validation_step(self, batch: VideoBatch, batch_idx: int):
        return self._shared_step(batch, "val")

    def test_step(self, batch: VideoBatch, batch_idx: int):
        return self._shared_step(batch, "test")

    def predict_step(self, batch: VideoBatch, batch_idx: int) -> list[dict]:
        visual = self.host.encode_video(batch.frames)
        masks, texts = self._predict_masks(batch, visual)
        return [
            {"video": key[0], "exp_id": key[1], "frame_names": names, "masks": mask, "answer": text}
            for key, names, mask, text in zip(batch.keys, batch.frame_names, masks, texts)
        ]

    def _shared_step(self, batch: VideoBatch, stage: str):
        visual = self.host.encode_video(batch.frames)
        loss = None
        if stage != "test" and batch.has_targets:
            losses = self._losses(batch, visual)
            loss = losses["loss"]
            for name, value in losses.items():
                self.log(
                    f"{stage}/{name}",
                    value,
                    batch_size=len(batch),
                    prog_bar=name == "loss",
                    on_step=stage == "train",
                    on_epoch=stage != "train",
                )
        if stage != "train":
            masks, _ = self._predict_masks(batch, visual)
            self._update_metric(self.metrics[stage], batch, masks)
        return loss

    def _losses(self, batch: VideoBatch, visual) -> dict[str, torch.Tensor]:
        weights = self.config.loss
        has_target = batch.masks.flatten(1).any(dim=1).tolist()
        answers = [self._answer(t or self.config.no_target == "empty_mask") for t in has_target]
        inputs = self.host.build_inputs(visual, batch.queries, answers)
        output = self.host(inputs)
        losses = {"ce": causal_lm_loss(output.logits, inputs.labels)}
        states, rows = self._grounding_states(inputs.input_ids, output.grounding_states)
        if rows.numel():
            frames, cond = self._training_frames(batch.frames.shape[1], batch.frames.device)
            decoded = self.decoder(batch.frames[:, frames], self.seg_adapter(states), clip_index=rows, cond_frame=cond)
            targets = batch.masks[rows][:, frames]
            losses["bce"] = mask_bce_loss(decoded.mask_logits, targets)
            losses["dice"] = mask_dice_loss(decoded.mask_logits, targets)
            if weights.presence > 0:
                losses["presence"] = presence_loss(decoded.object_logits, targets)
        total = sum(getattr(weights, name) * value for name, value in losses.items())
        losses["loss"] = total
        return losses

    def _training_frames(self, num_frames: int, device) -> tuple[torch.Tensor, int | None]:
        """Frames of a clip the decoder is trained on (all, unless ``train_frames``), and
        the prompted frame's index among them (track mode)."""
        settings = self.config.decoder
        count = settings.train_frames
        if count is None or count >= num_frames:
            return torch.arange(num_frames, device=device), None
        if settings.mode == "track":
            cond = settings.cond_frame % num_frames
            start = min(cond, num_frames - count)  # a window that contains the prompted frame
            return torch.arange(start, start + count, device=device), cond - start
        return torch.randperm(num_frames, device=device)[:count].sort().values, None

    def _answer(self, has_target: bool) -> str:
        if not has_target:
            return self.host.no_target_answer
        return self.host.answer_template.format(grounding=self.host.grounding_token_names["seg"])

    @torch.no_grad()
    def _predict_masks(self, batch: VideoBatch, visual) -> tuple[list[torch.Tensor | None], list[str]]:
        """Generate answers, decode masks for the samples that emitted [SEG].

        Returns per sample a bool (T, H, W) mask at the original size, or None when the
        model emitted no [SEG], and the generated answers.
        """
        prompt = self.host.build_inputs(visual, batch.queries, None)
        generation = self.host.generate(prompt, max_new_tokens=self.config.max_new_tokens)
        output = self.host(generation.inputs)
        states, rows = self._grounding_states(
            generation.inputs.input_ids, output.grounding_states, start=generation.num_prompt_tokens
        )
        masks: list[torch.Tensor | None] = [None] * len(batch)
        if rows.numel():
            decoded = self.decoder(batch.frames, self.seg_adapter(states), clip_index=rows)
            for logits, row in zip(decoded.mask_logits, rows.tolist()):
                height, width = batch.original_sizes[row]
                resized = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)
                masks[row] = (resized[0] > 0).cpu()
        return masks, generation.texts

    def _grounding_states(self, input_ids: torch.Tensor, states: torch.Tensor, start: torch.Tensor | None = None):
        """Hidden states of each row's first [SEG] (at the host's offset) and those rows."""
        is_seg = input_ids == self.seg_token_id
        if start is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            is_seg &= positions[None] >= start.to(input_ids.device)[:, None]
        rows = is_seg.any(dim=1).nonzero().flatten()
        first = is_seg.float().argmax(dim=1)[rows]
        positions = first + self.host.grounding_offset
        if bool((positions < 0).any()):
            raise ValueError("a [SEG] token at the start of a sequence has no predicting position")
        return states[rows, positions], rows

    def _update_metric(self, metric: MeViSMetric, batch: VideoBatch, masks: list[torch.Tensor | None]) -> None:
        if batch.full_masks is None:
            return  # a split without masks (MeViS valid): nothing to score locally
        for mask, gt, kind in zip(masks, batch.full_masks, batch.kinds):
            emitted = mask is not None
            prediction = mask if emitted else torch.zeros_like(gt, dtype=torch.bool)
            metric.update(prediction, gt.bool(), kind=kind, emitted_seg=emitted)

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metric("test")

    def _log_metric(self, stage: str) -> dict[str, float]:
        metric = self.metrics[stage]
        results = metric.compute()
        metric.reset()
        for name, value in results.items():
            if name.rsplit("/", 1)[-1] in ("J", "F", "J&F"):  # counts go to the results file
                self.log(f"{stage}/{name}", float(value), prog_bar=name == "J&F")
        return results

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        groups = [{"params": params, "name": name} for name, params in self.trainable_groups.items() if params]
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= self.config.lr_scale.get(group["name"], 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_keys(self) -> set[str]:
        """Trainable parameters, plus the buffers of the modules that own them."""
        trainable = {id(p) for params in self.trainable_groups.values() for p in params}
        keys = set()
        for module_name, module in self.named_modules():
            owned = [name for name, p in module.named_parameters(recurse=False) if id(p) in trainable]
            if owned:
                prefix = f"{module_name}." if module_name else ""
                keys.update(prefix + name for name in owned)
                keys.update(prefix + name for name, _ in module.named_buffers(recurse=False))
        return keys

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keys = self._checkpoint_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["sparrow"] = {"host": type(self.host).__qualname__, "token_ids": self.token_ids, "stage": self.config.stage}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        expected = self._checkpoint_keys()
        unexpected = sorted(set(state) - set(self.state_dict()))
        missing = sorted(expected - set(state))
        meta = checkpoint.get("sparrow", {})
        if meta.get("token_ids") not in (None, self.token_ids):
            raise CheckpointError(None, f"checkpoint was trained with token ids {meta['token_ids']}, this host has {self.token_ids}")
        if missing or unexpected:
            raise CheckpointError(None, "checkpoint does not match this SPARROW model", missing, unexpected)


def resolve_host(base: str | type | nn.Module, host_args: Mapping[str, Any]) -> nn.Module:
    """A host from a registered name, a class (``from_pretrained`` if it has one) or an instance."""
    if isinstance(base, str):
        host = get_host_factory(base)(**host_args)
    elif isinstance(base, type):
        factory = getattr(base, "from_pretrained", base)
        host = factory(**host_args)
    else:
        if host_args:
            raise ConfigError("host_args are only used when base is a name or a class")
        host = base
    if not isinstance(host, nn.Module) or not isinstance(host, HostAdapter):
        missing = [name for name in _contract_members() if not hasattr(host, name)]
        raise ConfigError(f"{type(host).__name__} is not a host: it must be an nn.Module implementing HostAdapter (missing: {missing})")
    return host


def _contract_members() -> list[str]:
    """Names a host must have: the protocol's annotated attributes and its methods."""
    methods = [name for name, value in vars(HostAdapter).items() if not name.startswith("_") and callable(value)]
    properties = [name for name, value in vars(HostAdapter).items() if isinstance(value, property)]
    return sorted(set(HostAdapter.__annotations__) | set(methods) | set(properties))
