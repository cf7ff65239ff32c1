"""Building blocks shared by hosts and plugins (no contract, no dependency on either)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PromptProjection"]


class PromptProjection(nn.Module):
    """L→V projection: Linear-ReLU-Linear from the LLM width to ``num_tokens`` prompt tokens.

    The shape of LISA/VideoGLaMM/GLUS' ``text_hidden_fcs`` (for one token): SPARROW's fresh
    [SEG] adapter, and the tiny host's own grounding head.

    Args:
        hidden_size: LLM width.
        prompt_dim: SAM2's prompt width.
        num_tokens: prompt tokens per grounding token.
        zero_init: start the output layer at zero (the adapter then emits zero prompts).
    """

    def __init__(self, hidden_size: int, prompt_dim: int, num_tokens: int = 1, zero_init: bool = False):
        super().__init__()
        self.num_tokens, self.prompt_dim = num_tokens, prompt_dim
        self.layers = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, prompt_dim * num_tokens)
        )
        if zero_init:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(N, hidden_size) -> (N, num_tokens, prompt_dim)."""
        return self.layers(states).view(states.shape[0], self.num_tokens, self.prompt_dim)
