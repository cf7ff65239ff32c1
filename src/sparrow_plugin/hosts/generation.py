"""Greedy decoding from input embeddings with a KV cache, keeping the grounding states.

Hosts splice visual features and SPARROW's edits into the input embeddings, so decoding
starts from embeddings rather than ids; positions are passed explicitly so that
left-padded prompts in a batch decode exactly like unpadded ones. The prompt is run once
(one prefill); every later step feeds one token. The hidden state each step computes is
kept, so the grounding tokens' states need no second pass over prompt plus answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LMStep", "GreedyResult", "greedy_generate"]

LMStep = Callable[..., tuple[torch.Tensor, torch.Tensor, object]]
"""``step(input_ids=None, inputs_embeds=None, attention_mask, position_ids, past_key_values)``
-> (next-token logits (B, V) of the last position, grounding states (B, L, D) of the fed
positions, the updated cache)."""


@dataclass
class GreedyResult:
    """Attributes:
    new_ids: (B, N) long, each row ending at its first stop token (kept), then ``pad``.
    new_mask: (B, N) bool, True up to and with the stop token. It cannot be read off the
        ids: hosts whose pad token is a real token (LISA pads with ``<unk>``) may generate it.
    states: (B, N + 1, D) grounding states of the positions L - 1 ... L + N - 1 (the
        prompt's last position, then each generated token's own). The last one is zeros
        when every row stopped (its token is a stop or padding, never a grounding token).
    truncated: (B,) bool, rows still unfinished after ``max_new_tokens``.
    """

    new_ids: torch.Tensor
    new_mask: torch.Tensor
    states: torch.Tensor
    truncated: torch.Tensor

    def token_states(self, grounding_offset: int) -> torch.Tensor:
        """(B, N, D): for each generated token, the state at ``position + grounding_offset``
        (-1: the position that predicted it; 0: the token itself)."""
        if grounding_offset not in (-1, 0):
            raise ValueError(f"grounding_offset must be -1 or 0, got {grounding_offset}")
        start = 1 + grounding_offset
        return self.states[:, start : start + self.new_ids.shape[1]]


@torch.no_grad()
def greedy_generate(
    step: LMStep,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
) -> GreedyResult:
    """Greedy continuation of left-padded prompts.

    Args:
        step: the host's LM step (see :data:`LMStep`).
        inputs_embeds: (B, L, D) prompt embeddings; attention_mask: (B, L).
        position_ids: (B, L), or (3, B, L) multimodal RoPE positions (Qwen2.5-VL); a new
            text token takes the last position plus one in every row.
    """
    logits, states, cache = step(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
    kept = [states[:, -1]]
    batch = inputs_embeds.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=inputs_embeds.device)
    next_position = position_ids[..., -1:] + 1
    generated, real = [], []
    for _ in range(max_new_tokens):
        token = logits.argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        generated.append(token)
        real.append(~finished)
        finished |= token == eos_token_id
        if bool(finished.all()):
            kept.append(torch.zeros_like(kept[0]))
            break
        # the last token is fed too when rows are cut off: its own state may be a grounding state
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        logits, states, cache = step(
            input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position, past_key_values=cache
        )
        kept.append(states[:, -1])
        next_position = next_position + 1
    return GreedyResult(
        new_ids=torch.stack(generated, dim=1),
        new_mask=torch.stack(real, dim=1),
        states=torch.stack(kept, dim=1),
        truncated=~finished,
    )
