"""SparrowModel: SPARROW around a host, as a plain ``nn.Module`` (no Lightning).

It assembles the host and the plugins, decides what trains by structure, and holds the
two paths every entry point uses: :meth:`SparrowModel.training_losses` (named losses of a
batch) and :meth:`SparrowModel.predict` (answers, grounding states, masks). The
LightningModule (``wrapper.py``) adds the loop, the optimiser groups, logging, metrics
and the checkpoint policy; an inference program can use this class without a Trainer.

What trains: the whole model is frozen, then exactly the parameters of LoRA layers, the
host's V→L adapters, the new token rows, the L→V [SEG] adapter and, if asked, SAM2's mask
decoder (without the heads no SPARROW loss reaches) are unfrozen.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from sparrow_plugin.checkpoints import host_record, host_weight_digests
from sparrow_plugin.config import PARAMETER_GROUPS, SparrowConfig, check_mask_supervision, flat_settings
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.errors import ConfigError, SparrowWarning
from sparrow_plugin.frames import resize_frames
from sparrow_plugin.interfaces import Prediction, VideoBatch, VisualFeatures
from sparrow_plugin.losses import causal_lm_loss, mask_bce_loss, mask_dice_loss, presence_loss
from sparrow_plugin.modules import PromptProjection

__all__ = ["SparrowModel", "GROUNDING_ROLES"]

GROUNDING_ROLES = ("box", "seg")  # the roles an answer's tokens can play; <TSF> only sits in prompts


class SparrowModel(nn.Module):
    """SPARROW's core around a host.

    Args:
        host: an ``nn.Module`` implementing :class:`~sparrow_plugin.interfaces.HostAdapter`.
        config: what trains and how.
    """

    def __init__(self, host: nn.Module, config: SparrowConfig | None = None):
        super().__init__()
        self.host, self.config = host, config or SparrowConfig()
        spec = host.decoder_spec()
        # the host as released, before anything is added to it: a checkpoint is only read
        # into the host it was trained on (see checkpoints.py)
        self.host_digests = host_weight_digests(host, spec.state_dict)
        names = host.grounding_token_names
        self.token_ids = host.add_tokens([names[role] for role in ("box", "seg", "tsf")])
        self.role_ids = {role: self.token_ids[names[role]] for role in ("box", "seg", "tsf")}

        settings = self.config.decoder
        self.gate_masks_in_training = spec.gate_masks_in_training if settings.gate_masks_in_training is None else settings.gate_masks_in_training
        self.presence_weight = spec.presence_weight if self.config.loss.presence is None else self.config.loss.presence
        check_mask_supervision(self.gate_masks_in_training, self.presence_weight, source=f"{type(host).__name__} with this recipe")
        self._reported_unknown_words: set[str] = set()
        self.decoder = SAM2VideoDecoder.from_spec(spec, mode=settings.mode)
        self.decoder.sam.gate_masks_in_training = self.gate_masks_in_training
        self.seg_adapter = host.seg_projection() or PromptProjection(host.hidden_size, self.decoder.prompt_dim, num_tokens=settings.prompt_tokens)
        self._inject_lora()
        self.trainable_groups = self._select_trainable()

    # ------------------------------------------------------------------ assembly

    @property
    def lora_targets(self) -> list[str]:
        """The module-name suffixes LoRA wraps: the recipe's, or the host's defaults."""
        return list(self.config.lora.targets or self.host.default_lora_targets)

    def trained_record(self) -> dict:
        """What defines this model's trained weights, flat: the host's class and config and
        the SPARROW settings marked as defining the model (LoRA targets resolved)."""
        settings = {f"config.{key}": value for key, value in flat_settings(self.config, only_model=True).items()}
        return {**host_record(self.host), **settings, "config.lora.targets": self.lora_targets}

    def _inject_lora(self) -> None:
        settings = self.config.lora
        targets = self.lora_targets
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
            "mask_decoder": self._trained_mask_decoder_parameters(),
        }
        assert set(groups) == set(PARAMETER_GROUPS)
        for params in groups.values():
            for p in params:
                p.requires_grad_(True)
        return groups

    def _trained_mask_decoder_parameters(self) -> list[nn.Parameter]:
        """SAM2's mask decoder, less the heads no loss reaches: the IoU head only ranks
        masks (argmax, no gradient), the presence head trains only with a presence loss.
        Parameters that never get a gradient would also stall DDP's reducer."""
        if not self.config.decoder.train_mask_decoder:
            return []
        decoder = self.decoder.sam.sam_mask_decoder
        untrained = {id(p) for p in decoder.iou_prediction_head.parameters()}
        if self.presence_weight == 0 and getattr(decoder, "pred_obj_score_head", None) is not None:
            untrained |= {id(p) for p in decoder.pred_obj_score_head.parameters()}
        return [p for p in decoder.parameters() if id(p) not in untrained]

    # ------------------------------------------------------------------ training

    def training_losses(self, batch: VideoBatch) -> dict[str, torch.Tensor]:
        """Named, unweighted losses of a labelled batch, and ``loss``, their weighted sum.

        The answer says [SEG] when the annotation has the target anywhere in the video
        (``VideoBatch.has_target``), or always with ``no_target: empty_mask``. SAM2 is
        prompted on the frame the data pipeline drew among those showing the target.
        """
        if batch.masks is None:
            raise ValueError("training needs a batch with masks")
        self.warn_unknown_words(batch.queries)
        has_target = batch.has_target if batch.has_target is not None else batch.masks.flatten(1).any(dim=1)
        answers = [self._answer(bool(t) or self.config.no_target == "empty_mask") for t in has_target.tolist()]
        inputs = self.host.build_inputs(self.encode(batch), batch.queries, answers)
        output = self.host(inputs)
        losses = {"ce": causal_lm_loss(output.logits, inputs.labels)}
        rows, positions = self.grounding_positions(inputs.input_ids, "seg")
        if rows.numel():
            states = output.grounding_states[rows, positions + self.host.grounding_offset]
            frame_ids, cond = self.training_frames(batch, rows)
            wanted = torch.zeros(batch.frames.shape[:2], dtype=torch.bool, device=batch.frames.device)
            wanted[rows[:, None], frame_ids] = True
            features = self.decoder.encode(batch.frames, wanted)
            decoded = self.decoder.decode(features, self.seg_adapter(states), clip_index=rows, cond_frame=cond, frame_ids=frame_ids)
            targets = batch.masks[rows[:, None], frame_ids]
            losses["bce"] = mask_bce_loss(decoded.mask_logits, targets)
            losses["dice"] = mask_dice_loss(decoded.mask_logits, targets)
            if self.presence_weight > 0:
                losses["presence"] = presence_loss(decoded.object_logits, targets)
        weights = {"ce": self.config.loss.ce, "bce": self.config.loss.bce, "dice": self.config.loss.dice, "presence": self.presence_weight}
        total = sum(weights[name] * value for name, value in losses.items())
        if not rows.numel():
            total = total + self._untouched_parameters_term()
        losses["loss"] = total
        return losses

    def training_frames(self, batch: VideoBatch, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frames of each prompted sample the decoder is trained on, (N, W) long, and
        the position of the prompted frame among them, (N,) long.

        All frames unless ``decoder.train_frames``; then in ``track`` mode W consecutive
        frames starting at the prompted frame (the clip's last W when it is that close to
        the end), so the window always holds it; in ``per_frame`` mode one random subset
        for the batch.
        """
        num_frames, device = batch.frames.shape[1], batch.frames.device
        cond = (batch.cond_frames if batch.cond_frames is not None else torch.zeros(len(batch), dtype=torch.long)).to(device)[rows]
        count = self.config.decoder.train_frames
        if count is None or count >= num_frames:
            return torch.arange(num_frames, device=device).expand(len(rows), -1), cond
        if self.config.decoder.mode == "per_frame":
            subset = torch.randperm(num_frames, device=device)[:count].sort().values
            return subset.expand(len(rows), -1), torch.zeros_like(cond)
        start = torch.minimum(cond, torch.full_like(cond, num_frames - count))
        return start[:, None] + torch.arange(count, device=device), cond - start

    def _untouched_parameters_term(self) -> torch.Tensor:
        """Zero, but connected to the parameters only [SEG] samples use: a batch without
        [SEG] then still gives each of them a (zero) gradient, as DDP's reducer expects."""
        params = [p for name in ("seg_adapter", "mask_decoder") for p in self.trainable_groups[name]]
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=params[0].device)) if params else 0.0

    def _answer(self, has_target: bool) -> str:
        if not has_target:
            return self.host.no_target_answer
        return self.host.answer_template.format(grounding=self.host.grounding_token_names["seg"])

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, batch: VideoBatch) -> list[Prediction]:
        """Answer every sample (one LLM prefill each, cached decoding), then segment what
        each answer's [SEG] tokens refer to: one SAM2 object per [SEG], the expression's
        mask their union, at the original frame size."""
        self.warn_unknown_words(batch.queries)
        prompt = self.host.build_inputs(self.encode(batch), batch.queries, None)
        generation = self.host.generate(prompt, max_new_tokens=self.config.max_new_tokens)
        rows, columns, roles = self.grounding_tokens(generation.new_ids, generation.new_mask)
        num_frames = batch.frames.shape[1]
        cond = self.inference_cond_frame(num_frames)
        is_seg = roles == GROUNDING_ROLES.index("seg")
        seg_rows = rows[is_seg]
        object_masks: list[list[torch.Tensor]] = [[] for _ in range(len(batch))]
        object_scores: list[list[torch.Tensor]] = [[] for _ in range(len(batch))]
        if seg_rows.numel():
            states = generation.token_states[seg_rows, columns[is_seg]]
            wanted = torch.zeros(batch.frames.shape[:2], dtype=torch.bool, device=batch.frames.device)
            wanted[seg_rows] = True
            features = self.decoder.encode(batch.frames, wanted)
            decoded = self.decoder.decode(features, self.seg_adapter(states), clip_index=seg_rows, cond_frame=cond)
            for logits, scores, row in zip(decoded.mask_logits, decoded.object_logits, seg_rows.tolist()):
                height, width = batch.original_sizes[row]
                resized = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
                object_masks[row].append((resized > 0).cpu())
                object_scores[row].append(scores.float().cpu())
        predictions = []
        for b in range(len(batch)):
            masks = torch.stack(object_masks[b]) if object_masks[b] else None
            predictions.append(
                Prediction(
                    answer=generation.texts[b],
                    truncated=bool(generation.truncated[b]),
                    grounding_tokens=[GROUNDING_ROLES[r] for r in roles[rows == b].tolist()],
                    masks=masks.any(dim=0) if masks is not None else None,
                    object_masks=masks,
                    object_scores=torch.stack(object_scores[b]) if object_scores[b] else None,
                    cond_frame=cond,
                )
            )
        return predictions

    def inference_cond_frame(self, num_frames: int) -> int:
        """The frame SAM2 is prompted on at inference (``decoder.cond_frame``)."""
        setting = self.config.decoder.cond_frame
        return 0 if setting == "first" else setting % num_frames

    # ------------------------------------------------------------------ shared

    def warn_unknown_words(self, queries: list[str]) -> None:
        """Warn, once per word, about query words the host's tokenizer maps to its unknown
        token: a word-level tokenizer (the tiny hosts') reads "the pink ball" as "the <unk>
        <unk>" and would segment whatever that means to it."""
        tokenizer = self.host.tokenizer
        unknown_id = getattr(tokenizer, "unk_token_id", None)
        if unknown_id is None or not getattr(tokenizer, "is_fast", False):  # offsets need a fast tokenizer
            return
        unknown: dict[str, set[str]] = {}  # query -> its unknown words, as written in it
        for query in queries:
            encoding = tokenizer(query, add_special_tokens=False, return_offsets_mapping=True)
            words = {query[start:end] for i, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]) if i == unknown_id}
            if words - self._reported_unknown_words:
                unknown[query] = words
        new = sorted(set().union(*unknown.values()) - self._reported_unknown_words)
        if new:
            self._reported_unknown_words.update(new)
            examples = list(unknown)[:3]
            warnings.warn(
                f"words the host's tokenizer does not know, read as {tokenizer.unk_token!r}: {', '.join(new)} "
                f"(in {'; '.join(repr(q) for q in examples)}); answers to such queries mean little",
                SparrowWarning,
            )

    def encode(self, batch: VideoBatch) -> VisualFeatures:
        """The host's visual features of its own frames: those the data pipeline read for
        it, or, when it was not told the host's request, sampled here from the decoder's."""
        if batch.llm_frames is not None:
            return self.host.encode_video(batch.llm_frames, batch.llm_frame_indices)
        request = self.host.frame_request()
        picked = torch.tensor(request.sample(batch.frames.shape[1]), device=batch.frames.device)
        height, width = batch.original_sizes[0]  # one size for the batch: frames of other sizes cannot stack
        frames = resize_frames(batch.frames[:, picked], request.size(height, width), request.interpolation)
        indices = batch.frame_indices[:, picked.cpu()] if batch.frame_indices is not None else picked.expand(len(batch), -1)
        return self.host.encode_video(frames, indices.to(frames.device))

    def grounding_tokens(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every grounding token in ``ids`` (B, L), in reading order: (rows, positions,
        roles as indices into :data:`GROUNDING_ROLES`), each (M,) long."""
        role_ids = torch.tensor([self.role_ids[role] for role in GROUNDING_ROLES], device=ids.device)
        hits = ids[..., None] == role_ids  # (B, L, roles)
        if mask is not None:
            hits &= mask.bool()[..., None]
        rows, positions, roles = hits.nonzero(as_tuple=True)
        return rows, positions, roles

    def grounding_positions(self, ids: torch.Tensor, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and positions of every ``role`` token in ``ids`` (B, L), checked to have a
        state at the host's grounding offset."""
        rows, positions = (ids == self.role_ids[role]).nonzero(as_tuple=True)
        if bool((positions + self.host.grounding_offset < 0).any()):
            raise ValueError(f"a {role} token at the start of a sequence has no predicting position")
        return rows, positions
