"""The host contract: what SPARROW needs from a pixel-grounded video LLM, and nothing more.

A *host* is the video LLM SPARROW plugs into (the embedded ``tiny`` host, VideoGLaMM,
UniPixel, GLUS). It keeps its own vision towers, V→L adapters, prompt template, position
scheme and SAM2 weights; SPARROW wraps it (LoRA, new token rows, adapters) and never edits
it. Hosts need not inherit from anything: :class:`HostAdapter` is a runtime-checkable
protocol.

How the pieces meet, per batch (the README draws the whole picture)::

    request = host.frame_request()                          # which frames, at what size (data side)
    visual = host.encode_video(llm_frames, frame_indices)   # LLM tokens + dense features
    inputs = host.build_inputs(visual, queries, answers, num_tsf_tokens=K)
    output = host.forward(inputs, edits=[EmbedEdit(tsf_id, tsf_values)])
    states = output.grounding_states[b, p + host.grounding_offset]   # p: a [SEG] position
    generation = host.generate(prompt)                      # answers + their grounding states, one prefill

Differences between hosts live behind this contract as data, not branches:

- which hidden state represents a grounding token: ``grounding_offset`` (-1 is the LISA
  convention all three released hosts follow: the position that *predicts* the token) and
  which tensor ``HostOutput.grounding_states`` holds (after the final norm for VideoGLaMM
  and GLUS, before it for UniPixel);
- how the grounding embedding prompts SAM2: ``DecoderSpec.prompt_layout`` and
  ``DecoderSpec.multimask``;
- where visual tokens go and how positions are computed (Qwen2.5-VL's multimodal RoPE):
  entirely the host's business; SPARROW only overwrites embeddings of its own placeholder
  tokens through :class:`EmbedEdit`, so positions never change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "GROUNDING_TOKENS",
    "EmbedEdit",
    "FrameRequest",
    "DenseGeometry",
    "VisualFeatures",
    "HostInputs",
    "HostOutput",
    "Generation",
    "DecoderSpec",
    "HostAdapter",
    "VideoBatch",
    "ImageFeatures",
    "DecoderOutput",
    "Prediction",
]

# Roles SPARROW adds to a host's vocabulary; a host may name them differently
# (UniPixel's seg token is "<|seg|>") through ``HostAdapter.grounding_token_names``.
GROUNDING_TOKENS = {"box": "[BOX]", "seg": "[SEG]", "tsf": "<TSF>"}


@dataclass
class EmbedEdit:
    """Overwrite the input embeddings of every occurrence of one token.

    The k-th occurrence of ``token_id`` in sample b gets ``values[b, k]``. This is how TSF
    features enter the LLM: as the embeddings of ``<TSF>`` placeholders in the prompt, so
    the host's own position scheme is untouched.

    Attributes:
        token_id: the placeholder token.
        values: (B, K, hidden_size) embeddings; every sample must hold exactly K
            occurrences of the token.
    """

    token_id: int
    values: torch.Tensor


@dataclass(frozen=True)
class FrameRequest:
    """Which frames of a clip a host's LLM reads, and at what size.

    The data pipeline reads these frames for the host, apart from the decoder's (a host
    reads its frames from the whole clip, the decoder a training window). Both fields are
    picklable callables (module-level functions or ``functools.partial`` of them), since
    DataLoader workers receive the request, never the host.

    Attributes:
        sample: ``sample(num_frames_in_clip) -> list[int]`` the clip frames, in order. No
            frame repeats unless the clip is shorter than the host asks for.
        size: ``size(height, width) -> (height, width)`` of the frames handed to
            :meth:`HostAdapter.encode_video` (a square for CLIP towers, the aspect-keeping
            Qwen2-VL rule for UniPixel).
        interpolation: how frames are resized to ``size`` (``bilinear`` or ``bicubic``).
    """

    sample: Callable[[int], list[int]]
    size: Callable[[int, int], tuple[int, int]]
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __eq__(self, other) -> bool:
        # partials compare by identity; two requests built alike ask for the same frames
        return isinstance(other, FrameRequest) and _callable_key(self.sample) == _callable_key(other.sample) and (
            _callable_key(self.size) == _callable_key(other.size) and self.interpolation == other.interpolation
        )

    def __hash__(self) -> int:
        return hash((_callable_key(self.sample), _callable_key(self.size), self.interpolation))


def _callable_key(function: Callable) -> tuple:
    if isinstance(function, partial):
        return (function.func, function.args, tuple(sorted(function.keywords.items())))
    return (function,)


@dataclass(frozen=True)
class DenseGeometry:
    """Where a dense feature grid lies in its frame, so that regions can be read from it.

    Attributes:
        grid: (h, w) cells of the map.
        region: (x0, y0, x1, y1), the part of the frame the grid covers, in normalised
            frame coordinates; ``(0, 0, 1, 1)`` when the host resized the whole frame (all
            shipped hosts do: they stretch or resize whole frames, never crop).
    """

    grid: tuple[int, int]
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def to_grid(self, boxes: torch.Tensor) -> torch.Tensor:
        """(..., 4) normalised xyxy boxes -> the same boxes in grid cells (cell i spans
        [i, i + 1)), ready for ``torchvision.ops.roi_align(..., spatial_scale=1, aligned=True)``."""
        x0, y0, x1, y1 = self.region
        height, width = self.grid
        scale = boxes.new_tensor([width / (x1 - x0), height / (y1 - y0)] * 2)
        return (boxes - boxes.new_tensor([x0, y0, x0, y0])) * scale


@dataclass
class VisualFeatures:
    """What a host's vision side makes of a batch of clips.

    Attributes:
        llm_tokens: host-specific container of the visual LLM inputs (already through the
            host's V→L adapter); only the host reads it.
        dense: (B, T', C, h, w) per-frame spatial feature maps, read by TSF region
            encoding.
        dense_frames: (B, T') long, the clip frames ``dense`` covers (indices in the clip,
            as given to :meth:`HostAdapter.encode_video`).
        geometry: how a box in normalised frame coordinates maps onto ``dense``'s grid.
    """

    llm_tokens: Any
    dense: torch.Tensor
    dense_frames: torch.Tensor
    geometry: DenseGeometry | None = None

    def __post_init__(self):
        if self.geometry is None:
            self.geometry = DenseGeometry(grid=tuple(self.dense.shape[-2:]))


@dataclass
class HostInputs:
    """A tokenised batch, ready for :meth:`HostAdapter.forward`.

    Attributes:
        input_ids: (B, L) long; placeholder ids where visual tokens go, if the host uses
            placeholders.
        attention_mask: (B, L) long, 1 for real tokens.
        labels: (B, L) long targets aligned with ``input_ids`` (not shifted), -100 where no
            loss is taken; None at inference.
        visual: the :class:`VisualFeatures` the inputs were built from.
        extras: anything else the host's LLM needs (position ids, grid sizes, ...).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    visual: VisualFeatures
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class HostOutput:
    """Result of one LLM pass, aligned with ``HostInputs.input_ids`` (length L).

    Attributes:
        logits: (B, L, V) next-token logits over the extended vocabulary.
        grounding_states: (B, L, hidden_size) the hidden states the host reads grounding
            tokens from (last layer; before or after the final norm, per host).
    """

    logits: torch.Tensor
    grounding_states: torch.Tensor


@dataclass
class Generation:
    """Result of :meth:`HostAdapter.generate`: the answers and what grounding needs of them,
    from one prefill of the prompt and cached decoding (no second pass over the answer).

    Attributes:
        inputs: prompt plus generated tokens as :class:`HostInputs` (labels None).
        texts: the generated answers, decoded, one per sample.
        num_prompt_tokens: (B,) where each sample's generated part starts in ``inputs``.
        new_ids: (B, N) long generated tokens (padding after a row's end).
        new_mask: (B, N) bool, True for real generated tokens (up to and with the stop token).
        token_states: (B, N, hidden_size) for each generated token, the hidden state that
            represents it as a grounding token (the host's ``grounding_offset`` applied,
            the same tensor kind as ``HostOutput.grounding_states``).
        truncated: (B,) bool, the answer was cut off by ``max_new_tokens`` before its stop
            token (it may be missing grounding tokens the model would have said).
    """

    inputs: HostInputs
    texts: list[str]
    num_prompt_tokens: torch.Tensor
    new_ids: torch.Tensor
    new_mask: torch.Tensor
    token_states: torch.Tensor
    truncated: torch.Tensor


@dataclass(frozen=True)
class DecoderSpec:
    """How a host's SAM2 is built and prompted; the decoder plugin builds it from this.

    Attributes:
        config: a SAM2 config name (``sam2.1_hiera_b+``, ``sam2_hiera_l``, our
            ``sam2.1_hiera_tiny128``) or a YAML path.
        state_dict: SAM2 weights taken from the host's release (keys relative to SAM2),
            or None.
        checkpoint: path of an official SAM2 checkpoint, used when ``state_dict`` is None.
        prompt_layout: ``tokens_only`` (LISA/GLUS training: the sparse prompt is the
            grounding tokens alone) or ``after_padding`` (SAM2's own padding points first,
            then the tokens, as UniPixel and VideoGLaMM's video branch do).
        multimask: whether a token-prompted frame yields SAM2's three masks (best
            predicted IoU kept) rather than one.
        overrides: Hydra-style overrides applied to the config (``++model.key=value``).
        gate_masks_in_training: whether the host trained with SAM2's rule that a mask
            scored "absent" becomes a constant (no gradient). None of the released hosts
            does: VideoGLaMM and GLUS call the mask decoder directly, UniPixel gates at
            inference only.
        presence_weight: the weight the host gave SAM2's object-presence loss next to a
            mask BCE and DICE of weight 1 (UniPixel supervises it; VideoGLaMM and GLUS
            do not). Gated training with weight 0 is refused: those samples would train
            on a constant.
    """

    config: str
    state_dict: Mapping[str, torch.Tensor] | None = None
    checkpoint: str | None = None
    prompt_layout: Literal["tokens_only", "after_padding"] = "tokens_only"
    multimask: bool = False
    overrides: tuple[str, ...] = ()
    gate_masks_in_training: bool = False
    presence_weight: float = 0.0


@runtime_checkable
class HostAdapter(Protocol):
    """A pixel-grounded video LLM as SPARROW sees it. Hosts are ``nn.Module`` s."""

    hidden_size: int
    """Width of the LLM's hidden states."""

    tokenizer: Any
    """A transformers tokenizer; grounding tokens are added to it by :meth:`add_tokens`."""

    grounding_offset: int
    """Position of a grounding token's hidden state relative to the token: 0 = the token
    itself, -1 = the position that predicts it (LISA, VideoGLaMM, UniPixel, GLUS)."""

    grounding_token_names: Mapping[str, str]
    """Token string per role (``box``, ``seg``, ``tsf``); defaults are GROUNDING_TOKENS."""

    default_lora_targets: Sequence[str]
    """Module-name suffixes in :attr:`language_model` that LoRA wraps by default."""

    answer_template: str
    """Training answer with ``{grounding}`` where the grounding tokens go, e.g.
    ``"Sure, {grounding}."``."""

    no_target_answer: str
    """Training answer when nothing in the video matches the query (no grounding token)."""

    context_length: int | None
    """Optional: the tokens the LLM's positions reach, prompt and answer together; the model
    refuses a prompt that with ``max_new_tokens`` would run past it (None or absent: no check)."""

    @property
    def language_model(self) -> nn.Module:
        """The LLM (the module LoRA is injected into)."""
        ...

    def adapter_modules(self) -> list[nn.Module]:
        """The host's V→L adapters (projectors), which SPARROW's stage 1 trains."""
        ...

    def decoder_spec(self) -> DecoderSpec:
        """The host's SAM2: config, weights and prompting convention."""
        ...

    def seg_projection(self) -> nn.Module | None:
        """The host's own L→V projection of a [SEG] hidden state to SAM2 prompt tokens.

        Maps (N, hidden_size) to (N, P, prompt_dim), with the weights of the host's
        release (VideoGLaMM's and GLUS' ``text_hidden_fcs``: P = 1, UniPixel's
        ``seg_head``: P = 2). SPARROW trains it as its L→V [SEG] adapter. None when the
        host has none (the tiny host); SPARROW then builds a fresh one.
        """
        ...

    def add_tokens(self, tokens: Sequence[str]) -> dict[str, int]:
        """Add tokens (or find them if the vocabulary has them) and return their ids.

        New rows of the input embedding and output head start at the mean of the existing
        rows, are the only rows that train, and leave the host's original state-dict keys
        loadable.
        """
        ...

    def new_token_parameters(self) -> list[nn.Parameter]:
        """The trainable rows created by :meth:`add_tokens`."""
        ...

    def frame_request(self) -> FrameRequest:
        """Which frames of a clip the LLM reads, and at what size."""
        ...

    def encode_video(self, frames: torch.Tensor, frame_indices: torch.Tensor | None = None) -> VisualFeatures:
        """Encode clips.

        Args:
            frames: (B, T, 3, H, W) float RGB in [0, 1], the frames of :meth:`frame_request`
                at its size (hosts resize and normalise further for their own towers).
            frame_indices: (B, T) long, their indices in the clip (default: 0..T-1); they
                become ``VisualFeatures.dense_frames``.
        """
        ...

    def encode_regions(self, images: torch.Tensor) -> torch.Tensor:
        """One feature per image region, for TSF's ``crop`` encoding: (N, 3, h, w) crops
        of the host's frames, stretched to its frame size, through its own image tower and
        V→L projector, mean-pooled over the tokens: (N, hidden_size). The projector's
        gradients flow (it trains in stage 1); the tower's need not."""
        ...

    def build_inputs(
        self,
        visual: VisualFeatures,
        queries: Sequence[str],
        answers: Sequence[str] | None = None,
        num_tsf_tokens: int = 0,
    ) -> HostInputs:
        """Tokenise prompts in the host's template.

        Args:
            visual: from :meth:`encode_video`.
            queries: one referring expression per sample.
            answers: training answers (with grounding tokens), or None for a generation
                prompt.
            num_tsf_tokens: how many ``<TSF>`` placeholders to put after the video.
        """
        ...

    def forward(self, inputs: HostInputs, edits: Sequence[EmbedEdit] = ()) -> HostOutput:
        """Run the LLM with ``edits`` applied to the input embeddings."""
        ...

    def generate(self, inputs: HostInputs, edits: Sequence[EmbedEdit] = (), max_new_tokens: int = 32) -> Generation:
        """Greedy generation from a prompt built with ``answers=None``: one prefill, then
        cached decoding; returns the grounding states of the generated tokens too."""
        ...

    # Optional, not part of the protocol check: ``released_plugins() -> {plugin name: state
    # dict}``, SPARROW plugin weights a release holds besides the host's own (the authors'
    # sparrow-finetune holds the filtration head: ``{"filtration": ...}``).


# ----------------------------------------------------------------------------- decoder side


@dataclass
class VideoBatch:
    """A collated batch of referring-video samples (see ``data.collate``).

    The decoder's frames and the host's LLM frames are sampled apart: the decoder reads a
    training window (or every frame at evaluation), the host the frames its
    :class:`FrameRequest` asks for, from the whole clip.

    Attributes:
        frames: (B, T, 3, S, S) float in [0, 1], the decoder's frames.
        masks: (B, T, S, S) bool ground truth at the decoder size (the union of the
            referred objects), or None (no labels).
        object_masks: per sample (K, T, S, S) bool, one per referred object, or None.
        full_masks: per sample (T, H, W) bool at the original size, or None.
        queries: referring expressions.
        kinds: expression kind per sample (``all`` when the dataset has none).
        keys: (video, expression id) per sample.
        obj_ids: per sample, the referred objects' ids in the video.
        frame_names: per sample, the names of the decoder's frames (for writing predictions).
        original_sizes: per sample, (H, W).
        indices: (B,) long, each sample's index in its dataset (evaluation counts every
            index once, whatever the number of devices).
        frame_indices: (B, T) long, the decoder's frames in the clip.
        has_target: (B,) bool, the annotation refers to an object visible somewhere in the
            whole video (not only in the sampled frames), or None without labels.
        cond_frames: (B,) long, per sample the position in ``frames`` where SAM2 is prompted
            in training: drawn at random among the frames showing the target (among all
            frames when it shows nowhere); 0 at evaluation, where the model decides.
        object_boxes: per sample (K, T, 4) float normalised xyxy boxes of the referred
            objects in the decoder's frames (zeros where not visible), or None.
        object_visible: per sample (K, T) bool, or None.
        llm_frames: (B, T_h, 3, h, w) the host's frames, or None when the data pipeline was
            not told the host's :class:`FrameRequest` (the model then samples them from
            ``frames``).
        llm_frame_indices: (B, T_h) long, their indices in the clip, or None.
        tsf: per sample, the target's :class:`~sparrow_plugin.tsf.tracks.Track` on the
            host's frames (``llm_frames``), which TSF encodes, or None.
    """

    frames: torch.Tensor
    masks: torch.Tensor | None
    object_masks: list[torch.Tensor] | None
    full_masks: list[torch.Tensor] | None
    queries: list[str]
    kinds: list[str]
    keys: list[tuple[str, str]]
    obj_ids: list[list[int]]
    frame_names: list[list[str]]
    original_sizes: list[tuple[int, int]]
    indices: torch.Tensor | None = None
    frame_indices: torch.Tensor | None = None
    has_target: torch.Tensor | None = None
    cond_frames: torch.Tensor | None = None
    object_boxes: list[torch.Tensor] | None = None
    object_visible: list[torch.Tensor] | None = None
    llm_frames: torch.Tensor | None = None
    llm_frame_indices: torch.Tensor | None = None
    tsf: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def has_targets(self) -> bool:
        return self.masks is not None


@dataclass
class ImageFeatures:
    """SAM2 image features (Hiera trunk + FPN) of the encoded frames of a batch, computed
    once per frame and read by mask decoding (and, with stage 2, the proposer and the
    filtration head's RoI features).

    Attributes:
        levels: per FPN level, (h*w, R, C) features of the R encoded frames, flattened
            the way SAM2's ``track_step`` reads them (high resolution first).
        positions: per level, the positional encodings, same shapes.
        sizes: per level, (h, w).
        rows: (B, T) long, the row of (clip, frame) in ``levels``; -1 where the frame
            was not encoded (a clip without grounding tokens, a frame outside the window).
        images: the encoded (B, T, 3, S, S) frames, in [0, 1] (the proposer's own image
            encoder reads them, with ``box.features: separate``), or None.

    Readers go through :meth:`select`, :meth:`frame_maps` and :meth:`frames`, so that
    features computed on demand (``decoder.streaming.StreamedImageFeatures``, for long
    videos) serve every reader alike.
    """

    levels: list[torch.Tensor]
    positions: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    rows: torch.Tensor
    images: torch.Tensor | None = None

    # (frames decoded at once in ``per_frame`` mode; None: all of them, as held in memory)
    chunk_frames = None

    @property
    def num_frames(self) -> int:
        return self.rows.shape[1]

    def select(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level, the (h*w, N, C) features and positional encodings of N rows."""
        return [f[:, rows] for f in self.levels], [p[:, rows] for p in self.positions]

    def maps(self, level: int = -1) -> torch.Tensor:
        """(R, C, h, w) feature maps of one level (the last is the lowest resolution)."""
        height, width = self.sizes[level]
        return self.levels[level].permute(1, 2, 0).reshape(-1, self.levels[level].shape[-1], height, width)

    def frame_maps(self, level: int, rows: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) feature maps of one level of N rows (a view's rows, as ``maps``
        lays them out: the convolutions reading them see the same memory layout)."""
        return self.maps(level)[rows]

    def frames(self, clips: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) the encoded images of (clips[n], frame_ids[n])."""
        if self.images is None:
            raise ValueError("these features were computed without keeping their images")
        return self.images[clips, frame_ids]


@dataclass
class DecoderOutput:
    """Masks the decoder predicts for N prompted objects.

    Attributes:
        mask_logits: (N, T, S, S) logits at the decoder's input size.
        object_logits: (N, T) SAM2's object-presence logits (> 0: the object is visible).
        prompted_frames: per object, the frames (positions among the decoded ones) where
            it was prompted: the conditioning frame, and any it was re-anchored on.
    """

    mask_logits: torch.Tensor
    object_logits: torch.Tensor
    prompted_frames: list[list[int]] | None = None


@dataclass
class Prediction:
    """What the model answers for one (video, expression).

    Attributes:
        answer: the generated text.
        truncated: the answer was cut off by ``max_new_tokens``.
        grounding_tokens: the roles of the grounding tokens it holds, in order
            (``["seg"]``, ``["box", "seg"]``, ``["seg", "seg"]``, ...).
        masks: (T, H, W) bool at the original size, the union of the segmented objects,
            or None when the answer holds no [SEG].
        object_masks: (K, T, H, W) bool, one per [SEG], or None.
        object_scores: (K, T) SAM2's object-presence logits, or None.
        cond_frame: the frame SAM2 was prompted on.
        boxes: (K, 4) normalised xyxy, the kept box each object was prompted with on
            ``cond_frame`` (NaN for an object prompted without one), or None without boxes.
        box_scores: (K,) the filtration head's probability of each kept box, or None.
        prompted_frames: per object, the frames it was prompted on: ``cond_frame``, and
            those ``decoder.re_anchor`` prompted it on again (every frame in ``per_frame``
            mode); None without objects.
    """

    answer: str
    truncated: bool
    grounding_tokens: list[str]
    masks: torch.Tensor | None
    object_masks: torch.Tensor | None = None
    object_scores: torch.Tensor | None = None
    cond_frame: int = 0
    boxes: torch.Tensor | None = None
    box_scores: torch.Tensor | None = None
    prompted_frames: list[list[int]] | None = None
