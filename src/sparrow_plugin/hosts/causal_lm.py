"""What hosts built on a transformers causal LM share: splicing, forward, generation, tokens.

LLaVA-style hosts (VideoGLaMM, GLUS, the tiny host) tokenise their prompt with a
placeholder where the video goes, and replace the placeholders' embeddings with the
visual tokens before the LLM runs; positions stay the plain 1-D ones. Subclasses provide
the towers (``encode_video``), the prompt template (``build_inputs``) and the release
loading; this class implements the rest of :class:`~sparrow_plugin.interfaces.HostAdapter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparrow_plugin.hosts.added_tokens import add_tokens_to_llm, added_token_parameters
from sparrow_plugin.hosts.generation import GreedyResult, greedy_generate
from sparrow_plugin.interfaces import GROUNDING_TOKENS, EmbedEdit, FrameRequest, Generation, HostInputs, HostOutput, VisualFeatures

__all__ = [
    "CausalLMHost",
    "assemble_inputs",
    "finish_generation",
    "pad_rows",
    "splice",
    "positions_from_mask",
    "tsf_placeholders",
    "clip_frame_indices",
    "requested_frames",
]


class CausalLMHost(nn.Module):
    """Base of hosts whose LLM (``self.llm``) is a transformers causal LM.

    Subclasses set ``self.llm``, ``self.tokenizer`` and ``visual_placeholder_id`` (the id
    whose positions receive the visual tokens; may be negative, as LLaVA's -200), and
    implement ``encode_video``, ``build_inputs``, ``adapter_modules``, ``decoder_spec`` and
    ``seg_projection``.
    """

    grounding_offset = -1  # LISA convention: the position that predicts [SEG]
    visual_placeholder_id: int
    stop_token_id: int | None = None  # where generation stops; None: the tokenizer's EOS

    def __init__(self):
        super().__init__()
        self.grounding_token_names = dict(GROUNDING_TOKENS)

    @property
    def language_model(self) -> nn.Module:
        return self.llm

    @property
    def hidden_size(self) -> int:
        return self.llm.config.hidden_size

    def add_tokens(self, tokens: Sequence[str]) -> dict[str, int]:
        ids, _ = add_tokens_to_llm(self.llm, self.tokenizer, tokens)
        return ids

    def new_token_parameters(self) -> list[nn.Parameter]:
        return added_token_parameters(self.llm)

    @property
    def context_length(self) -> int | None:
        """Tokens the LLM's positions reach (prompt and answer together)."""
        return getattr(self.llm.config, "max_position_embeddings", None)

    def forward(self, inputs: HostInputs, edits: Sequence[EmbedEdit] = ()) -> HostOutput:
        out = self.llm(
            inputs_embeds=self.embed(inputs.input_ids, inputs.visual, edits),
            attention_mask=inputs.attention_mask,
            position_ids=positions_from_mask(inputs.attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        return HostOutput(logits=out.logits, grounding_states=out.hidden_states[-1])

    def generate(self, inputs: HostInputs, edits: Sequence[EmbedEdit] = (), max_new_tokens: int = 32) -> Generation:
        result = greedy_generate(
            self._lm_step,
            inputs_embeds=self.embed(inputs.input_ids, inputs.visual, edits),
            attention_mask=inputs.attention_mask,
            position_ids=positions_from_mask(inputs.attention_mask),
            eos_token_id=self.tokenizer.eos_token_id if self.stop_token_id is None else self.stop_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens,
        )
        return finish_generation(inputs, result, self.grounding_offset, self.tokenizer)

    def _lm_step(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, past_key_values=None):
        """One cached LLM call: the head runs on the last position only (a prefill needs no
        logits for the whole prompt); the grounding states are the last layer's, after
        the final norm, as ``forward`` returns them."""
        out = self.llm.get_decoder()(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=True,
        )
        states = out.last_hidden_state
        return self.llm.get_output_embeddings()(states[:, -1]), states, out.past_key_values

    def embed(self, input_ids: torch.Tensor, visual: VisualFeatures, edits: Sequence[EmbedEdit] = ()) -> torch.Tensor:
        """Token embeddings with the visual tokens and the edits spliced in."""
        is_visual = input_ids == self.visual_placeholder_id
        table_ids = torch.where(is_visual, torch.zeros_like(input_ids), input_ids)  # placeholders may be negative
        embeds = self.llm.get_input_embeddings()(table_ids)
        embeds = splice(embeds, is_visual, visual.llm_tokens, "visual tokens")
        for edit in edits:
            embeds = splice(embeds, input_ids == edit.token_id, edit.values, f"edit of token {edit.token_id}")
        return embeds


def clip_frame_indices(frames: torch.Tensor, frame_indices: torch.Tensor | None) -> torch.Tensor:
    """(B, T) clip indices of the frames a host encodes (default: 0..T-1)."""
    if frame_indices is not None:
        return frame_indices.to(frames.device)
    return torch.arange(frames.shape[1], device=frames.device).expand(frames.shape[0], -1)


def requested_frames(
    request: FrameRequest, frames: torch.Tensor, frame_indices: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` frames a host reads, with their clip indices: ``frames`` as given when
    they are that many (the data pipeline sampled them with the host's request), else
    the request's rule applied to them (a caller that passed a whole clip)."""
    indices = clip_frame_indices(frames, frame_indices)
    if frames.shape[1] != count:
        picked = torch.tensor(request.sample(frames.shape[1]), device=frames.device)
        frames, indices = frames[:, picked], indices[:, picked]
    return frames, indices


def tsf_placeholders(host, count: int) -> list[int]:
    """Ids of ``count`` ``<TSF>`` placeholders in a host's prompt (TSF features replace their embeddings)."""
    return [host.tokenizer.convert_tokens_to_ids(host.grounding_token_names["tsf"])] * count if count else []


def splice(embeds: torch.Tensor, where: torch.Tensor, values: torch.Tensor, what: str) -> torch.Tensor:
    """Write values[b, k] at the k-th True of where[b]; every row must have K of them."""
    counts = where.sum(dim=1)
    if values.shape[0] != embeds.shape[0] or bool((counts != values.shape[1]).any()):
        raise ValueError(f"{what}: {tuple(values.shape[:2])} embeddings for placeholders per row {counts.tolist()}")
    return embeds.masked_scatter(where.unsqueeze(-1), values.to(embeds.dtype))


def finish_generation(
    inputs: HostInputs, result: GreedyResult, grounding_offset: int, tokenizer, extras: dict | None = None
) -> Generation:
    """Prompt plus generated tokens as a :class:`Generation` (``extras``: the full
    sequence's, when the host keeps per-token data there, as Qwen's positions)."""
    full = HostInputs(
        input_ids=torch.cat([inputs.input_ids, result.new_ids], dim=1),
        attention_mask=torch.cat([inputs.attention_mask, result.new_mask.long()], dim=1),
        labels=None,
        visual=inputs.visual,
        extras=inputs.extras if extras is None else extras,
    )
    texts = tokenizer.batch_decode(result.new_ids, skip_special_tokens=True)
    start = torch.full((len(texts),), inputs.input_ids.shape[1], dtype=torch.long)
    return Generation(
        inputs=full,
        texts=texts,
        num_prompt_tokens=start,
        new_ids=result.new_ids,
        new_mask=result.new_mask,
        token_states=result.token_states(grounding_offset),
        truncated=result.truncated,
    )


def assemble_inputs(
    prompts: list[list[int]], targets: list[list[int]] | None, pad_token_id: int, visual: VisualFeatures
) -> HostInputs:
    """Token rows -> HostInputs: right-padded with labels on the targets for training,
    left-padded without labels for generation (``targets`` None)."""
    device = visual.llm_tokens.device
    if targets is None:
        ids, mask = pad_rows(prompts, pad_token_id, left=True)
        return HostInputs(input_ids=ids.to(device), attention_mask=mask.to(device), labels=None, visual=visual)
    ids, mask = pad_rows([p + t for p, t in zip(prompts, targets)], pad_token_id, left=False)
    labels, _ = pad_rows([[-100] * len(p) + t for p, t in zip(prompts, targets)], -100, left=False)
    return HostInputs(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device), visual=visual)


def pad_rows(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token rows to one length; returns (ids, attention mask)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding, so left- and right-padded rows agree."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)
