"""SparrowWrapper around the tiny host: parity, what trains, checkpoints, no-[SEG] answers."""

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from sparrow_plugin import SparrowWrapper, list_hosts, register_host
from sparrow_plugin.config import DecoderSettings, LoraSettings, SparrowConfig
from sparrow_plugin.data import ReferringVideoDataModule
from sparrow_plugin.errors import CheckpointError, ConfigError
from sparrow_plugin.hosts.tiny import TinyHostConfig, TinyVideoLLM

WORDS = ["the red circle moving left", "the two blue squares", "the green star above the yellow triangle"]
SMALL_HOST = TinyHostConfig(vision_depth=1, num_layers=2, hidden_size=64, intermediate_size=128, llm_frames=2)


def _host():
    return TinyVideoLLM.create(WORDS, SMALL_HOST)


def _inputs(host, queries=("the red circle", "the two blue squares")):
    frames = torch.rand(len(queries), 2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    visual = host.encode_video(frames)
    return host.build_inputs(visual, list(queries), ["no target ."] * len(queries))


def test_wrapper_with_zero_initialised_plugins_keeps_host_logits():
    host = _host().eval()
    with torch.no_grad():
        before = host(_inputs(host)).logits
    wrapper = SparrowWrapper(base=host).eval()  # LoRA B = 0; new rows only on new ids
    with torch.no_grad():
        after = wrapper.host(_inputs(wrapper.host)).logits
    assert after.shape[-1] == before.shape[-1] + 3  # [BOX], [SEG], <TSF>
    torch.testing.assert_close(after[..., : before.shape[-1]], before)


def test_what_trains_is_decided_by_structure():
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(decoder=DecoderSettings(train_mask_decoder=True)))
    trainable = {id(p) for p in wrapper.parameters() if p.requires_grad}
    grouped = {id(p) for params in wrapper.trainable_groups.values() for p in params}
    assert trainable == grouped
    lora = [m for m in wrapper.host.language_model.modules() if isinstance(m, LoraLayer)]
    assert len(lora) == 2 * 4  # 2 layers x q, k, v, o
    assert all(p.requires_grad for m in lora for p in m.lora_A.parameters())
    assert not any(p.requires_grad for m in lora for p in m.base_layer.parameters())
    assert not any(p.requires_grad for p in wrapper.host.spatial_encoder.parameters())
    assert all(p.requires_grad for p in wrapper.host.spatial_projector.parameters())
    assert not any(p.requires_grad for p in wrapper.decoder.sam.image_encoder.parameters())
    assert all(p.requires_grad for p in wrapper.decoder.sam.sam_mask_decoder.parameters())


def test_lora_targets_that_match_nothing():
    with pytest.raises(ConfigError, match=r"match no module.*linear layers"):
        SparrowWrapper(base=_host(), config=SparrowConfig(lora=LoraSettings(targets=["nonexistent_proj"])))


def test_checkpoint_holds_only_what_trains_and_loads_back():
    wrapper = SparrowWrapper(base=_host())
    with torch.no_grad():
        for params in wrapper.trainable_groups.values():
            for p in params:
                p.add_(0.01)
    checkpoint = {"state_dict": wrapper.state_dict()}
    wrapper.on_save_checkpoint(checkpoint)
    keys = set(checkpoint["state_dict"])
    assert keys and all(k in wrapper.state_dict() for k in keys)
    assert not any("spatial_encoder" in k or "image_encoder" in k for k in keys)
    assert sum(1 for k in keys if "lora_B" in k) == 8
    fresh = SparrowWrapper(base=_host())
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(fresh.state_dict()[key], value), key
    broken = {**checkpoint, "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if "lora_B" not in k}}
    with pytest.raises(CheckpointError, match="missing keys.*lora_B"):
        fresh.on_load_checkpoint(broken)


def test_model_without_seg_predicts_empty_masks_and_counts_them(synthetic_root):
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(max_new_tokens=3)).eval()
    dm = ReferringVideoDataModule(synthetic_root, image_size=128, eval_batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    bias = wrapper.host.llm.get_output_embeddings()
    with torch.no_grad():  # make [SEG] impossible: the untrained model then never emits it
        bias.added_rows.fill_(-1e4)
        wrapper.validation_step(batch, 0)
    results = wrapper.metrics["val"].compute()
    assert results["no_seg"] == len(batch) and results["missing"] == 0 and results["expressions"] == len(batch)
    no_target = [k for k in batch.kinds if k == "no_target"]
    if no_target:
        assert results["no_target/J&F"] == 1.0  # empty prediction of an empty target


def test_registry_and_contract_checks():
    assert "tiny" in list_hosts()
    with pytest.raises(ConfigError, match="already registered"):
        register_host("tiny", lambda **kw: None)
    with pytest.raises(ConfigError, match="must match"):
        register_host("Bad Name", lambda: None)
    with pytest.raises(ConfigError, match="is not a host.*missing"):
        SparrowWrapper(base=nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="unknown host 'nope'"):
        SparrowWrapper(base="nope")


def test_wrapper_accepts_name_class_and_instance(tmp_path):
    host = _host()
    host.save_pretrained(tmp_path)
    for base, args in (("tiny", {"path": tmp_path}), (TinyVideoLLM, {"path": tmp_path}), (TinyVideoLLM.from_pretrained(tmp_path), None)):
        wrapper = SparrowWrapper(base=base, host_args=args)
        assert isinstance(wrapper.host, TinyVideoLLM)
