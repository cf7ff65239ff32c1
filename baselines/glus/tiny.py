"""A tiny GLUS release: the same architecture at toy sizes, in the release's layout.

Like GLUS-S/-A: two ``pytorch_model-0000x-of-00002.bin`` shards with their index, the
LISA tokenizer's added tokens (``<im_patch>``, ``<im_start>``, ``<im_end>``, ``[SEG]``),
SAM2 under ``model.visual_model.`` with its layer scale saved as ``gamma``, the rotary
``inv_freq`` buffers transformers 4.31 saved, and CLIP in its own folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig

from baselines.common import to_release_names
from baselines.glus.config import LLAMA_FIELDS, GLUSConfig
from baselines.glus.model import CONTEXT_NOTE, QUESTION, SYSTEM, GLUS
from sparrow_plugin.decoder import build_sam2
from sparrow_plugin.hosts.word_tokenizer import build_word_tokenizer

__all__ = ["write_tiny_release"]

_SPECIAL = ("<unk>", "<s>", "</s>")


def write_tiny_release(folder: str | Path, vocabulary: Iterable[str], seed: int = 0, sam2_config: str = "sam2.1_hiera_tiny128") -> Path:
    """Write a random tiny GLUS release to ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    texts = list(vocabulary) + [SYSTEM, CONTEXT_NOTE, QUESTION, GLUS.answer_template, GLUS.no_target_answer]
    tokenizer = build_word_tokenizer(texts, _SPECIAL, pad_token="<unk>", unk_token="<unk>", eos_token="</s>", bos_token="<s>")
    tokenizer.add_tokens(["<im_patch>", "<im_start>", "<im_end>"], special_tokens=True)
    tokenizer.add_tokens(["[SEG]"])
    sam2 = build_sam2(sam2_config)
    llm = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ).to_dict()
    config = GLUSConfig(
        llm={k: llm[k] for k in LLAMA_FIELDS if k in llm}, mm_hidden_size=32, vision_tower="clip", out_dim=sam2.hidden_dim, sam2_config=sam2_config
    )
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14))
    host = GLUS(config, tokenizer, clip)
    clip.save_pretrained(folder / "clip")
    tokenizer.save_pretrained(folder)
    raw = {**config.llm, **{k: v for k, v in vars(config).items() if k != "llm"}, "model_type": "llava",
           "architectures": ["GLUSForCausalLM"], "mm_use_im_start_end": True, "train_mask_decoder": True}
    (folder / "config.json").write_text(json.dumps(raw, indent=1))
    state = to_release_names(host.state_dict(), skip=("vision_tower.",))
    state.update({"model.visual_model." + k: v for k, v in sam2.state_dict().items()})  # gamma kept: GLUS saves it so
    for layer in range(config.llm["num_hidden_layers"]):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    state = {k: v.contiguous() for k, v in state.items()}
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    for name, shard_keys in shards.items():
        torch.save({k: state[k] for k in shard_keys}, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, shard_keys in shards.items() for k in shard_keys}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=1))
    return folder
