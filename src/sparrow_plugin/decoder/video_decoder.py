"""SPARROW's mask decoder: SAM2 prompted on one frame, tracked through the clip."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sparrow_plugin.decoder.build import build_sam2
from sparrow_plugin.decoder.promptable_sam2 import PromptableSAM2
from sparrow_plugin.errors import ConfigError
from sparrow_plugin.interfaces import DecoderOutput, DecoderSpec, ImageFeatures

__all__ = ["SAM2VideoDecoder", "ReAnchor"]

# Asked on every tracked frame: (object n, frame t, its presence logit there, the box of its
# mask there, where it was last seen present) -> a box to prompt object n with on frame t, or
# None to keep the frame as tracked. Boxes: (4,) xyxy pixels at image_size; None when empty.
ReAnchor = Callable[[int, int, float, "torch.Tensor | None", "torch.Tensor | None"], "torch.Tensor | None"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class SAM2VideoDecoder(nn.Module):
    """Masks for prompted objects over whole clips.

    Encoding and decoding are apart: :meth:`encode` computes SAM2's image features once
    per frame (only the frames asked for), :meth:`decode` prompts objects on them.
    ``mode="track"`` (default) prompts the conditioning frame with the grounding tokens
    (and boxes, if any) and lets SAM2's memory carry the object through the other frames,
    forward and then backward from the conditioning frame, exactly as SAM2's own tracking
    step does in training and inference. ``mode="per_frame"`` prompts every frame
    independently (no memory), as VideoGLaMM trains.

    Args:
        sam: a :class:`PromptableSAM2`.
        prompt_layout, multimask: how grounding tokens prompt SAM2 (see
            :class:`~sparrow_plugin.interfaces.DecoderSpec`).
        mode: ``track`` or ``per_frame``.
        cond_frame: index of the prompted frame in ``track`` mode when a call names none
            (negative counts from the end).
    """

    def __init__(
        self,
        sam: PromptableSAM2,
        prompt_layout: Literal["tokens_only", "after_padding"] = "tokens_only",
        multimask: bool = False,
        mode: Literal["track", "per_frame"] = "track",
        cond_frame: int = 0,
    ):
        super().__init__()
        if mode not in ("track", "per_frame"):
            raise ConfigError(f"decoder mode must be 'track' or 'per_frame', got {mode!r}")
        self.sam = sam
        self.prompt_layout, self.multimask = prompt_layout, multimask
        self.mode, self.cond_frame = mode, cond_frame
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_spec(cls, spec: DecoderSpec, mode: str = "track", cond_frame: int = 0) -> "SAM2VideoDecoder":
        sam = build_sam2(spec.config, state_dict=spec.state_dict, checkpoint=spec.checkpoint, overrides=spec.overrides)
        return cls(sam, spec.prompt_layout, spec.multimask, mode=mode, cond_frame=cond_frame)

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    @property
    def prompt_dim(self) -> int:
        return self.sam.hidden_dim

    def forward(
        self,
        frames: torch.Tensor,
        prompt_tokens: torch.Tensor | None,
        clip_index: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        cond_frame: int | torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Encode the prompted clips' frames, then :meth:`decode` every frame of them.

        Args:
            frames: (B, T, 3, H, W) float RGB in [0, 1]; resized to ``image_size`` if needed.
            prompt_tokens, clip_index, boxes, points, cond_frame: see :meth:`decode`.
        """
        num_objects = _count_objects(prompt_tokens, boxes, points)
        clip_index = _default_clip_index(clip_index, num_objects, frames.shape[0], frames.device)
        wanted = torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)
        wanted[clip_index] = True
        features = self.encode(frames, wanted)
        return self.decode(features, prompt_tokens, clip_index, boxes=boxes, points=points, cond_frame=cond_frame)

    def encode(self, frames: torch.Tensor, wanted: torch.Tensor | None = None) -> ImageFeatures:
        """SAM2 image features of the frames ``wanted`` (B, T) bool (default: all), once each.

        Args:
            frames: (B, T, 3, H, W) float RGB in [0, 1].
        """
        wanted = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device) if wanted is None else wanted
        rows = torch.full(frames.shape[:2], -1, dtype=torch.long, device=frames.device)
        rows[wanted] = torch.arange(int(wanted.sum()), device=frames.device)
        levels, positions, sizes = self.sam.encode_frames(self.normalise(frames[wanted]))
        return ImageFeatures(levels=levels, positions=positions, sizes=sizes, rows=rows, images=frames)

    def decode(
        self,
        features: ImageFeatures,
        prompt_tokens: torch.Tensor | None,
        clip_index: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        cond_frame: int | torch.Tensor | None = None,
        frame_ids: torch.Tensor | None = None,
        re_anchor: ReAnchor | None = None,
        groups: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Segment N prompted objects on encoded frames.

        Args:
            features: from :meth:`encode` (or computed on demand); every decoded frame must
                be encoded.
            prompt_tokens: (N, P, C) grounding embeddings in SAM2's prompt space, or None
                for a prompt of boxes/points only.
            clip_index: (N,) long, the clip of each object (default: object n in clip n).
            boxes: optional (N, K, 4) xyxy boxes in pixels of the ``image_size`` frame,
                given to the prompted frame as SAM2 box prompts.
            points: optional ((N, P, 2) xy pixels, (N, P) int labels: 1 positive,
                0 negative), SAM2 point prompts for the prompted frame.
            cond_frame: the prompted frame in ``track`` mode, an int for all objects or
                (N,) long per object, as a position in ``frame_ids`` (default:
                ``self.cond_frame``).
            frame_ids: (N, W) long, the clip frames to decode per object, in order
                (default: every frame of the clip).
            re_anchor: ``track`` mode only: asked on every tracked frame of each object
                (:data:`ReAnchor`); a box it returns prompts the object again there (with
                its token), as a correction in SAM2's video predictor: the frame joins the
                conditioning frames of the object's memory. Objects then track one by one,
                since each has its own prompted frames.
            groups: (N,) long: objects of different groups are never batched together
                (the results of a group do not depend on what else is decoded).
        Returns:
            :class:`DecoderOutput` with (N, W, S, S) mask logits, (N, W) object logits and
            the frames each object was prompted on.
        """
        num_objects = _count_objects(prompt_tokens, boxes, points)
        window = frame_ids.shape[1] if frame_ids is not None else features.num_frames
        masks = [[None] * window for _ in range(num_objects)]
        scores = [[None] * window for _ in range(num_objects)]
        frames = self.decode_frames(features, prompt_tokens, clip_index, boxes, points, cond_frame, frame_ids, re_anchor, groups)
        while True:
            try:
                members, t, mask_logits, object_logits = next(frames)
            except StopIteration as done:
                prompted = done.value
                break
            for n, mask, score in zip(members, mask_logits, object_logits):
                masks[n][t], scores[n][t] = mask, score
        return DecoderOutput(
            mask_logits=torch.stack([torch.stack(row) for row in masks]),
            object_logits=torch.stack([torch.stack(row) for row in scores]),
            prompted_frames=prompted,
        )

    def decode_frames(
        self, features: ImageFeatures, prompt_tokens, clip_index=None, boxes=None, points=None, cond_frame=None, frame_ids=None, re_anchor=None, groups=None
    ) -> Iterator[tuple[list[int], int, torch.Tensor, torch.Tensor]]:
        """:meth:`decode` one frame at a time: yields ``(object indices, frame position,
        (n, S, S) mask logits, (n,) object logits)`` as each frame is decoded, so that a
        long video never holds all its masks, and returns the frames each object was
        prompted on. In ``track`` mode frames come in tracking order (from the prompted
        frame forward, then backward from it), the objects prompted on one frame side by
        side, so that each frame's features are read once for all of them."""
        point_inputs = _point_inputs(boxes, points)
        num_objects = _count_objects(prompt_tokens, boxes, points)
        num_clips, num_frames = features.rows.shape
        clip_index = _default_clip_index(clip_index, num_objects, num_clips, features.rows.device)
        if frame_ids is None:
            frame_ids = torch.arange(num_frames, device=clip_index.device).expand(num_objects, -1)
        rows = features.rows[clip_index[:, None], frame_ids]  # (N, W)
        if bool((rows < 0).any()):
            raise ValueError("decode() was asked for frames that encode() did not compute")
        if self.mode == "per_frame":
            return (yield from self._decode_per_frame(features, rows, prompt_tokens, point_inputs))
        window = rows.shape[1]
        cond = self.cond_frame if cond_frame is None else cond_frame
        cond = torch.as_tensor(cond, device=rows.device).expand(num_objects) % window
        # objects prompted on the same frame of the same window track together (alone when
        # they may be re-anchored: each then has its own conditioning frames)
        batches: dict[tuple, list[int]] = {}
        group_of = groups.tolist() if groups is not None else [0] * num_objects
        for n, key in enumerate(zip(cond.tolist(), map(tuple, frame_ids.tolist()), group_of)):
            batches.setdefault(key + ((n,) if re_anchor is not None else ()), []).append(n)
        passes: dict[tuple, list[list[int]]] = {}  # the batches of one prompted frame and window
        for key, members in batches.items():
            passes.setdefault(key[:2], []).append(members)
        prompted: list[list[int]] = [[] for _ in range(num_objects)]
        for (pass_cond, _), member_lists in passes.items():
            trackers = []
            for members in member_lists:
                anchor = None
                if re_anchor is not None:  # one object: the callback is told which
                    anchor = lambda *seen, n=members[0]: re_anchor(n, *seen)  # noqa: E731
                index = torch.tensor(members, device=rows.device)
                tokens = prompt_tokens[index] if prompt_tokens is not None else None
                inputs = {k: v[index] for k, v in point_inputs.items()} if point_inputs is not None else None
                trackers.append((members, _Tracker(self, features, rows[index], tokens, inputs, pass_cond, anchor)))
            for steps in zip(*(tracker for _, tracker in trackers)):
                for (members, _), (t, masks, scores) in zip(trackers, steps):
                    yield members, t, masks, scores
            for members, tracker in trackers:
                for n in members:
                    prompted[n] = tracker.prompted
        return prompted

    def _prompting(self, tokens: torch.Tensor | None):
        if tokens is None:
            return nullcontext()
        return self.sam.prompt_tokens(tokens, self.prompt_layout, self.multimask)

    def _decode_per_frame(self, features: ImageFeatures, rows, prompt_tokens, point_inputs):
        """Every frame prompted alone (no memory); in chunks of ``features.chunk_frames``
        frames when the features are computed on demand, all at once otherwise."""
        num_objects, num_frames = rows.shape
        chunk = features.chunk_frames or num_frames
        for start in range(0, num_frames, chunk):
            stop = min(start + chunk, num_frames)
            count = stop - start
            tokens = prompt_tokens.repeat_interleave(count, dim=0) if prompt_tokens is not None else None
            inputs = {k: v.repeat_interleave(count, dim=0) for k, v in point_inputs.items()} if point_inputs is not None else None
            feats, positions = features.select(rows[:, start:stop].flatten())
            with self._prompting(tokens):
                out = self.sam.track_step(
                    frame_idx=0,
                    is_init_cond_frame=True,
                    current_vision_feats=feats,
                    current_vision_pos_embeds=positions,
                    feat_sizes=features.sizes,
                    point_inputs=inputs,
                    mask_inputs=None,
                    output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                    num_frames=num_frames,
                    run_mem_encoder=False,
                )
            size = out["pred_masks_high_res"].shape[-2:]
            masks = out["pred_masks_high_res"].view(num_objects, count, *size)
            scores = out["object_score_logits"].view(num_objects, count)
            members = list(range(num_objects))
            for t in range(count):
                yield members, start + t, masks[:, t], scores[:, t]
        return [list(range(num_frames))] * num_objects

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) frames in [0, 1] as SAM2's image encoder reads them."""
        size = (self.image_size, self.image_size)
        if images.shape[-2:] != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (images - self.pixel_mean) / self.pixel_std


class _Tracker:
    """SAM2's tracking step over a window for a batch of objects that share their prompted
    frame, as an iterator of ``(frame, (N, S, S) mask logits, (N,) object logits)``: from
    the prompted frame forward, then backward from it.

    Only the memory SAM2 can still read is kept: the prompted (conditioning) frames, and
    the frames within reach of the frames still to come (``num_maskmem`` frames back at
    the memory stride, ``max_obj_ptrs_in_encoder`` object pointers), without their
    full-size masks, which nothing reads. What is dropped would never be read again, so
    the masks are exactly those of keeping everything, in bounded memory on any length.
    """

    def __init__(self, decoder: SAM2VideoDecoder, features: ImageFeatures, rows, prompt_tokens, point_inputs, cond: int, re_anchor=None):
        self.decoder, self.features, self.rows = decoder, features, rows
        self.prompt_tokens, self.point_inputs, self.cond, self.re_anchor = prompt_tokens, point_inputs, cond, re_anchor
        sam = decoder.sam
        self.reach = max(sam.num_maskmem * max(1, sam.memory_temporal_stride_for_eval), sam.max_obj_ptrs_in_encoder) + 1
        self._prompted = [cond]
        self.output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}

    def __iter__(self):
        num_frames, cond = self.rows.shape[1], self.cond
        prompt_box = self.point_inputs is not None and self.point_inputs["point_labels"][0, -2:].tolist() == [2, 3]
        last_box = self.point_inputs["point_coords"][0, -2:].flatten() if prompt_box else None  # where the object was last seen
        cond_box = last_box
        for t in list(range(cond, num_frames)) + list(range(cond - 1, -1, -1)):
            if t == cond - 1:  # the backward pass starts from the prompted frame again
                last_box = cond_box
            is_cond = t == cond
            out = self._step(t, is_cond, self.prompt_tokens if is_cond else None, self.point_inputs if is_cond else None)
            if self.re_anchor is not None:
                tracked = _mask_box(out["pred_masks_high_res"][0, 0])
                box = None if is_cond else self.re_anchor(t, float(out["object_score_logits"][0, 0]), tracked, last_box)
                if box is not None:  # prompted again here, on top of the memory so far
                    out, is_cond = self._step(t, False, self.prompt_tokens, _point_inputs(box.view(1, 1, 4), None)), True
                    self._prompted.append(t)
                    tracked = _mask_box(out["pred_masks_high_res"][0, 0])
                if tracked is not None and float(out["object_score_logits"][0, 0]) > 0:  # where SAM2 last saw it present
                    last_box = tracked
                cond_box = last_box if t == cond else cond_box
            kept = {key: value for key, value in out.items() if key != "pred_masks_high_res"}
            self.output_dict["cond_frame_outputs" if is_cond else "non_cond_frame_outputs"][t] = kept
            self._forget(t)
            yield t, out["pred_masks_high_res"][:, 0], out["object_score_logits"][:, 0]

    @property
    def prompted(self) -> list[int]:
        """The frames prompted so far: the conditioning frame and any re-anchored on."""
        return sorted(self._prompted)

    def _step(self, t: int, initial: bool, tokens, inputs):
        feats, positions = self.features.select(self.rows[:, t])
        with self.decoder._prompting(tokens):
            return self.decoder.sam.track_step(
                frame_idx=t,
                is_init_cond_frame=initial,
                current_vision_feats=feats,
                current_vision_pos_embeds=positions,
                feat_sizes=self.features.sizes,
                point_inputs=inputs,
                mask_inputs=None,
                output_dict=self.output_dict,
                num_frames=self.rows.shape[1],
                track_in_reverse=t < self.cond,
            )

    def _forget(self, t: int) -> None:
        """Drop the non-conditioning frames no later step reads: forward from the prompted
        frame, step s reads frames s - reach .. s - 1; backward, s + 1 .. s + reach (so the
        first backward steps read the frames just after the prompted one)."""
        memory = self.output_dict["non_cond_frame_outputs"]
        if t >= self.cond:
            stale = [u for u in memory if u < t + 1 - self.reach and u > self.cond - 1 + self.reach]
        else:
            stale = [u for u in memory if u > t - 1 + self.reach]
        for u in stale:
            del memory[u]


def _count_objects(prompt_tokens, boxes, points) -> int:
    if prompt_tokens is not None:
        return prompt_tokens.shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if points is not None:
        return points[1].shape[0]
    raise ValueError("nothing to prompt SAM2 with: give prompt tokens, boxes or points")


def _default_clip_index(clip_index, num_objects: int, num_clips: int, device) -> torch.Tensor:
    if clip_index is not None:
        return clip_index
    if num_objects != num_clips:
        raise ValueError(f"{num_objects} prompts for {num_clips} clips: pass clip_index")
    return torch.arange(num_clips, device=device)


def _mask_box(logits: torch.Tensor) -> torch.Tensor | None:
    """(4,) xyxy pixel box around the positive logits of one (S, S) mask; None if empty."""
    ys, xs = (logits > 0).nonzero(as_tuple=True)
    if not len(xs):
        return None
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def _point_inputs(boxes, points) -> dict[str, torch.Tensor] | None:
    """SAM2's point-prompt dict: clicks first, then each xyxy box as corners labelled 2, 3."""
    coords, labels = [], []
    if points is not None:
        coords.append(points[0].float())
        labels.append(points[1].to(torch.int32))
    if boxes is not None:
        coords.append(boxes.float().reshape(boxes.shape[0], -1, 2))
        corner_labels = torch.tensor([2, 3], dtype=torch.int32, device=boxes.device).repeat(boxes.shape[1])
        labels.append(corner_labels.expand(boxes.shape[0], -1))
    if not coords:
        return None
    return {"point_coords": torch.cat(coords, dim=1), "point_labels": torch.cat(labels, dim=1)}
