"""A tiny VideoGLaMM release: the same architecture at toy sizes, in the release's layout.

Used by the tests and by ``make train BASE=videoglamm TINY=1``: the folder has what a real
release has (config.json, tokenizer, ``pytorch_model.bin`` with the release's key names,
SAM2 under ``model.visual_model.`` with its layer scale saved as ``.weight`` the way
transformers saves it, a stray tower copy the reference ignores) plus the two towers'
own checkpoints the config points to.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config

from baselines.common import to_release_names
from baselines.videoglamm.config import PHI3_FIELDS, VideoGLaMMConfig
from baselines.videoglamm.model import QUESTION, SYSTEM, VideoGLaMM
from baselines.videoglamm.towers import FrameViTTower
from sparrow_plugin.decoder import build_sam2
from sparrow_plugin.grounding.filtration import FiltrationHead
from sparrow_plugin.hosts.word_tokenizer import build_word_tokenizer

__all__ = ["write_tiny_release"]

_SPECIAL = ("<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|end|>", "<|user|>", "<|assistant|>")


def write_tiny_release(
    folder: str | Path, vocabulary: Iterable[str], seed: int = 0, sam2_config: str = "sam2.1_hiera_tiny128", sparrow: FiltrationHead | None = None
) -> Path:
    """Write a random tiny VideoGLaMM release to ``folder`` and return it.

    With ``sparrow`` (a filtration head), the release is a tiny ``sparrow-finetune`` instead:
    [BOX] in the tokenizer and the head under the authors' names (``model.proposal_selector``,
    ``model.roi_helper``, ``model.roi_fusion_gamma``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    texts = list(vocabulary) + [SYSTEM, QUESTION, VideoGLaMM.question_template, VideoGLaMM.answer_template, VideoGLaMM.no_target_answer]
    tokenizer = build_word_tokenizer(texts, _SPECIAL, pad_token="<unk>", unk_token="<unk>", eos_token="<|endoftext|>", bos_token="<s>")
    tokenizer.add_tokens(["[SEG]", "[BOX]"] if sparrow is not None else ["[SEG]"])  # trained with them, as normal tokens
    sam2 = build_sam2(sam2_config)
    llm = Phi3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, sliding_window=2047, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ).to_dict()
    config = VideoGLaMMConfig(
        llm={k: llm[k] for k in PHI3_FIELDS if k in llm},
        mm_hidden_size=48, image_mm_hidden_size=32, image_mm_vision_tower="clip", mm_vision_tower="temporal_tower.safetensors",
        num_frames=4, context_pool=4, video_pool=4, out_dim=sam2.hidden_dim, sam2_config=sam2_config,
        temporal_tower_class="baselines.videoglamm.towers.FrameViTTower",
    )
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14))
    tower = FrameViTTower(config.mm_hidden_size)
    host = VideoGLaMM(config, tokenizer, clip, tower)

    clip.save_pretrained(folder / "clip")
    tower.save(folder / "temporal_tower.safetensors")
    tokenizer.save_pretrained(folder)
    extras = {k: v for k, v in vars(config).items() if k != "llm"}
    raw = {**config.llm, **extras, "model_type": "VideoGPT+", "architectures": ["VideoGLaMMForCausalLM"], "seg_token_idx": tokenizer.convert_tokens_to_ids("[SEG]")}
    (folder / "config.json").write_text(json.dumps(raw, indent=1))
    state = release_state_dict(host, sam2.state_dict())
    if sparrow is not None:
        state.update({f"model.{key}": value.detach().clone().contiguous() for key, value in sparrow.state_dict().items()})
        raw["box_token_idx"] = tokenizer.convert_tokens_to_ids("[BOX]")
        (folder / "config.json").write_text(json.dumps(raw, indent=1))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def release_state_dict(host: VideoGLaMM, sam2_state: dict) -> dict:
    """The host's weights under the release's key names (the inverse of RELEASE_KEYS)."""
    state = to_release_names(host.state_dict(), skip=("spatial_tower.", "temporal_tower."))  # towers: own files
    for key, value in sam2_state.items():
        saved = key[: -len("gamma")] + "weight" if key.endswith(".gamma") else key  # as transformers saves it
        state["model.visual_model." + saved] = value
    state["model.vision_tower.vision_encoder.patch_embed.proj.weight"] = torch.zeros(1)  # a copy the reference ignores
    return {k: v.contiguous() for k, v in state.items()}
