"""The host contract: what SPARROW needs from a pixel-grounded video LLM, and nothing more.

A *host* is the video LLM SPARROW plugs into (the embedded ``tiny`` host, VideoGLaMM,
UniPixel, GLUS). It keeps its own vision towers, V→L adapters, prompt template, position
scheme and SAM2 weights; SPARROW wraps it (LoRA, new token rows, adapters) and never edits
it. Hosts need not inherit from anything: :class:`HostAdapter` is a runtime-checkable
protocol.

How the pieces meet, per batch (see DESIGN.md for the picture)::

    visual = host.encode_video(frames)                      # LLM tokens + dense features
    inputs = host.build_inputs(visual, queries, answers, num_tsf_tokens=K)
    output = host.forward(inputs, edits=[EmbedEdit(tsf_id, tsf_values)])
    states = output.grounding_states[b, p + host.grounding_offset]   # p: a [SEG] position

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "GROUNDING_TOKENS",
    "EmbedEdit",
    "VisualFeatures",
    "HostInputs",
    "HostOutput",
    "Generation",
    "DecoderSpec",
    "HostAdapter",
    "VideoBatch",
    "DecoderOutput",
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


@dataclass
class VisualFeatures:
    """What a host's vision side makes of a batch of clips.

    Attributes:
        llm_tokens: host-specific container of the visual LLM inputs (already through the
            host's V→L adapter); only the host reads it.
        dense: (B, T', C, h, w) per-frame spatial feature maps, read by TSF region
            encoding.
        dense_frames: (B, T') which frames of the clip ``dense`` covers.
    """

    llm_tokens: Any
    dense: torch.Tensor
    dense_frames: torch.Tensor


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
    """Result of :meth:`HostAdapter.generate`.

    Attributes:
        inputs: prompt plus generated tokens as :class:`HostInputs` (labels None), ready
            for a :meth:`HostAdapter.forward` that yields the grounding states.
        texts: the generated answers, decoded, one per sample.
        num_prompt_tokens: (B,) where each sample's generated part starts.
    """

    inputs: HostInputs
    texts: list[str]
    num_prompt_tokens: torch.Tensor


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
    """

    config: str
    state_dict: Mapping[str, torch.Tensor] | None = None
    checkpoint: str | None = None
    prompt_layout: Literal["tokens_only", "after_padding"] = "tokens_only"
    multimask: bool = False
    overrides: tuple[str, ...] = ()


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

    def encode_video(self, frames: torch.Tensor) -> VisualFeatures:
        """Encode clips.

        Args:
            frames: (B, T, 3, S, S) float RGB in [0, 1] (the decoder's square input size;
                hosts resize and normalise for their own towers).
        """
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
        """Greedy generation from a prompt built with ``answers=None``."""
        ...


# ----------------------------------------------------------------------------- decoder side


@dataclass
class VideoBatch:
    """A collated batch of referring-video samples (see ``data.collate``).

    Attributes:
        frames: (B, T, 3, S, S) float in [0, 1].
        masks: (B, T, S, S) bool ground truth at the decoder size (the union of the
            referred objects), or None (no labels).
        object_masks: per sample (K, T, S, S) bool, one per referred object, or None.
        full_masks: per sample (T, H, W) bool at the original size, or None.
        queries: referring expressions.
        kinds: expression kind per sample (``all`` when the dataset has none).
        keys: (video, expression id) per sample.
        obj_ids: per sample, the referred objects' ids in the video.
        frame_names: per sample, the frame names (for writing predictions).
        original_sizes: per sample, (H, W).
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

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def has_targets(self) -> bool:
        return self.masks is not None


@dataclass
class DecoderOutput:
    """Masks the decoder predicts for N prompted objects.

    Attributes:
        mask_logits: (N, T, S, S) logits at the decoder's input size.
        object_logits: (N, T) SAM2's object-presence logits (> 0: the object is visible).
    """

    mask_logits: torch.Tensor
    object_logits: torch.Tensor
