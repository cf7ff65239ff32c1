"""SparrowWrapper: SPARROW around any host, as a LightningModule.

It receives its parts (a host, or the name of a registered one) and keeps what is
Lightning's: the loop, the optimiser groups, logging, metrics and the checkpoint policy.
The model itself (host, LoRA, token rows, [SEG] adapter, SAM2, losses, inference) is a
plain :class:`~sparrow_plugin.model.SparrowModel` at ``self.model``. Checkpoints hold only
what trains; the frozen host is reloaded from its own release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from sparrow_plugin.checkpoints import read_checkpoint, setting_differences, trained_as_another_model, weight_differences, weight_digests
from sparrow_plugin.config import SparrowConfig, flat_settings
from sparrow_plugin.errors import CheckpointError, ConfigError, SparrowWarning
from sparrow_plugin.interfaces import HostAdapter, Prediction, VideoBatch
from sparrow_plugin.metrics import MeViSMetric, TopBoxHitRate
from sparrow_plugin.model import SparrowModel
from sparrow_plugin.registry import check_host_arguments, get_host_factory, missing_host_inputs
from sparrow_plugin.schedules import fit_to_trainer

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
        init_from: a checkpoint of an earlier stage whose trained weights this model starts
            from (stage 2 from stage 1), refused when it was trained as another model; they
            become frozen weights of this stage, which its own checkpoints are tied to.
    """

    def __init__(
        self,
        base: str | type | nn.Module = "tiny",
        host_args: dict[str, Any] | None = None,
        config: SparrowConfig | dict | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=[] if isinstance(base, str) else ["base"])
        config = SparrowConfig.from_dict(config) if isinstance(config, dict) else (config or SparrowConfig())
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.model = SparrowModel(resolve_host(base, host_args or {}), config)
        if init_from is not None:
            self._start_from(init_from)
        self.metrics = nn.ModuleDict({stage: MeViSMetric(config.kinds) for stage in ("val", "test")})
        # with boxes: how often the most confident kept box is the target's
        self.box_hits = nn.ModuleDict({stage: TopBoxHitRate() for stage in ("val", "test")}) if self.model.box_grounding is not None else None
        self.test_results: dict[str, Any] = {}
        self.strict_loading = False  # checkpoints hold only what trains; checked in on_load_checkpoint

    @classmethod
    def missing_inputs(cls, stage: str, init_args: Mapping[str, Any]) -> list[str]:
        """What a run with these init args would miss on disk (the host's downloads), loading
        nothing; the command line asks before it builds anything."""
        base = init_args.get("base")
        missing = missing_host_inputs(base, dict(init_args.get("host_args") or {})) if isinstance(base, str) else []
        init_from = init_args.get("init_from")
        if init_from and not Path(init_from).is_file():
            missing.append(f"{init_from}: the checkpoint of the earlier stage this one starts from (init_from)")
        config = init_args.get("config") or {}
        proposer = (config.box.proposer if isinstance(config, SparrowConfig) else (config.get("box") or {}).get("proposer"))
        if proposer and not (Path(proposer) / "config.json").is_file():
            missing.append(f"{proposer}: the proposer release (sparrow-det-pretrain, or what recipes/<host>/proposer.yaml writes)")
        return missing

    @property
    def config(self) -> SparrowConfig:
        return self.model.config

    @property
    def host(self) -> nn.Module:
        return self.model.host

    @property
    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.model.trainable_groups

    # ------------------------------------------------------------------ data

    def setup(self, stage: str) -> None:
        """Tell the data which frames the host's LLM reads (they are sampled apart from
        the decoder's); the DataModule builds its loaders after this hook."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "set_frame_request"):
            datamodule.set_frame_request(self.host.frame_request())
        tsf = self.model.config.tsf
        if datamodule is not None and tsf.mode != "off" and hasattr(datamodule, "require_tsf_tracks"):
            datamodule.require_tsf_tracks()
        if datamodule is not None and tsf.mode == "train+infer" and tsf.infer == "dataset" and hasattr(datamodule, "require_tsf_eval_tracks"):
            datamodule.require_tsf_eval_tracks()

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: VideoBatch, batch_idx: int):
        losses = self.model.training_losses(batch)
        self._log_losses("train", losses, len(batch))
        return losses["loss"]

    def validation_step(self, batch: VideoBatch, batch_idx: int) -> list[Prediction]:
        """Scores the batch; the predictions go to callbacks (``ValidationPictures``)."""
        if batch.has_targets:
            self._log_losses("val", self.model.training_losses(batch), len(batch))
        predictions = self.model.predict(batch)
        self._update_metric("val", batch, predictions)
        return predictions

    def test_step(self, batch: VideoBatch, batch_idx: int):
        self._update_metric("test", batch, self.model.predict(batch))

    def predict_step(self, batch: VideoBatch, batch_idx: int) -> list[dict]:
        return [
            {
                "video": key[0],
                "exp_id": key[1],
                "index": int(index),
                "frame_names": names,
                "masks": prediction.masks,
                "object_masks": prediction.object_masks,
                "object_scores": prediction.object_scores,
                "answer": prediction.answer,
                "truncated": prediction.truncated,
                "cond_frame": prediction.cond_frame,
                "boxes": prediction.boxes,
                "box_scores": prediction.box_scores,
                "prompted_frames": prediction.prompted_frames,
            }
            for key, index, names, prediction in zip(batch.keys, batch.indices.tolist(), batch.frame_names, self.model.predict(batch))
        ]

    def _log_losses(self, stage: str, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in losses.items():
            if torch.isnan(value):  # a measurement with nothing to measure in this batch (proposal_hit@1)
                continue
            epoch_level = stage != "train"
            self.log(
                f"{stage}/{name}", value, batch_size=batch_size, prog_bar=name == "loss", on_step=not epoch_level, on_epoch=epoch_level, sync_dist=epoch_level
            )

    def _update_metric(self, stage: str, batch: VideoBatch, predictions: list[Prediction]) -> None:
        metric = self.metrics[stage]
        if batch.full_masks is None:
            return  # a split without masks: validation has nothing to score (test refuses it)
        for row, (prediction, gt, kind, index) in enumerate(zip(predictions, batch.full_masks, batch.kinds, batch.indices.tolist())):
            emitted = prediction.masks is not None
            mask = prediction.masks if emitted else torch.zeros_like(gt, dtype=torch.bool)
            metric.update(mask, gt.bool(), kind=kind, emitted_seg=emitted, sample_index=index, truncated=prediction.truncated)
            if self.box_hits is not None and batch.object_boxes is not None:
                visible = batch.object_visible[row][:, prediction.cond_frame]
                targets = batch.object_boxes[row][visible, prediction.cond_frame]
                self.box_hits[stage].update(index, prediction.boxes, prediction.box_scores, targets)

    # ------------------------------------------------------------------ metrics

    def on_validation_epoch_start(self) -> None:
        self.metrics["val"].expected_samples = self._expected_samples(self.trainer.val_dataloaders, self.trainer.limit_val_batches)

    def on_test_epoch_start(self) -> None:
        self.metrics["test"].expected_samples = self._expected_samples(self.trainer.test_dataloaders, self.trainer.limit_test_batches)

    def on_validation_epoch_end(self) -> None:
        metric = self.metrics["val"]
        if self.trainer.sanity_checking or metric.update_count == 0:
            metric.reset()  # a sanity check is a few batches to catch bugs; a split without masks has no score
            return
        self._log_metric("val")

    def on_test_epoch_end(self) -> None:
        results: dict[str, Any] = self._log_metric("test")
        deviations = self._protocol_deviations()
        if deviations:
            results["protocol_deviations"] = deviations
        self.test_results = results

    def _log_metric(self, stage: str) -> dict[str, Any]:
        metric = self.metrics[stage]
        results = metric.compute()
        metric.reset()
        if self.box_hits is not None:
            results["hit@1"] = float(self.box_hits[stage].compute())
            self.box_hits[stage].reset()
            if results["hit@1"] == results["hit@1"]:  # not NaN
                self.log(f"{stage}/hit@1", results["hit@1"], sync_dist=True)
        for name, value in results.items():
            if name.rsplit("/", 1)[-1] in ("J", "F", "J&F"):  # counts go to the results file
                # the same value on every rank (the metric gathered them): syncing is a no-op
                self.log(f"{stage}/{name}", float(value), prog_bar=name == "J&F", sync_dist=True)
        return results

    @staticmethod
    def _expected_samples(loaders, limit) -> int | None:
        """How many samples an epoch must score: the whole dataset, unless Lightning was
        told to run only part of it (``limit_*_batches``, ``fast_dev_run``)."""
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None or not _whole_split(limit) or not hasattr(loader, "dataset"):
            return None
        return len(loader.dataset)

    def _protocol_deviations(self) -> list[str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        deviations = list(datamodule.protocol_deviations()) if hasattr(datamodule, "protocol_deviations") else []
        if not _whole_split(self.trainer.limit_test_batches):
            deviations.append(f"limit_test_batches={self.trainer.limit_test_batches}: part of the split is scored")
        return deviations

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        groups = [{"params": params, "name": name} for name, params in self.trainable_groups.items() if params]
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= self.config.lr_scale.get(group["name"], 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        fit_to_trainer(scheduler, self._trainer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
        checkpoint["sparrow"] = {
            "host": type(self.host).__qualname__,
            "token_ids": self.model.token_ids,
            "stage": self.config.stage,
            "trained": self._trained_record(),
            "host_weights": self.model.frozen_digests,
            "settings": flat_settings(self.config),
        }
        hyper_parameters = checkpoint.get("hyper_parameters", {})
        if isinstance(hyper_parameters.get("config"), SparrowConfig):
            hyper_parameters["config"] = asdict(hyper_parameters["config"])  # plain data: the file loads with weights_only
        if isinstance(hyper_parameters.get("host_args"), dict):
            # `--ckpt_settings checkpoint` rebuilds the host from these: from any working directory
            hyper_parameters["host_args"] = {k: _absolute_if_path(v) for k, v in hyper_parameters["host_args"].items()}
        if hyper_parameters.get("init_from"):
            hyper_parameters["init_from"] = _absolute_if_path(hyper_parameters["init_from"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_checkpoint(checkpoint, self._trainer.ckpt_path if self._trainer is not None else None)

    def load_checkpoint(self, path: str | Path, weights_only: bool | None = None) -> None:
        """Load a checkpoint of this model outside a Trainer (inference programs), with the
        checks a Trainer's loading makes (:meth:`check_checkpoint`)."""
        checkpoint = read_checkpoint(path, weights_only=weights_only)
        self.check_checkpoint(checkpoint, path)
        self.load_state_dict(checkpoint["state_dict"], strict=False)

    def check_checkpoint(self, checkpoint: dict, source: str | Path | None) -> None:
        """Refuse a checkpoint trained as another model (another host, other host weights,
        other settings that define the weights, other token ids, other trained parameters);
        warn about settings that differ and that this run's recipe decides."""
        meta = checkpoint.get("sparrow", {})
        settings_changed = setting_differences(meta.get("settings", {}), flat_settings(self.config))
        problems = setting_differences(meta.get("trained", {}), self._trained_record())
        if "host_weights" in meta:
            changed = weight_differences(meta["host_weights"], self.model.frozen_digests)
            if changed:
                shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
                problems.append(
                    f"host weights: {len(changed)} of {len(self.model.frozen_digests)} frozen tensors (host, SAM2, proposer) "
                    f"differ from those it was trained on ({shown})"
                )
        if meta.get("token_ids") not in (None, self.model.token_ids):
            problems.append(f"token ids: {meta['token_ids']} in the checkpoint, {self.model.token_ids} here")
        if problems:
            raise CheckpointError(source, trained_as_another_model(problems))
        state = checkpoint.get("state_dict", {})
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        missing = sorted(self._checkpoint_keys() - set(state))
        wrong_shape = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here" for k, v in state.items() if k in own and v.shape != own[k].shape]
        if missing or unexpected or wrong_shape:
            problem = "does not match this SPARROW model"
            if wrong_shape:
                problem += "; shapes differ: " + "; ".join(wrong_shape[:10])
            if settings_changed:
                problem += "; settings that differ, which may explain it: " + "; ".join(settings_changed)
            raise CheckpointError(source, problem, missing, unexpected)
        if settings_changed:
            notice = f"{source or 'the checkpoint'} was trained with other settings; this run's apply: " + "; ".join(settings_changed)
            rank_zero_warn(notice, category=SparrowWarning)

    def _start_from(self, path: str) -> None:
        """Load an earlier stage's trained weights (see ``init_from``)."""
        checkpoint = read_checkpoint(path)
        meta = checkpoint.get("sparrow", {})
        ours = {key: value for key, value in self._trained_record().items() if key != "config.stage"}
        problems = setting_differences({k: v for k, v in meta.get("trained", {}).items() if k != "config.stage"}, ours)
        frozen = meta.get("host_weights", {})
        changed = weight_differences(frozen, {k: v for k, v in self.model.frozen_digests.items() if k in frozen})
        if changed:
            problems.append(f"host weights: {len(changed)} frozen tensors differ from those it was trained on ({', '.join(changed[:5])})")
        if meta.get("token_ids") not in (None, self.model.token_ids):
            problems.append(f"token ids: {meta['token_ids']} in the checkpoint, {self.model.token_ids} here")
        if meta.get("stage", 1) >= self.config.stage:
            problems.append(f"config.stage: {meta.get('stage', 1)} in the checkpoint; init_from takes an earlier stage than {self.config.stage}")
        if problems:
            raise CheckpointError(path, trained_as_another_model(problems).replace("--ckpt_settings checkpoint", "an init_from checkpoint of this model"))
        state, own = checkpoint["state_dict"], self.state_dict()
        unexpected = sorted(set(state) - set(own))
        wrong_shape = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} here" for k, v in state.items() if k in own and v.shape != own[k].shape]
        if unexpected or wrong_shape:
            raise CheckpointError(path, "its weights do not fit this model" + ("; shapes differ: " + "; ".join(wrong_shape[:10]) if wrong_shape else ""), unexpected=unexpected)
        self.load_state_dict(state, strict=False)
        # this stage's checkpoints mean something only on top of these weights
        self.model.frozen_digests.update({f"init_from.{k}": v for k, v in weight_digests(state).items()})
        self.model.start_box_adapter_from_seg()

    def _trained_record(self) -> dict:
        """The model's record (see checkpoints.py) plus the registered host name it was built by,
        which the command line compares before anything loads."""
        base = self.hparams.get("base")
        return {**({"base": base} if isinstance(base, str) else {}), **self.model.trained_record()}


def check_recipe_fits_checkpoint(ckpt_path, checkpoint: dict, init_args: Mapping[str, Any]) -> None:
    """Compare what the checkpoint was trained as with what a recipe's model ``init_args``
    ask for, as far as they say it without building anything (the host's name, the
    settings that define the weights); :meth:`SparrowWrapper.check_checkpoint` checks the
    rest (host class, config and weights) when it loads."""
    stored = checkpoint.get("sparrow", {}).get("trained")
    if not stored:
        return
    current = {"base": init_args.get("base")} if isinstance(init_args.get("base"), str) else {}
    config = init_args.get("config")
    settings = config if isinstance(config, SparrowConfig) else SparrowConfig.from_dict(config or {})
    current.update({f"config.{key}": value for key, value in flat_settings(settings, only_model=True).items()})
    if current.get("config.lora.targets") is None:
        current.pop("config.lora.targets", None)  # the host's defaults: known once it is built
    problems = setting_differences(stored, current)
    if problems:
        raise CheckpointError(ckpt_path, trained_as_another_model(problems))


def _absolute_if_path(value):
    """An existing relative path made absolute; anything else as it is."""
    return str(Path(value).resolve()) if isinstance(value, str) and value and Path(value).exists() else value


def _whole_split(limit: int | float) -> bool:
    """Lightning's ``limit_*_batches``: the float 1.0 runs every batch, the int 1 one batch."""
    return isinstance(limit, float) and limit == 1.0


def resolve_host(base: str | type | nn.Module, host_args: Mapping[str, Any]) -> nn.Module:
    """A host from a registered name, a class (``from_pretrained`` if it has one) or an instance."""
    if isinstance(base, str):
        check_host_arguments(base, dict(host_args))
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
