"""SparrowModel: SPARROW around a host, as a plain ``nn.Module`` (no Lightning).

It assembles the host and the plugins, decides what trains by structure, and holds the
two paths every entry point uses: :meth:`SparrowModel.training_losses` (named losses of a
batch) and :meth:`SparrowModel.predict` (answers, grounding states, masks). The
LightningModule (``wrapper.py``) adds the loop, the optimiser groups, logging, metrics
and the checkpoint policy; an inference program can use this class without a Trainer.

What trains: the whole model is frozen, then exactly the parameter groups of the stage
are unfrozen. Stage 1: the LoRA layers, the host's V→L adapters, the new token rows, the
L→V [SEG] adapter and, if asked, SAM2's mask decoder (without the heads no SPARROW loss
reaches). Stage 2: the filtration head and a separate [BOX] adapter (and the stage-1
groups ``box.also_train`` names), the proposer frozen from its release.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch import nn
from torchvision.ops import box_iou

from sparrow_plugin.checkpoints import host_record, host_weight_digests
from sparrow_plugin.config import PARAMETER_GROUPS, STAGE_GROUPS, SparrowConfig, check_mask_supervision, flat_settings
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.errors import ConfigError, SparrowError, SparrowWarning
from sparrow_plugin.frames import resize_frames, uniform_frames
from sparrow_plugin.grounding.box_grounding import BoxGrounding
from sparrow_plugin.grounding.filtration import filtration_losses, filtration_targets, top1_hit_rate
from sparrow_plugin.interfaces import EmbedEdit, ImageFeatures, Prediction, VideoBatch, VisualFeatures
from sparrow_plugin.losses import causal_lm_loss, mask_bce_loss, mask_dice_loss, presence_loss
from sparrow_plugin.modules import PromptProjection
from sparrow_plugin.tsf.inject import RoIRegionEncoder, roi_tsf_features, tsf_features
from sparrow_plugin.tsf.trackers import mask_track
from sparrow_plugin.tsf.tracks import Track, read_box_file

__all__ = ["SparrowModel", "GROUNDING_ROLES", "Answers", "ObjectPlan"]

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
        self.frozen_digests = host_weight_digests(host, spec.state_dict)
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
        # [BOX]'s own L→V adapter, or None: the [SEG] adapter serves both (the authors')
        self.box_adapter = copy.deepcopy(self.seg_adapter) if self.config.box.adapter == "separate" else None
        self.box_grounding = BoxGrounding(self.config.box, self.decoder) if self.config.box.proposer else None
        self.tsf_encoder = self._roi_encoder() if self.config.tsf.mode != "off" and self.config.tsf.encoding == "roi" else None
        if self.box_grounding is not None:
            self.frozen_digests.update(self.box_grounding.frozen_digests())
            released = getattr(host, "released_plugins", dict)().get("filtration")
            if released:
                self.box_grounding.load_released_filtration(released, gamma=self.config.box.release_gamma, source=type(host).__name__)
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
        """Freeze everything, then unfreeze the parameter groups of the stage, found by
        structure; every group is named, those that do not train are empty."""
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
            "box_adapter": list(self.box_adapter.parameters()) if self.box_adapter is not None else [],
            "filtration": self.box_grounding.filtration.trained_parameters(self.config.box.regression) if self.box_grounding is not None else [],
            "tsf": list(self.tsf_encoder.parameters()) if self.tsf_encoder is not None else [],
        }
        assert set(groups) == set(PARAMETER_GROUPS)
        active = set(STAGE_GROUPS[self.config.stage]) | (set(self.config.box.also_train) if self.config.stage == 2 else set())
        groups = {name: params if name in active else [] for name, params in groups.items()}
        for params in groups.values():
            for p in params:
                p.requires_grad_(True)
        return groups

    @torch.no_grad()
    def _roi_encoder(self) -> RoIRegionEncoder:
        """TSF's ``roi`` encoder, sized by the host's dense maps (one blank clip through its
        vision side, at its own frame count and size)."""
        request = self.host.frame_request()
        count = len(request.sample(64))
        height, width = request.size(224, 224)
        dense = self.host.encode_video(torch.zeros(1, count, 3, height, width)).dense
        return RoIRegionEncoder(dense.shape[2], self.host.hidden_size)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.box_grounding is not None:
            self.box_grounding.train(mode)  # keeps the frozen proposer in eval mode
        return self

    def start_box_adapter_from_seg(self) -> None:
        """Copy the [SEG] adapter's weights into a separate [BOX] adapter: where stage 2
        starts it, once stage 1's weights are in."""
        if self.box_adapter is not None:
            self.box_adapter.load_state_dict(self.seg_adapter.state_dict())

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
        frames, indices = self.host_frames(batch)
        visual = self.host.encode_video(frames, indices.to(frames.device))
        edits = self.tsf_edits(batch, frames, indices, visual)
        inputs = self.host.build_inputs(visual, batch.queries, answers, num_tsf_tokens=self.config.tsf.select.k if edits else 0)
        output = self.host(inputs, edits)
        losses = {"ce": causal_lm_loss(output.logits, inputs.labels)}
        if self.config.stage == 2:
            losses.update(self._filtration_losses(batch, inputs, output))
        rows, positions = self.grounding_positions(inputs.input_ids, "seg")
        if not self._trains_masks():
            rows = rows[:0]
        if rows.numel():
            tokens = self.seg_adapter(output.grounding_states[rows, positions + self.host.grounding_offset])
            frame_ids, cond = self.training_frames(batch, rows)
            wanted = torch.zeros(batch.frames.shape[:2], dtype=torch.bool, device=batch.frames.device)
            wanted[rows[:, None], frame_ids] = True
            features = self.decoder.encode(batch.frames, wanted)
            if self.config.stage == 2 and self.config.prompt != "seg":
                decoded = self._decode_with_true_boxes(batch, features, rows, tokens, frame_ids, cond)
            else:
                out = self.decoder.decode(features, tokens, clip_index=rows, cond_frame=cond, frame_ids=frame_ids)
                decoded = out.mask_logits, out.object_logits, batch.masks[rows[:, None], frame_ids]
            if decoded is None:
                rows = rows[:0]  # nothing decoded: the zero term below keeps DDP's reducer whole
            else:
                logits, object_logits, targets = decoded
                losses["bce"] = mask_bce_loss(logits, targets)
                losses["dice"] = mask_dice_loss(logits, targets)
                if self.presence_weight > 0:
                    losses["presence"] = presence_loss(object_logits, targets)
        loss = self.config.loss
        weights = {"ce": loss.ce, "bce": loss.bce, "dice": loss.dice, "presence": self.presence_weight, "proposal": loss.proposal, "proposal_box": loss.proposal_box}
        total = sum(weights[name] * value for name, value in losses.items() if name in weights)  # the rest are measurements
        if not rows.numel():
            total = total + self._untouched_parameters_term(("seg_adapter", "mask_decoder"))
        if self.config.tsf.drop > 0 and not edits:  # the roi encoder, unused in a batch without TSF
            total = total + self._untouched_parameters_term(("tsf",))
        losses["loss"] = total
        return losses

    def tsf_edits(self, batch: VideoBatch, frames: torch.Tensor, indices: torch.Tensor, visual: VisualFeatures) -> list[EmbedEdit]:
        """The ``<TSF>`` embeddings of a training batch (``tsf.mode: train`` or
        ``train+infer``), from the target's track on the host's frames; none otherwise
        (evaluation reads TSF only in ``train+infer``, see :meth:`predict`)."""
        if self.config.tsf.mode == "off" or not self.training:
            return []
        if self.config.tsf.drop > 0 and float(torch.rand(())) < self.config.tsf.drop:
            return []  # this batch trains as inference meets it (tsf.drop)
        if batch.tsf is None:
            raise ConfigError(
                f"tsf.mode {self.config.tsf.mode!r} needs the target's track in every training sample: give the data module "
                "tsf_tracks (annotation, or a cache folder from `sparrow tsf build`)"
            )
        if batch.llm_frames is None:
            raise ValueError("TSF reads the track on the host's frames: the batch has none (the data module was not told the host's frame request)")
        return [EmbedEdit(self.role_ids["tsf"], self._tsf_values(frames, indices, visual, batch.tsf))]

    def _tsf_values(self, frames: torch.Tensor, indices: torch.Tensor, visual: VisualFeatures, tracks: list[Track]) -> torch.Tensor:
        """(B, K, hidden): the tracks (on the host's frames) encoded (``tsf.encoding``), K chosen."""
        selection = self.config.tsf.select
        if self.tsf_encoder is not None:
            return roi_tsf_features(self.tsf_encoder, visual, indices, tracks, selection)
        return tsf_features(self.host, frames, tracks, selection)

    def _trains_masks(self) -> bool:
        """Whether the mask losses reach anything that trains: always in stage 1; in stage 2
        only when it trains stage-1 groups too."""
        return self.config.stage == 1 or bool(self.config.box.also_train)

    def _decode_with_true_boxes(self, batch: VideoBatch, features, rows, tokens, frame_ids, cond):
        """Stage 2's mask losses with the prompt the model answers with (``box`` or
        ``box+seg``), the boxes being the referred objects' true ones (what a perfect
        filtration head keeps): one SAM2 object per object, prompted on the prompted frame
        (``track``) or on each frame with that frame's box (``per_frame``), each trained on
        its own object's mask. A sample whose objects are nowhere in view is prompted with
        its [SEG] alone (``box+seg``) and trained on the empty mask.

        Returns (N, W, S, S) mask logits, (N, W) object logits and (N, W, S, S) targets over
        every object and frame of the batch (W = 1 in ``per_frame`` mode)."""
        per_frame, with_token = self.config.decoder.mode == "per_frame", self.config.prompt == "box+seg"
        boxed, alone = [], []  # (sample position in rows, object, frames, prompted position, box frame)
        for i, row in enumerate(rows.tolist()):
            visible = batch.object_visible[row]
            frames = frame_ids[i].tolist()
            objects = [(k, [f], 0, f) for k in range(len(visible)) for f in frames if visible[k, f]] if per_frame else [
                (k, frames, int(cond[i]), frames[int(cond[i])]) for k in range(len(visible)) if visible[k, frames[int(cond[i])]]
            ]
            boxed += [(i, *obj) for obj in objects]
            if not objects and with_token:
                alone.append(i)
        logits, object_logits, targets = [], [], []
        size = self.decoder.image_size
        groups: dict[int, list] = {}  # decoded together: objects with windows of one length
        for entry in boxed:
            groups.setdefault(len(entry[2]), []).append(entry)
        for entries in groups.values():
            sample = torch.tensor([e[0] for e in entries], device=rows.device)
            boxes = torch.stack([batch.object_boxes[rows[e[0]]][e[1], e[4]] for e in entries]).to(rows.device) * size
            decoded = self.decoder.decode(
                features, tokens[sample] if with_token else None, clip_index=rows[sample], boxes=boxes[:, None],
                cond_frame=torch.tensor([e[3] for e in entries], device=rows.device), frame_ids=torch.tensor([e[2] for e in entries], device=rows.device),
            )
            logits.append(decoded.mask_logits.flatten(0, 1))
            object_logits.append(decoded.object_logits.flatten(0, 1))
            targets.append(torch.stack([batch.object_masks[rows[e[0]]][e[1], e[2]] for e in entries]).to(rows.device).flatten(0, 1))
        if alone:
            sample = torch.tensor(alone, device=rows.device)
            decoded = self.decoder.decode(features, tokens[sample], clip_index=rows[sample], cond_frame=cond[sample], frame_ids=frame_ids[sample])
            logits.append(decoded.mask_logits.flatten(0, 1))
            object_logits.append(decoded.object_logits.flatten(0, 1))
            targets.append(batch.masks[rows[sample][:, None], frame_ids[sample]].flatten(0, 1))
        if not logits:  # prompt 'box' and no target in view: nothing to prompt SAM2 with
            return None
        return torch.cat(logits)[:, None], torch.cat(object_logits)[:, None], torch.cat(targets)[:, None]

    def _filtration_losses(self, batch: VideoBatch, inputs, output) -> dict[str, torch.Tensor]:
        """Stage 2: the filtration head on the proposals of the frame SAM2 is prompted on
        (where the target is visible), against the referred objects' boxes there."""
        role = self.config.box.query
        rows, positions = self.grounding_positions(inputs.input_ids, role)
        if not rows.numel():
            return {"proposal": self._untouched_parameters_term(("filtration", "box_adapter"))}
        tokens = self.query_embedding(output.grounding_states[rows, positions + self.host.grounding_offset], role)
        cond = (batch.cond_frames if batch.cond_frames is not None else torch.zeros(len(batch), dtype=torch.long)).to(rows.device)[rows]
        wanted = torch.zeros(batch.frames.shape[:2], dtype=torch.bool, device=batch.frames.device)
        wanted[rows, cond] = True
        features = self.decoder.encode(batch.frames, wanted)
        proposals = self.box_grounding.proposals(features, rows, cond)
        levels = self.box_grounding.levels(features, rows, cond, self.decoder.sam.no_mem_embed)
        filtered = self.box_grounding.filter(tokens, proposals, levels)
        object_boxes = [_boxes_on(batch, row, frame) for row, frame in zip(rows.tolist(), cond.tolist())]
        targets = filtration_targets(proposals.boxes, object_boxes, self.box_grounding.filtration.config.iou_threshold)
        selector = self.box_grounding.filtration.proposal_selector
        predicted = selector.regress(tokens, proposals.embeddings) if self.config.box.regression else None
        losses = filtration_losses(filtered, targets, predicted, object_boxes)
        losses["proposal_hit@1"] = top1_hit_rate(filtered.logits, proposals.boxes, object_boxes)  # a measurement, not a loss
        return losses

    def query_embedding(self, states: torch.Tensor, role: str) -> torch.Tensor:
        """(N, C) the filtration head's query from grounding states (N, hidden): the L→V
        adapter of the token's role (the [SEG] one when [BOX] shares it), its prompt tokens
        averaged when it makes several (UniPixel's and the tiny host's heads make 2)."""
        adapter = self.box_adapter if role == "box" and self.box_adapter is not None else self.seg_adapter
        return adapter(states).mean(dim=1)

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

    def _untouched_parameters_term(self, groups: tuple[str, ...]) -> torch.Tensor:
        """Zero, but connected to the trained parameters of ``groups``, which only samples
        with grounding tokens reach: a batch without them then still gives each a (zero)
        gradient, as DDP's reducer expects."""
        params = [p for name in groups for p in self.trainable_groups[name]]
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=params[0].device)) if params else torch.zeros(())

    def _answer(self, has_target: bool) -> str:
        if not has_target:
            return self.host.no_target_answer
        names = self.host.grounding_token_names
        grounding = f"{names['box']} {names['seg']}" if self.config.box.in_answers else names["seg"]
        return self.host.answer_template.format(grounding=grounding)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, batch: VideoBatch) -> list[Prediction]:
        """Answer every sample (one LLM prefill each, cached decoding), then segment what
        each answer's [SEG] tokens refer to, at the original frame size.

        ``prompt: seg``: one SAM2 object per [SEG]. With boxes (``box`` / ``box+seg``), the
        filtration head keeps the proposals its [BOX] refers to (the [BOX] right before the
        [SEG], or the [SEG] itself without one) and every kept box is an object, prompted
        with the box (and the [SEG] token). The expression's mask is the union.

        ``tsf.mode: train+infer``: the LLM also reads TSF, from each video's box file
        (``tsf.infer: box_file``), from the tracks the data gives each sample (``dataset``),
        or from the model's own first pass without TSF (``first_pass``: its masks' boxes on
        every frame), which feeds the second.
        """
        self.warn_unknown_words(batch.queries)
        if self.config.tsf.mode != "train+infer":
            return self._predict(batch)
        if self.config.tsf.infer == "dataset":
            if batch.tsf is None:
                raise ConfigError("tsf.infer 'dataset' reads each evaluation sample's track: give the data module tsf_eval_tracks (annotation, or a cache folder built for the split)")
            return self._predict(batch, host_tracks=batch.tsf)
        if self.config.tsf.infer == "box_file":
            return self._predict(batch, [self.box_file_track(batch.keys[b][0], len(batch.frame_names[b]), batch.original_sizes[b]) for b in range(len(batch))])
        return self._predict(batch, [_track_of(prediction, batch, b) for b, prediction in enumerate(self._predict(batch))])

    def _predict(self, batch: VideoBatch, tracks: list[Track] | None = None, host_tracks: list[Track] | None = None) -> list[Prediction]:
        """:meth:`predict` with TSF from the given tracks, over the clip's frames or already
        on the host's frames (neither: no TSF)."""
        frames, indices = self.host_frames(batch)
        answers = self.answer(batch.queries, frames, indices, tracks, host_tracks)
        num_frames = batch.frames.shape[1]
        plan = ObjectPlan.empty(len(batch), self.inference_cond_frame(num_frames))
        collected = _CollectedObjects()
        if answers.seg_rows.numel():
            wanted = torch.zeros(batch.frames.shape[:2], dtype=torch.bool, device=batch.frames.device)
            wanted[answers.seg_rows] = True
            features = self.decoder.encode(batch.frames, wanted)
            plan = self.plan_objects(answers, features)
            for decoded in self.decoded_objects(features, plan):
                collected.add(*decoded)
        objects = collected.objects(plan)
        return [self._prediction(batch, b, answers.generation, answers.rows, answers.roles, objects[b], plan.cond_frames[b]) for b in range(len(batch))]

    def answer(self, queries: list[str], frames: torch.Tensor, indices: torch.Tensor, tracks: list[Track] | None = None, host_tracks: list[Track] | None = None) -> "Answers":
        """The host's answers to ``queries`` on its frames (B, T_h, 3, h, w) at clip
        positions ``indices`` (B, T_h): one prefill each, cached decoding, and the grounding
        tokens' states in SAM2's prompt space (TSF from ``tracks`` over the clip, or
        ``host_tracks`` on the host's frames)."""
        visual = self.host.encode_video(frames, indices.to(frames.device))
        if tracks is not None:
            host_tracks = [track.on(i) for track, i in zip(tracks, indices.cpu().tolist())]
        edits = []
        if host_tracks is not None:
            edits = [EmbedEdit(self.role_ids["tsf"], self._tsf_values(frames, indices, visual, host_tracks))]
        prompt = self.host.build_inputs(visual, queries, None, num_tsf_tokens=self.config.tsf.select.k if edits else 0)
        self._check_context(prompt, queries)
        generation = self.host.generate(prompt, edits=edits, max_new_tokens=self.config.max_new_tokens)
        rows, columns, roles = self.grounding_tokens(generation.new_ids, generation.new_mask)
        is_seg = roles == GROUNDING_ROLES.index("seg")
        seg_rows, seg_columns = rows[is_seg], columns[is_seg]
        seg_tokens = self.seg_adapter(generation.token_states[seg_rows, seg_columns]) if seg_rows.numel() else None
        queries_of_seg = None
        if seg_rows.numel() and self.config.prompt != "seg" and self.box_grounding is not None:
            query_rows, query_columns, query_roles = self._queries(rows, columns, roles, seg_rows, seg_columns)
            queries_of_seg = torch.stack([
                self.query_embedding(generation.token_states[r, c][None], GROUNDING_ROLES[role])[0]
                for r, c, role in zip(query_rows.tolist(), query_columns.tolist(), query_roles.tolist())
            ])
        return Answers(generation, rows, roles, seg_rows, seg_tokens, queries_of_seg)

    def _queries(self, rows, columns, roles, seg_rows, seg_columns):
        """For each [SEG], the token the filtration head reads: with ``box.query: box``
        the last [BOX] before it in its answer (the authors pair them in order), else the
        [SEG] itself. Returns (rows, columns, roles) of those tokens."""
        box_role, seg_role = GROUNDING_ROLES.index("box"), GROUNDING_ROLES.index("seg")
        query_columns, query_roles = seg_columns.clone(), torch.full_like(seg_columns, seg_role)
        if self.config.box.query == "box":
            for i, (row, column) in enumerate(zip(seg_rows.tolist(), seg_columns.tolist())):
                before = columns[(rows == row) & (roles == box_role) & (columns < column)]
                if before.numel():
                    query_columns[i], query_roles[i] = before.max(), box_role
        return seg_rows, query_columns, query_roles

    def plan_objects(self, answers: "Answers", features: ImageFeatures) -> "ObjectPlan":
        """The SAM2 objects that segment what the answers' [SEG] tokens refer to.

        ``prompt: seg``: one object per [SEG], prompted with it. With boxes, the filtration
        head's kept boxes: ``track``: the boxes kept on the prompted frame (``cond_frame``;
        ``best``: the candidate frame whose best kept box is most confident), one object
        each, carried by SAM2's memory; ``box.objects: max_pool`` (the authors'): one
        object per [SEG], the max of its boxes' masks. ``per_frame``: the prompted frame's
        boxes on every frame, or (``per_box``) boxes kept on every frame, each frame
        decoded alone. Nothing kept: the [SEG] token alone (``box.fallback: seg``, with
        ``box+seg``), or no object.
        """
        num_frames = features.num_frames
        plan = ObjectPlan.empty(len(answers.generation.texts), self.inference_cond_frame(num_frames))
        seg_rows, seg_tokens = answers.seg_rows.tolist(), answers.seg_tokens
        if self.config.prompt == "seg" or self.box_grounding is None:
            for g, row in enumerate(seg_rows):  # decoded side by side, as one batch
                plan.add(row, 0, _Prompt(clip=row, token=seg_tokens[g], cond=plan.cond_frames[row]))
            return plan
        candidates = uniform_frames(num_frames, self.config.decoder.best_of) if self.config.decoder.cond_frame == "best" else [self.inference_cond_frame(num_frames)]
        choices = [self._keep_boxes(features, answers.seg_rows, answers.queries, frame) for frame in dict.fromkeys(candidates)]
        best = torch.stack([choice.confidence for choice in choices]).argmax(0)  # (G,) per [SEG]
        each_frame = self.config.decoder.mode == "per_frame" and self.config.box.objects == "per_box"
        with_token = self.config.prompt == "box+seg"
        size = self.decoder.image_size
        for g, row in enumerate(seg_rows):
            choice = choices[int(best[g])]
            plan.cond_frames[row] = choice.frame
            token = seg_tokens[g] if with_token else None
            boxes, scores = choice.boxes[g], choice.scores[g]
            if each_frame:  # the box is the prompted frame's best, for the record (hit@1)
                best_box = scores.argmax() if len(scores) else None
                box, score = (boxes[best_box], scores[best_box]) if best_box is not None else (None, None)
                plan.add(row, g, _Prompt(clip=row, token=token, each_frame_query=answers.queries[g]), box=box, box_score=score)
                continue
            re_anchor = self._re_anchor(features, answers.seg_rows[g : g + 1], answers.queries[g : g + 1]) if self.config.decoder.re_anchoring else None
            if not len(boxes):
                if with_token and self.config.box.fallback == "seg":
                    plan.add(row, g, _Prompt(clip=row, token=token, cond=choice.frame, re_anchor=re_anchor))
                continue
            if self.config.box.objects == "max_pool":  # the authors': one object per token
                plan.add(row, g, *[_Prompt(clip=row, token=token, box=b * size, cond=choice.frame, re_anchor=re_anchor) for b in boxes], box=boxes[0], box_score=scores[0])
                continue
            for b, score in zip(boxes, scores):
                plan.add(row, g, _Prompt(clip=row, token=token, box=b * size, cond=choice.frame, re_anchor=re_anchor), box=b, box_score=score)
        return plan

    def decoded_objects(self, features: ImageFeatures, plan: "ObjectPlan") -> Iterator[tuple[int, int, int, torch.Tensor, torch.Tensor]]:
        """Decode every object of ``plan`` on every frame of ``features``, yielding each
        frame's masks as computed: ``(sample, its object, frame, (S, S) logits, object
        logit)`` (a max-pooled object once all its prompts are); records each prompt's
        prompted frames in the plan.

        Prompts of one kind (token, box, both) are decoded in one call, batched by
        ``plan.groups`` (each [SEG]'s objects together, as when each is decoded alone),
        so that a frame's features are read once for all of them."""
        kinds: dict[tuple, list[int]] = {}
        for i, prompt in enumerate(plan.prompts):
            if prompt.each_frame_query is None:
                kinds.setdefault((prompt.token is not None, prompt.box is not None), []).append(i)
        pooled = _Pooling(plan)
        device = features.rows.device
        for (has_token, has_box), members in kinds.items():
            prompts = [plan.prompts[i] for i in members]
            anchors = [p.re_anchor for p in prompts]
            re_anchor = None
            if any(a is not None for a in anchors):
                re_anchor = lambda n, *seen: anchors[n](0, *seen) if anchors[n] is not None else None  # noqa: E731
            prompted = yield from pooled.objects(members, self.decoder.decode_frames(
                features,
                torch.stack([p.token for p in prompts]) if has_token else None,
                clip_index=torch.tensor([p.clip for p in prompts], device=device),
                boxes=torch.stack([p.box for p in prompts])[:, None] if has_box else None,
                cond_frame=torch.tensor([p.cond for p in prompts], device=device),
                re_anchor=re_anchor,
                groups=torch.tensor([plan.groups[i] for i in members], device=device),
            ))
            for i, frames in zip(members, prompted):
                plan.prompted[i] = frames
        each_frame = [i for i, prompt in enumerate(plan.prompts) if prompt.each_frame_query is not None]
        if each_frame:
            prompted = yield from pooled.objects(each_frame, self._decode_on_each_frame(features, plan, each_frame))
            for i, frames in zip(each_frame, prompted):
                plan.prompted[i] = frames

    def _re_anchor(self, features, seg_row, query):
        """The decoder's re-anchoring callback for one [SEG] (``decoder.re_anchor``,
        ``decoder.re_anchor_drift``): on a frame where one of its objects is lost (presence
        logit below ``re_anchor``, or an empty mask), the confident kept box (above the
        filtration threshold) that overlaps where the object was last seen most, else the
        most confident one; on a frame where it is tracked, the most confident kept box if
        it overlaps the tracked mask's box by less than ``re_anchor_drift`` IoU. None: no
        such box, the frame stays as tracked. Each frame is filtered once per [SEG]."""
        size, threshold = self.decoder.image_size, self.box_grounding.filtration.config.threshold
        lost_below, drift_below = self.config.decoder.re_anchor, self.config.decoder.re_anchor_drift
        found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def confident_boxes(frame: int) -> tuple[torch.Tensor, torch.Tensor]:
            if frame not in found:
                kept = self._keep_boxes(features, seg_row, query, frame)
                confident = kept.scores[0] >= threshold
                found[frame] = (kept.boxes[0][confident] * size, kept.scores[0][confident])
            return found[frame]

        def box_for(obj: int, frame: int, presence: float, tracked: torch.Tensor | None, last_box: torch.Tensor | None):
            lost = lost_below is not None and (tracked is None or presence < lost_below)
            if not lost and (drift_below is None or tracked is None):
                return None
            boxes, scores = confident_boxes(frame)
            if not len(boxes):
                return None
            if lost:
                if last_box is not None:
                    overlap = box_iou(last_box[None].to(boxes), boxes)[0]
                    if float(overlap.max()) > 0:
                        return boxes[overlap.argmax()]
                return boxes[scores.argmax()]
            best = boxes[scores.argmax()]
            return best if float(box_iou(tracked[None].to(boxes), best[None])) < drift_below else None

        return box_for

    def _keep_boxes(self, features, seg_rows, queries, frame: int) -> "_Kept":
        """The filtration head's kept boxes of every [SEG]'s query on one frame."""
        frames = torch.full_like(seg_rows, frame)
        proposals = self.box_grounding.proposals(features, seg_rows, frames)
        levels = self.box_grounding.levels(features, seg_rows, frames, self.decoder.sam.no_mem_embed)
        filtered = self.box_grounding.filter(queries, proposals, levels)
        probabilities = filtered.logits.sigmoid()
        kept = filtered.kept
        if self.config.box.fallback != "best":  # no proposal passes: keep none
            kept = kept & (probabilities >= self.box_grounding.filtration.config.threshold)
        return _Kept(
            frame=frame,
            boxes=[proposals.boxes[g][kept[g]] for g in range(len(seg_rows))],
            scores=[probabilities[g][kept[g]] for g in range(len(seg_rows))],
            confidence=probabilities.max(-1).values,
        )

    def _decode_on_each_frame(self, features, plan: "ObjectPlan", objects: list[int]):
        """[SEG]s in ``per_frame`` mode with boxes kept on every frame: each frame decoded
        with its own boxes, the masks of a frame max-pooled; frame by frame, so that a
        frame's features serve every object."""
        device, size = features.rows.device, self.decoder.image_size
        with_token = self.config.prompt == "box+seg"
        for frame in range(features.num_frames):
            for n, i in enumerate(objects):
                prompt = plan.prompts[i]
                boxes = self._keep_boxes(features, torch.tensor([prompt.clip], device=device), prompt.each_frame_query[None], frame).boxes[0]
                if not len(boxes) and not (with_token and self.config.box.fallback == "seg"):  # nothing kept: an empty mask
                    yield [n], frame, torch.full((1, size, size), NO_OBJ_SCORE, device=device), torch.full((1,), NO_OBJ_SCORE, device=device)
                    continue
                count = max(len(boxes), 1)
                decoded = self.decoder.decode(
                    features,
                    prompt.token[None].expand(count, -1, -1) if with_token else None,
                    clip_index=torch.full((count,), prompt.clip, device=device),
                    boxes=boxes[:, None] * size if len(boxes) else None,
                    frame_ids=torch.full((count, 1), frame, device=device),
                )
                yield [n], frame, decoded.mask_logits[:, 0].max(0).values[None], decoded.object_logits[:, 0].max(0).values[None]
        return [list(range(features.num_frames))] * len(objects)

    def _prediction(self, batch: VideoBatch, b: int, generation, rows, roles, objects: list["_Object"], cond_frame: int) -> Prediction:
        height, width = batch.original_sizes[b]
        masks = scores = boxes = box_scores = None
        if objects:
            logits = torch.stack([obj.logits for obj in objects]).float()
            masks = (F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False) > 0).cpu()
            scores = torch.stack([obj.scores for obj in objects]).float().cpu()
            if any(obj.box is not None for obj in objects):
                boxes = torch.stack([obj.box if obj.box is not None else torch.full((4,), float("nan"), device=logits.device) for obj in objects]).cpu()
                box_scores = torch.stack([obj.box_score if obj.box_score is not None else torch.tensor(float("nan"), device=logits.device) for obj in objects]).cpu()
        return Prediction(
            answer=generation.texts[b],
            truncated=bool(generation.truncated[b]),
            grounding_tokens=[GROUNDING_ROLES[r] for r in roles[rows == b].tolist()],
            masks=masks.any(dim=0) if masks is not None else None,
            object_masks=masks,
            object_scores=scores,
            cond_frame=cond_frame,
            boxes=boxes,
            box_scores=box_scores,
            prompted_frames=[obj.prompted_frames or [cond_frame] for obj in objects] if objects else None,
        )

    def inference_cond_frame(self, num_frames: int) -> int:
        """The frame SAM2 is prompted on at inference (``decoder.cond_frame``; ``best`` is
        chosen per [SEG] among candidate frames, with boxes)."""
        setting = self.config.decoder.cond_frame
        return 0 if setting in ("first", "best") else setting % num_frames

    # ------------------------------------------------------------------ shared

    def _check_context(self, prompt, queries: list[str]) -> None:
        """Refuse, naming it, a prompt whose answer (up to ``max_new_tokens``) would run past
        the host's context, which would otherwise fail deep in the LLM or read garbage
        positions."""
        limit = getattr(self.host, "context_length", None)  # optional in the host contract
        if limit is None:
            return
        budget = self.config.max_new_tokens
        for query, length in zip(queries, prompt.attention_mask.sum(dim=1).tolist()):
            if length + budget > limit:
                shown = query if len(query) <= 80 else query[:77] + "..."
                raise SparrowError(
                    f"the expression {shown!r} makes a prompt of {int(length)} tokens; with max_new_tokens={budget} the answer "
                    f"would run past the host's context of {limit} tokens: shorten the expression (or lower max_new_tokens)"
                )

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
        """The host's visual features of its own frames (:meth:`host_frames`)."""
        frames, indices = self.host_frames(batch)
        return self.host.encode_video(frames, indices.to(frames.device))

    def host_frames(self, batch: VideoBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The host's frames (B, T_h, 3, h, w) and their clip indices (B, T_h): those the data
        pipeline read for it, or, when it was not told the host's request, sampled here from
        the decoder's."""
        if batch.llm_frames is not None:
            return batch.llm_frames, batch.llm_frame_indices
        request = self.host.frame_request()
        picked = torch.tensor(request.sample(batch.frames.shape[1]), device=batch.frames.device)
        height, width = batch.original_sizes[0]  # one size for the batch: frames of other sizes cannot stack
        frames = resize_frames(batch.frames[:, picked], request.size(height, width), request.interpolation)
        indices = batch.frame_indices[:, picked.cpu()] if batch.frame_indices is not None else picked.expand(len(batch), -1)
        return frames, indices

    def box_file_track(self, video: str, num_frames: int, size: tuple[int, int]) -> Track:
        """A video's track from its box file (``tsf.box_files``), over its frames; ``size``: (H, W)."""
        template = self.config.tsf.box_files
        path = Path(template.format(video=video)) if "{video}" in template else Path(template) / f"{video}.txt"
        return read_box_file(path, num_frames=num_frames, width=size[1], height=size[0])

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


class Answers(NamedTuple):
    """The host's answers to a batch of queries (:meth:`SparrowModel.answer`): the
    generation, its grounding tokens (rows and roles, in reading order), and per [SEG] its
    sample (``seg_rows``), its (G, P, C) prompt tokens and, with boxes, the filtration
    head's (G, C) queries."""

    generation: object
    rows: torch.Tensor
    roles: torch.Tensor
    seg_rows: torch.Tensor
    seg_tokens: torch.Tensor | None
    queries: torch.Tensor | None


class _Prompt(NamedTuple):
    """One SAM2 object to decode: in clip ``clip`` of the features, prompted with its
    [SEG]'s (P, C) token and/or a (4,) xyxy box in pixels at the decoder's size, on frame
    ``cond``, with the re-anchoring callback of its [SEG] (:data:`ReAnchor` of object 0);
    ``each_frame_query``: its boxes are kept anew on every frame by this query instead."""

    clip: int
    token: torch.Tensor | None = None
    box: torch.Tensor | None = None
    cond: int = 0
    re_anchor: object = None
    each_frame_query: torch.Tensor | None = None


class _Slot(NamedTuple):
    """One object of a prediction: its prompts (several when max-pooled), the kept box
    (normalised xyxy) and its score, for the record."""

    prompts: list[int]
    box: torch.Tensor | None
    box_score: torch.Tensor | None


@dataclass
class ObjectPlan:
    """What SAM2 decodes for a set of answers (:meth:`SparrowModel.plan_objects`): per
    sample its prompted frame and its objects (``slots``), each made of prompts.

    Attributes:
        cond_frames: per sample, the frame SAM2 is prompted on.
        slots: per sample, its objects in order.
        prompts: every SAM2 object to decode, with ``owners`` (sample, object) and
            ``groups`` (prompts of different groups are never batched together).
        prompted: per prompt, the frames it was prompted on, once decoded.
    """

    cond_frames: list[int]
    slots: list[list[_Slot]]
    prompts: list[_Prompt] = field(default_factory=list)
    owners: list[tuple[int, int]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    prompted: list[list[int] | None] = field(default_factory=list)

    @classmethod
    def empty(cls, num_samples: int, cond_frame: int) -> "ObjectPlan":
        return cls([cond_frame] * num_samples, [[] for _ in range(num_samples)])

    def add(self, row: int, group: int, *prompts: _Prompt, box=None, box_score=None) -> None:
        """One object of sample ``row``, the max of these prompts' masks."""
        slot = len(self.slots[row])
        self.slots[row].append(_Slot(list(range(len(self.prompts), len(self.prompts) + len(prompts))), box, box_score))
        self.prompts += prompts
        self.owners += [(row, slot)] * len(prompts)
        self.groups += [group] * len(prompts)
        self.prompted += [None] * len(prompts)

    def extend(self, other: "ObjectPlan", group_offset: int) -> None:
        """``other``'s samples after this plan's, its groups apart from this plan's."""
        offset, first = len(self.slots), len(self.prompts)
        self.cond_frames += other.cond_frames
        self.slots += [[slot._replace(prompts=[first + i for i in slot.prompts]) for slot in slots] for slots in other.slots]
        self.prompts += other.prompts
        self.owners += [(row + offset, slot) for row, slot in other.owners]
        self.groups += [group + group_offset for group in other.groups]
        self.prompted += other.prompted

    def prompted_frames(self, row: int, slot: int) -> list[int]:
        """The frames object ``slot`` of sample ``row`` was prompted on (its prompts' together)."""
        frames = {f for i in self.slots[row][slot].prompts for f in (self.prompted[i] or [self.cond_frames[row]])}
        return sorted(frames)


class _Pooling:
    """Decoded prompts as the plan's objects: a max-pooled object's prompts, decoded side
    by side, become the max of their masks."""

    def __init__(self, plan: ObjectPlan):
        self.plan = plan
        self.waiting: dict[tuple[int, int, int], list] = {}

    def objects(self, prompts: list[int], decoded):
        """Yields (sample, object, frame, logits, object logit) from ``decoded``, the
        decoder's frames of ``prompts``; returns what it returns."""
        while True:
            try:
                members, t, logits, scores = next(decoded)
            except StopIteration as done:
                return done.value
            for n, mask, score in zip(members, logits, scores):
                row, slot = self.plan.owners[prompts[n]]
                pooled = self.plan.slots[row][slot].prompts
                if len(pooled) == 1:
                    yield row, slot, t, mask, score
                    continue
                arrived = self.waiting.setdefault((row, slot, t), [])
                arrived.append((mask, score))
                if len(arrived) == len(pooled):
                    del self.waiting[(row, slot, t)]
                    yield row, slot, t, torch.stack([m for m, _ in arrived]).max(0).values, torch.stack([v for _, v in arrived]).max(0).values


class _CollectedObjects:
    """Every object's masks on every frame, kept (a batch's predictions)."""

    def __init__(self):
        self.frames: dict[tuple[int, int], dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, row: int, slot: int, t: int, logits: torch.Tensor, score: torch.Tensor) -> None:
        self.frames.setdefault((row, slot), {})[t] = (logits, score)

    def objects(self, plan: ObjectPlan) -> list[list["_Object"]]:
        objects = []
        for row, slots in enumerate(plan.slots):
            objects.append([])
            for slot, entry in enumerate(slots):
                frames = self.frames[(row, slot)]
                order = sorted(frames)
                objects[row].append(_Object(
                    torch.stack([frames[t][0] for t in order]), torch.stack([frames[t][1] for t in order]),
                    entry.box, entry.box_score, plan.prompted_frames(row, slot),
                ))
        return objects


class _Object(NamedTuple):
    """One SAM2 object of a prediction: (T, S, S) mask logits and (T,) object scores at
    the decoder's size, the box it was prompted with (normalised xyxy) and its score, and
    the frames it was prompted on (None: the conditioning frame alone)."""

    logits: torch.Tensor
    scores: torch.Tensor
    box: torch.Tensor | None = None
    box_score: torch.Tensor | None = None
    prompted_frames: list[int] | None = None


class _Kept(NamedTuple):
    """The filtration head's choice on one frame for G [SEG] tokens: per token the kept
    boxes (K_g, 4) normalised xyxy and their probabilities, and (G,) its best probability."""

    frame: int
    boxes: list[torch.Tensor]
    scores: list[torch.Tensor]
    confidence: torch.Tensor


def _track_of(prediction: Prediction, batch: VideoBatch, b: int) -> Track:
    """The track a first pass found: its mask's box on every decoded frame (score 1), the
    whole frame with score 0 where the mask is empty (not found)."""
    return Track.not_found(len(batch.frame_names[b])) if prediction.masks is None else mask_track(prediction.masks)


def _boxes_on(batch: VideoBatch, row: int, frame: int) -> torch.Tensor:
    """(M, 4) normalised xyxy boxes of sample ``row``'s referred objects visible on ``frame``."""
    if batch.object_boxes is None or batch.object_visible is None:
        raise ValueError("stage 2 trains on the referred objects' boxes: the batch has none (a split without masks?)")
    boxes, visible = batch.object_boxes[row], batch.object_visible[row]
    return boxes[visible[:, frame], frame].to(batch.frames.device)
