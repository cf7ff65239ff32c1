"""New vocabulary rows on a frozen host: the only embedding rows that train.

SPARROW adds ``[BOX]``, ``[SEG]`` and ``<TSF>`` to a host whose embedding table and LM head
stay frozen. Following torchtune, the original table keeps its parameter (and state-dict
key, ``...embed_tokens.weight``) and a small trainable table holds the added rows:

- :class:`AddedTokenEmbedding` looks ids up in the host table, except the added ids,
  which read ``added_rows``;
- :class:`AddedTokenHead` computes the host's logits and writes the added ids' logits
  from ``added_rows`` (its own, or the embedding's when the host ties them).

Added ids may lie past the host table (a tokenizer at full size) or inside it (Qwen's
padded vocabulary, whose spare rows were never trained); both are handled. New rows start
at the mean of the host's rows. A state dict without the added rows (the host's own
checkpoint) still loads strictly: the rows keep their current values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AddedTokenEmbedding", "AddedTokenHead", "add_tokens_to_llm", "added_token_parameters"]


class _AddedRows:
    """What both layers share: their own rows (new ids -> rows at the mean of ``weight``),
    growing them, and loading a state dict that does not have them (the host's own)."""

    _optional_keys = ("added_rows", "added_ids")

    def _init_added_rows(self, added_ids: Sequence[int]) -> None:
        ids = torch.as_tensor(list(added_ids), dtype=torch.long, device=self.weight.device)
        self.register_buffer("added_ids", ids)
        self.added_rows = nn.Parameter(_mean_rows(self.weight, len(ids)))
        self._register_load_state_dict_pre_hook(self._fill_missing_added_rows)

    def _append_rows(self, new_ids: Sequence[int]) -> None:
        new_ids = [i for i in new_ids if i not in set(self.added_ids.tolist())]
        if not new_ids:
            return
        rows = _mean_rows(self.weight, len(new_ids)).to(self.added_rows.device, self.added_rows.dtype)
        self.added_ids = torch.cat([self.added_ids, torch.as_tensor(new_ids, device=self.added_ids.device)])
        self.added_rows = nn.Parameter(torch.cat([self.added_rows.data, rows]))

    def _fill_missing_added_rows(self, state_dict, prefix, *args):
        for name in self._optional_keys:
            tensor = getattr(self, name, None)
            if isinstance(tensor, torch.Tensor) and prefix + name not in state_dict:
                state_dict[prefix + name] = tensor.detach().clone()


class AddedTokenEmbedding(nn.Embedding, _AddedRows):
    """A frozen embedding table plus trainable rows for added token ids.

    Attributes:
        weight: the host's table (num_embeddings, dim); frozen.
        added_rows: (num_added, dim) trainable rows.
        added_ids: (num_added,) long, the ids those rows belong to.
    """

    def __init__(self, base: nn.Embedding, added_ids: Sequence[int]):
        # built on the meta device: the host's table is reused, not copied
        super().__init__(base.num_embeddings, base.embedding_dim, padding_idx=base.padding_idx, device="meta")
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self._init_added_rows(added_ids)

    @property
    def total_vocab(self) -> int:
        return max(self.num_embeddings, int(self.added_ids.max()) + 1 if self.added_ids.numel() else 0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hits = input_ids.unsqueeze(-1) == self.added_ids  # (..., num_added)
        host_ids = input_ids.clamp(max=self.num_embeddings - 1)
        embedded = F.embedding(host_ids, self.weight, self.padding_idx)
        if not self.added_ids.numel():
            return embedded
        added = hits.to(self.added_rows.dtype) @ self.added_rows  # exactly one row or zero
        return torch.where(hits.any(-1, keepdim=True), added.to(embedded.dtype), embedded)

    def extend(self, new_ids: Sequence[int]) -> None:
        """Add more rows (a second ``add_tokens`` call)."""
        self._append_rows(new_ids)


class AddedTokenHead(nn.Linear, _AddedRows):
    """A frozen LM head whose added ids' logits come from trainable rows.

    With ``tied_to`` (hosts that tie input and output embeddings) the rows are the
    embedding's own ``added_rows``, so they stay tied.
    """

    def __init__(self, base: nn.Linear, added_ids: Sequence[int], tied_to: AddedTokenEmbedding | None = None):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self._tied_to = [tied_to] if tied_to is not None else []  # a list keeps it out of the module tree
        if tied_to is None:
            self._init_added_rows(added_ids)

    def _rows_and_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        source = self._tied_to[0] if self._tied_to else self
        return source.added_rows, source.added_ids

    @property
    def total_vocab(self) -> int:
        _, ids = self._rows_and_ids()
        return max(self.out_features, int(ids.max()) + 1 if ids.numel() else 0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight, self.bias)
        rows, ids = self._rows_and_ids()
        if not ids.numel():
            return logits
        if self.total_vocab > self.out_features:
            logits = F.pad(logits, (0, self.total_vocab - self.out_features), value=torch.finfo(logits.dtype).min)
        added = hidden @ rows.to(hidden.dtype).T  # (..., num_added)
        return logits.index_copy(-1, ids, added.to(logits.dtype))

    def extend(self, new_ids: Sequence[int]) -> None:
        """Add more rows (a tied head reads the embedding's, which grows by itself)."""
        if not self._tied_to:
            self._append_rows(new_ids)


def add_tokens_to_llm(llm: nn.Module, tokenizer, tokens: Sequence[str]) -> tuple[dict[str, int], list[int]]:
    """Add ``tokens`` to a transformers LLM and its tokenizer; return (ids, new ids).

    Tokens the tokenizer already knows (e.g. the ``[SEG]`` of a released VideoGLaMM) keep
    their trained rows and do not train; unknown tokens get new rows that do.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    known = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    missing = [t for t, i in known.items() if i is None or (unk is not None and i == unk and t != tokenizer.unk_token)]
    if missing:
        tokenizer.add_tokens(missing)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    new_ids = [ids[t] for t in missing]

    embedding = llm.get_input_embeddings()
    if isinstance(embedding, AddedTokenEmbedding):
        embedding.extend(new_ids)
    elif new_ids:
        embedding = AddedTokenEmbedding(embedding, new_ids)
        llm.set_input_embeddings(embedding)
    head = llm.get_output_embeddings()
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    if isinstance(head, AddedTokenHead):
        head.extend(new_ids)
    elif new_ids and head is not None:
        head = AddedTokenHead(head, new_ids, tied_to=embedding if tied else None)
        llm.set_output_embeddings(head)
    if isinstance(head, AddedTokenHead):
        llm.config.vocab_size = head.total_vocab
    return ids, new_ids


def added_token_parameters(llm: nn.Module) -> list[nn.Parameter]:
    """The trainable rows :func:`add_tokens_to_llm` created in ``llm`` (a tied head has none of its own)."""
    layers = (m for m in llm.modules() if isinstance(m, (AddedTokenEmbedding, AddedTokenHead)))
    return [m.added_rows for m in layers if "added_rows" in m._parameters]


def _mean_rows(table: torch.Tensor, count: int) -> torch.Tensor:
    return table.detach().float().mean(dim=0, keepdim=True).repeat(count, 1).to(table.dtype)
