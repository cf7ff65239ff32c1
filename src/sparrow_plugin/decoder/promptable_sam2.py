"""SAM2 that also takes grounding embeddings ([SEG] hidden states) as sparse prompts.

The `sam2` package prompts its mask decoder with points, boxes and masks only. Pixel-
grounded LLMs add their own tokens to the sparse prompt (VideoGLaMM and GLUS patch the
prompt encoder, UniPixel threads a ``hidden`` argument through ``track_step``). This
subclass does the same without touching SAM2's code: inside :meth:`prompt_tokens` a
forward hook on the prompt encoder appends the tokens to the sparse embeddings that
SAM2's own ``_forward_sam_heads`` computes, so everything else (object pointers,
occlusion scores, memory) is SAM2's unchanged logic. Parameter names are SAM2Base's,
so official checkpoints load as they are.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base

__all__ = ["PromptableSAM2"]


class PromptableSAM2(SAM2Base):
    """SAM2Base plus token prompts for the frames it is told to condition on."""

    def __init__(self, *args, gate_masks_in_training: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # see _forward_sam_heads; the model sets it from the host's DecoderSpec or the recipe
        self.gate_masks_in_training = gate_masks_in_training
        self._prompt_tokens: torch.Tensor | None = None
        self._prompt_layout: str = "tokens_only"
        self._prompt_multimask: bool = False
        self.sam_prompt_encoder.register_forward_hook(self._add_prompt_tokens, with_kwargs=True)

    @contextmanager
    def prompt_tokens(
        self,
        tokens: torch.Tensor,
        layout: Literal["tokens_only", "after_padding"] = "tokens_only",
        multimask: bool = False,
    ):
        """Within this block, every SAM head call is prompted with ``tokens`` as well.

        Args:
            tokens: (B, P, C) embeddings in SAM2's prompt space (C = ``hidden_dim``), one
                row per object in the batch.
            layout: ``tokens_only`` drops SAM2's automatic "not a point" padding when no
                point is given, so the sparse prompt is exactly ``tokens`` (LISA, GLUS,
                VideoGLaMM training); ``after_padding`` keeps it and appends the tokens
                (UniPixel, VideoGLaMM's video branch).
            multimask: whether the prompted frame yields three masks (best IoU kept).
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.hidden_dim:
            raise ValueError(f"prompt tokens must be (B, P, {self.hidden_dim}), got {tuple(tokens.shape)}")
        if layout not in ("tokens_only", "after_padding"):
            raise ValueError(f"prompt layout must be 'tokens_only' or 'after_padding', got {layout!r}")
        previous = self._prompt_tokens, self._prompt_layout, self._prompt_multimask
        self._prompt_tokens, self._prompt_layout, self._prompt_multimask = tokens, layout, multimask
        try:
            yield
        finally:
            self._prompt_tokens, self._prompt_layout, self._prompt_multimask = previous

    def _add_prompt_tokens(self, module, args, kwargs, output):
        tokens = self._prompt_tokens
        if tokens is None:
            return output
        sparse, dense = output
        if self._prompt_layout == "tokens_only":
            # SAM2 pads the points with "not a point" entries (label -1): one of its own
            # when no point is given, one more from the prompt encoder. Keep real points.
            points = kwargs.get("points", args[0] if args else None)
            real_points = 0 if points is None else int((points[1] >= 0).sum(dim=1).max())
            sparse = sparse[:, :real_points]
        return torch.cat([sparse, tokens.to(sparse.dtype)], dim=1), dense

    def _use_multimask(self, is_init_cond_frame, point_inputs):
        if self._prompt_tokens is not None:
            return self._prompt_multimask
        return super()._use_multimask(is_init_cond_frame, point_inputs)

    def _forward_sam_heads(self, *args, **kwargs):
        """SAM2's heads; in ungated training, the masks alone skip SAM2's "absent" gate.

        SAM2 replaces the masks of an object it scores absent with a constant, which cuts
        their gradient. Ungated (``gate_masks_in_training`` False, in training), the masks
        returned for the losses are computed as if the object were present, while the
        object pointer, the memory's no-object embedding (both read the returned score)
        and the mask the memory encodes (:meth:`_encode_new_memory`) follow SAM2's own
        presence score: the memory meets "absent" in training as it does at inference.
        UniPixel trains with ungated masks too.
        """
        if not self._ungated():
            return super()._forward_sam_heads(*args, **kwargs)
        scores = {}

        def present_to_the_gate(module, inputs, output):
            scores["logits"] = output[3]
            return (*output[:3], torch.full_like(output[3], float("inf")))

        handle = self.sam_mask_decoder.register_forward_hook(present_to_the_gate)
        try:
            *masks, obj_ptr, _ = super()._forward_sam_heads(*args, **kwargs)
        finally:
            handle.remove()
        # the pointer was blended for "present" (weight 1 on the token's pointer): blend it
        # again with the real score, as SAM2 does
        logits = scores["logits"]
        appearing = logits.sigmoid() if self.soft_no_obj_ptr else (logits > 0).to(obj_ptr.dtype)
        if self.fixed_no_obj_ptr:
            obj_ptr = appearing * obj_ptr
        obj_ptr = obj_ptr + (1 - appearing) * self.no_obj_ptr
        return (*masks, obj_ptr, logits)

    def _encode_new_memory(self, current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits, is_mask_from_pts):
        """SAM2's memory encoder; in ungated training it is given the mask as the gate
        leaves it (the "absent" constant where SAM2 scores the object absent), exactly
        what it is given at inference."""
        if self._ungated():
            appearing = (object_score_logits > 0)[..., None, None]
            pred_masks_high_res = torch.where(appearing, pred_masks_high_res, NO_OBJ_SCORE)
        return super()._encode_new_memory(current_vision_feats, feat_sizes, pred_masks_high_res, object_score_logits, is_mask_from_pts)

    def _ungated(self) -> bool:
        return self.training and not self.gate_masks_in_training and self.pred_obj_scores

    def track_step(self, *args, **kwargs):
        """SAM2's tracking step; also keeps ``object_score_logits`` while training.

        SAM2Base drops them in training mode, but SPARROW supervises object presence
        (no-target queries, occluded frames), so they are returned in both modes.
        """
        scores = {}
        handle = self.sam_mask_decoder.register_forward_hook(lambda module, inputs, output: scores.update(logits=output[3]))
        try:
            out = super().track_step(*args, **kwargs)
        finally:
            handle.remove()
        out.setdefault("object_score_logits", scores["logits"])
        return out

    def encode_frames(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """Backbone features of normalised images, flattened the way ``track_step`` reads them.

        The image encoder runs without autograd when none of its parameters train (the
        usual case: a frozen, pretrained Hiera), which saves most of the memory; the mask
        decoder's high-resolution projections still get gradients when it trains.

        Args:
            images: (F, 3, S, S) float, ImageNet-normalised, S = ``image_size``.
        Returns:
            per feature level: features (HW, F, C), positional encodings (HW, F, C), and
            the (H, W) sizes.
        """
        train_encoder = torch.is_grad_enabled() and any(p.requires_grad for p in self.image_encoder.parameters())
        with torch.set_grad_enabled(train_encoder):
            backbone_out = self.image_encoder(images)
        if self.use_high_res_features_in_sam:
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        _, features, positions, sizes = self._prepare_backbone_features(backbone_out)
        return features, positions, sizes
