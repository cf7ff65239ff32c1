"""Word-level tokenizers built with the `tokenizers` library, for tiny hosts and tests.

Real hosts ship their own tokenizers; tiny configurations of their architectures need one
that knows the synthetic benchmark's words and the host's special tokens, saved and loaded
with ``save_pretrained`` / ``from_pretrained`` like any transformers tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["build_word_tokenizer"]


def build_word_tokenizer(
    vocabulary: Iterable[str],
    special_tokens: Sequence[str] = ("<pad>", "<unk>", "</s>"),
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
    eos_token: str = "</s>",
    bos_token: str | None = None,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of ``vocabulary`` (lower-cased, split on white
    space and punctuation); ``special_tokens`` come first and are never split."""
    pre_tokenizer = pre_tokenizers.Whitespace()
    words = set()
    for text in vocabulary:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text.lower()))
    ordered = list(dict.fromkeys(special_tokens)) + sorted(words - set(special_tokens))
    backend = Tokenizer(models.WordLevel(vocab={token: i for i, token in enumerate(ordered)}, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizer
    named = {pad_token, unk_token, eos_token, bos_token}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad_token,
        unk_token=unk_token,
        eos_token=eos_token,
        bos_token=bos_token,
        additional_special_tokens=[t for t in special_tokens if t not in named],
    )
