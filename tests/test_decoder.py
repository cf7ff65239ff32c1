"""SAM2 built from configs: strict loading, prompt layouts, tracking and per-frame modes."""

import pytest
import torch

from sparrow_plugin.decoder import SAM2_CONFIGS, SAM2VideoDecoder, build_sam2, resolve_sam2_config
from sparrow_plugin.errors import CheckpointError, ConfigError
from sparrow_plugin.interfaces import DecoderSpec


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return build_sam2("sam2.1_hiera_tiny128").state_dict()


def test_config_names_resolve():
    for name in ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l", "sam2_hiera_l", "sam2.1_hiera_tiny128"):
        assert name in SAM2_CONFIGS and resolve_sam2_config(name).is_file()
    assert resolve_sam2_config("configs/sam2.1/sam2.1_hiera_b+.yaml") == SAM2_CONFIGS["sam2.1_hiera_b+"]
    with pytest.raises(ConfigError, match="unknown SAM2 config 'sam3'"):
        resolve_sam2_config("sam3")


def test_strict_load_round_trip(tiny_state, tmp_path):
    model = build_sam2("sam2.1_hiera_tiny128", state_dict=tiny_state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_state[key])
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_state}, path)  # the official checkpoint layout
    from_file = build_sam2("sam2.1_hiera_tiny128", checkpoint=path)
    assert torch.equal(from_file.no_mem_embed, tiny_state["no_mem_embed"])


def test_missing_key_is_named(tiny_state):
    broken = dict(tiny_state)
    del broken["sam_mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): sam_mask_decoder.iou_token.weight"):
        build_sam2("sam2.1_hiera_tiny128", state_dict=broken)


def test_unexpected_key_is_named(tiny_state):
    broken = {**tiny_state, "sam_mask_decoder.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected keys.*sam_mask_decoder.extra.weight"):
        build_sam2("sam2.1_hiera_tiny128", state_dict=broken)


def test_layer_scale_saved_as_weight_loads_once(tiny_state):
    # transformers' save/load renames CXBlock.gamma to .weight; the loader maps it back
    renamed = {
        (k[: -len("gamma")] + "weight" if k.endswith(".gamma") else k): v for k, v in tiny_state.items()
    }
    assert any(k.endswith("fuser.layers.0.weight") for k in renamed)
    model = build_sam2("sam2.1_hiera_tiny128", state_dict=renamed)
    assert torch.equal(model.memory_encoder.fuser.layers[0].gamma, tiny_state["memory_encoder.fuser.layers.0.gamma"])


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="SAM2 checkpoint not found"):
        build_sam2("sam2.1_hiera_tiny128", checkpoint=tmp_path / "absent.pt")


def _sparse_lengths(decoder, tokens, **prompts):
    lengths = []
    handle = decoder.sam.sam_mask_decoder.register_forward_hook(
        lambda module, args, kwargs, out: lengths.append(kwargs["sparse_prompt_embeddings"].shape[1]), with_kwargs=True
    )
    try:
        decoder(torch.rand(2, 2, 3, 128, 128), tokens, **prompts)
    finally:
        handle.remove()
    return lengths


def test_prompt_layouts(tiny_state):
    decoder = SAM2VideoDecoder.from_spec(DecoderSpec("sam2.1_hiera_tiny128", state_dict=tiny_state), mode="per_frame").eval()
    tokens = torch.randn(2, 2, decoder.prompt_dim)
    with torch.no_grad():
        assert _sparse_lengths(decoder, tokens) == [2]  # the tokens alone (LISA, GLUS)
        decoder.prompt_layout = "after_padding"
        assert _sparse_lengths(decoder, tokens) == [4]  # two "not a point" entries, then the tokens (UniPixel)
        decoder.prompt_layout = "tokens_only"
        boxes = torch.tensor([[[10.0, 10, 40, 40]], [[50, 50, 90, 80]]])
        assert _sparse_lengths(decoder, tokens, boxes=boxes) == [4]  # two box corners, then the tokens


def test_modes_and_gradients(tiny_state):
    decoder = SAM2VideoDecoder.from_spec(DecoderSpec("sam2.1_hiera_tiny128", state_dict=tiny_state))
    decoder.requires_grad_(False)
    frames = torch.rand(2, 4, 3, 128, 128)
    for mode, cond in (("track", 0), ("track", 2), ("per_frame", 0)):
        decoder.mode = mode
        tokens = torch.randn(3, 1, decoder.prompt_dim, requires_grad=True)
        out = decoder(frames, tokens, clip_index=torch.tensor([0, 1, 1]), cond_frame=cond)
        assert out.mask_logits.shape == (3, 4, 128, 128) and out.object_logits.shape == (3, 4)
        out.mask_logits.sigmoid().mean().backward()
        assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_track_mode_uses_memory(tiny_state):
    """Frames after the prompted one depend on the prompt only through SAM2's memory."""
    decoder = SAM2VideoDecoder.from_spec(DecoderSpec("sam2.1_hiera_tiny128", state_dict=tiny_state)).eval()
    frames = torch.rand(1, 3, 3, 128, 128)
    with torch.no_grad():
        a = decoder(frames, torch.randn(1, 1, decoder.prompt_dim)).mask_logits
        b = decoder(frames, torch.randn(1, 1, decoder.prompt_dim)).mask_logits
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_nothing_to_prompt_with():
    decoder = SAM2VideoDecoder.from_spec(DecoderSpec("sam2.1_hiera_tiny128"))
    with pytest.raises(ValueError, match="nothing to prompt"):
        decoder(torch.rand(1, 2, 3, 128, 128), None)


def test_official_config_builds_with_token_prompts(tmp_path):
    """sam2.1 Hiera-T from the package's own config, with an official-layout checkpoint."""
    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_t")
    assert model.image_size == 1024 and model.hidden_dim == 256
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    spec = DecoderSpec("sam2.1_hiera_t", checkpoint=str(path), prompt_layout="after_padding", multimask=True)
    decoder = SAM2VideoDecoder.from_spec(spec).eval()
    assert torch.equal(decoder.sam.no_mem_embed, model.no_mem_embed)
    with torch.no_grad():
        out = decoder(torch.rand(1, 2, 3, 256, 256), torch.randn(1, 2, 256))  # frames resized to 1024
    assert out.mask_logits.shape == (1, 2, 1024, 1024)


def test_ungated_training_lifts_the_gate_on_the_masks_only(tiny_state):
    """SAM2 scoring the object absent everywhere: the masks keep their gradient, while the
    memory encodes the gated ("absent") mask and the real score comes back, as at inference."""
    decoder = SAM2VideoDecoder.from_spec(DecoderSpec("sam2.1_hiera_tiny128", state_dict=tiny_state)).train()
    decoder.sam.gate_masks_in_training = False
    head = [m for m in decoder.sam.sam_mask_decoder.pred_obj_score_head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
    encoded = []
    decoder.sam.memory_encoder.register_forward_hook(lambda module, args, out: encoded.append(args[1].detach()))
    tokens = torch.randn(1, 1, decoder.prompt_dim, requires_grad=True)
    out = decoder(torch.rand(1, 3, 3, 128, 128), tokens)
    assert bool((out.object_logits == -5.0).all())  # the real score, not the "present" given to the gate
    assert out.mask_logits.std() > 0  # not SAM2's constant
    out.mask_logits.sigmoid().mean().backward()
    assert tokens.grad.abs().sum() > 0
    assert encoded and all(float(mask.std()) == 0.0 for mask in encoded)  # the memory saw "absent"
    decoder.sam.gate_masks_in_training = True
    assert float(decoder(torch.rand(1, 3, 3, 128, 128), tokens).mask_logits.std()) == 0.0  # what the gate does
