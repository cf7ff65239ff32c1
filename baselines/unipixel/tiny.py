"""A tiny UniPixel release: the same architecture at toy sizes, in the release's layout.

Like UniPixel-3B: tied input and output embeddings (so no ``lm_head.weight``), a padded
vocabulary whose spare rows hold the added tokens, the flat config.json and legacy key
names (``visual.*``, ``model.*``) that transformers 4.5x wrote, SAM2 under ``sam2.*`` with
its layer scale saved as ``.weight``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from baselines.unipixel.config import UniPixelConfig
from baselines.unipixel.model import AFTER_VIDEO, SYSTEM, UniPixel
from sparrow_plugin.decoder import build_sam2
from sparrow_plugin.hosts.word_tokenizer import build_word_tokenizer

__all__ = ["write_tiny_release"]

_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>")
_ADDED = ("<|ref|>", "<|seg|>", "<|mem|>")


def write_tiny_release(folder: str | Path, vocabulary: Iterable[str], seed: int = 0, sam2_config: str = "sam2.1_hiera_tiny128") -> Path:
    """Write a random tiny UniPixel release to ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    texts = list(vocabulary) + [SYSTEM, AFTER_VIDEO, UniPixel.question_template, UniPixel.answer_template, UniPixel.no_target_answer]
    tokenizer = build_word_tokenizer(texts, _SPECIAL, pad_token="<|endoftext|>", unk_token="<|endoftext|>", eos_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(_SPECIAL[1:]) + list(_ADDED)})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL + _ADDED}
    sam2 = build_sam2(sam2_config)
    qwen = {
        "vocab_size": len(tokenizer) + 8,  # Qwen pads its vocabulary; the spare rows are never read
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {
            "depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "out_hidden_size": 64, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1], "tokens_per_second": 2,
        },
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }
    config = UniPixelConfig(
        qwen=qwen, sam2_config=f"configs/{sam2_config}", sam2_image_size=sam2.image_size, sam2_prompt_dim=sam2.hidden_dim,
        ref_token_id=ids["<|ref|>"], seg_token_id=ids["<|seg|>"], mem_token_id=ids["<|mem|>"],
        num_frames=4, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28,
    )
    host = UniPixel(config, tokenizer)
    tokenizer.save_pretrained(folder)
    raw = {**qwen, **{k: v for k, v in vars(config).items() if k != "qwen"}, "model_type": "pixel_qwen2_5_vl",
           "architectures": ["PixelQwen2_5_VLForConditionalGeneration"], "model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"}
    (folder / "config.json").write_text(json.dumps(raw, indent=1))
    save_file(release_state_dict(host, sam2.state_dict()), folder / "model.safetensors")
    return folder


def release_state_dict(host: UniPixel, sam2_state: dict) -> dict:
    """The host's weights under the legacy release names (the inverse of RELEASE_KEYS)."""
    state = {}
    for key, value in host.state_dict().items():
        if key == "qwen.lm_head.weight":
            continue  # tied to the embeddings: not saved
        if key.startswith("qwen.model.visual."):
            key = "visual." + key[len("qwen.model.visual.") :]
        elif key.startswith("qwen.model.language_model."):
            key = "model." + key[len("qwen.model.language_model.") :]
        state[key] = value
    for key, value in sam2_state.items():
        state["sam2." + (key[: -len("gamma")] + "weight" if key.endswith(".gamma") else key)] = value
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
