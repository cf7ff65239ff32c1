"""Greedy decoding from input embeddings, for hosts whose LLM is a transformers causal LM.

Hosts splice visual features and SPARROW's edits into the input embeddings, so decoding
starts from embeddings rather than ids; positions are passed explicitly so that
left-padded prompts in a batch decode exactly like unpadded ones.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["greedy_generate"]


@torch.no_grad()
def greedy_generate(
    llm: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of left-padded prompts.

    Args:
        llm: a causal LM accepting ``inputs_embeds``, ``position_ids`` and a KV cache.
        inputs_embeds: (B, L, D) prompt embeddings; attention_mask: (B, L).
        position_ids: (B, L), or (3, B, L) multimodal RoPE positions (Qwen2.5-VL); a new
            text token takes the last position plus one in every row.
    Returns:
        (B, N) long new tokens, N <= max_new_tokens, each row ending at its first EOS
        (kept) and padded with ``pad_token_id`` after it; and their (B, N) attention mask
        (1 up to the EOS). The mask cannot be read off the ids: hosts whose pad token is
        a real token (LISA pads with ``<unk>``) may generate it.
    """
    out = llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    batch = inputs_embeds.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=inputs_embeds.device)
    next_position = position_ids[..., -1:] + 1
    generated, real = [], []
    for _ in range(max_new_tokens):
        token = out.logits[:, -1].argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        generated.append(token)
        real.append(~finished)
        finished |= token == eos_token_id
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, (~finished).long()[:, None] | 1], dim=1)
        out = llm(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
        next_position = next_position + 1
    return torch.stack(generated, dim=1), torch.stack(real, dim=1).long()
