"""SparrowWrapper and SparrowModel around the tiny host: parity, what trains, checkpoints,
grounding tokens (offsets, several per answer, cut-off answers), frames, one prefill."""

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from sparrow_plugin import SparrowWrapper, list_hosts, register_host
from sparrow_plugin.config import DecoderSettings, LoraSettings, LossWeights, SparrowConfig
from sparrow_plugin.data import ReferringVideoDataModule
from sparrow_plugin.data.collate import collate_referring
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


def _batch(synthetic_root, kinds=None, size=4):
    """A validation batch; with ``kinds``, one sample of each kind, in that order."""
    dataset = ReferringVideoDataModule(synthetic_root, image_size=128).dataset("valid_u", "eval")
    if kinds is None:
        return collate_referring([dataset[i] for i in range(size)])
    first = {}
    for index, expression in enumerate(dataset.expressions):
        first.setdefault(expression.kind, index)
    return collate_referring([dataset[first[kind]] for kind in kinds])


class ForcedAnswer:
    """Makes the LM head emit ``tokens`` in order at each decoding step (then keeps the
    last one), or never emit ``banned``: deterministic, whatever the hidden states are."""

    def __init__(self, head: nn.Module, tokens=(), banned=()):
        self.tokens, self.banned, self.step = list(tokens), list(banned), 0
        self.handle = head.register_forward_hook(self)

    def __call__(self, module, args, logits):
        logits = logits.clone()
        if self.banned:
            logits[..., self.banned] = float("-inf")
        if self.tokens and logits.dim() == 2:  # generation runs the head on the last position only
            forced = self.tokens[min(self.step, len(self.tokens) - 1)]
            logits[..., forced] = logits.max() + 100
            self.step += 1
        return logits


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
    sam = wrapper.model.decoder.sam
    assert not any(p.requires_grad for p in sam.image_encoder.parameters())
    assert all(p.requires_grad for p in sam.sam_mask_decoder.transformer.parameters())
    assert not any(p.requires_grad for p in sam.sam_mask_decoder.iou_prediction_head.parameters())  # no loss reaches it
    assert all(p.requires_grad for p in sam.sam_mask_decoder.pred_obj_score_head.parameters())  # the tiny host's presence weight is 1
    no_presence = SparrowWrapper(base=_host(), config=SparrowConfig(loss=LossWeights(presence=0.0), decoder=DecoderSettings(train_mask_decoder=True)))
    assert not any(p.requires_grad for p in no_presence.model.decoder.sam.sam_mask_decoder.pred_obj_score_head.parameters())


def test_gated_training_without_presence_loss_is_refused():
    with pytest.raises(ConfigError, match="gate_masks_in_training.*presence 0"):
        SparrowConfig(loss=LossWeights(presence=0.0), decoder=DecoderSettings(gate_masks_in_training=True))
    # the host's presence weight (1 for the tiny host) makes the gate acceptable ...
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(decoder=DecoderSettings(gate_masks_in_training=True)))
    assert wrapper.model.gate_masks_in_training and wrapper.model.presence_weight == 1.0
    # ... and the host's defaults are taken when the recipe says nothing
    default = SparrowWrapper(base=_host())
    assert not default.model.gate_masks_in_training and not default.model.decoder.sam.gate_masks_in_training


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
    batch = _batch(synthetic_root, kinds=["appearance", "no_target", "multi"])
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), banned=[wrapper.model.role_ids["seg"]])
    wrapper.validation_step(batch, 0)
    results = wrapper.metrics["val"].compute()
    assert results["no_seg"] == len(batch) and results["missing"] == 0 and results["expressions"] == len(batch)
    assert results["no_target/J&F"] == 1.0  # empty prediction of an empty target
    assert results["appearance/J&F"] == 0.0  # empty prediction of a visible target


def test_two_seg_tokens_segment_two_objects_and_the_mask_is_their_union(synthetic_root):
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(max_new_tokens=4, decoder=DecoderSettings(mode="per_frame"))).eval()
    seg, box, eos = wrapper.model.role_ids["seg"], wrapper.model.role_ids["box"], wrapper.host.tokenizer.eos_token_id
    batch = _batch(synthetic_root, size=2)
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, seg, eos])
    first, second = wrapper.model.predict(batch)
    for prediction, height_width in zip((first, second), batch.original_sizes):
        assert prediction.grounding_tokens == ["seg", "seg"] and not prediction.truncated
        assert prediction.object_masks.shape == (2, batch.frames.shape[1], *height_width)
        assert torch.equal(prediction.masks, prediction.object_masks.any(dim=0))
        assert prediction.object_scores.shape == (2, batch.frames.shape[1])

    box_then_seg = SparrowWrapper(base=_host(), config=SparrowConfig(max_new_tokens=4)).eval()
    ForcedAnswer(box_then_seg.host.llm.get_output_embeddings(), tokens=[box, seg, eos])
    prediction = box_then_seg.model.predict(batch)[0]
    assert prediction.grounding_tokens == ["box", "seg"] and prediction.object_masks.shape[0] == 1


def test_a_cut_off_answer_is_reported_apart_from_no_target(synthetic_root):
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(max_new_tokens=2)).eval()
    batch = _batch(synthetic_root, kinds=["appearance", "no_target"])
    tokenizer = wrapper.host.tokenizer
    target_word = tokenizer.convert_tokens_to_ids("target")
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[target_word, target_word])  # never stops
    predictions = wrapper.model.predict(batch)
    assert all(p.truncated and p.masks is None for p in predictions)
    wrapper._update_metric("test", batch, predictions)
    results = wrapper.metrics["test"].compute()
    assert results["truncated"] == 2 and results["no_seg"] == 2


def test_generation_runs_one_prefill_and_its_states_are_a_forward_pass(synthetic_root):
    """One LLM call over the prompt per batch of clips (then one token per call), and the
    states it keeps are those a full pass over prompt plus answer computes."""
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(max_new_tokens=5)).double().eval()
    host, model = wrapper.host, wrapper.model
    batch = _batch(synthetic_root, size=3)
    batch.frames = batch.frames.double()
    lengths = []
    host.llm.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((kwargs.get("inputs_embeds") if kwargs.get("input_ids") is None else kwargs["input_ids"]).shape[1]),
        with_kwargs=True,
    )
    with torch.no_grad():
        prompt = host.build_inputs(model.encode(batch), batch.queries, None)
        generation = host.generate(prompt, max_new_tokens=5)
    assert sum(length > 1 for length in lengths) == 1 and lengths[0] == prompt.input_ids.shape[1]
    with torch.no_grad():
        full = host(generation.inputs).grounding_states
    start = prompt.input_ids.shape[1]
    real = generation.new_mask
    for offset in (-1, 0):
        host.grounding_offset = offset
        states = host.generate(prompt, max_new_tokens=5).token_states
        columns = torch.arange(generation.new_ids.shape[1]) + start + offset
        expected = full[:, columns]
        usable = real.clone()
        if offset == 0:  # a stopped row's own last state is never a grounding state (it is the stop token)
            usable &= ~((columns == full.shape[1] - 1)[None] & ~generation.truncated[:, None])
        torch.testing.assert_close(states[usable], expected[usable])
    host.grounding_offset = -1


def test_grounding_offset_picks_the_predicting_position_or_the_token(synthetic_root):
    """Training reads the [SEG] state at the token (offset 0) or at the position that
    predicts it (-1); the two differ."""
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(decoder=DecoderSettings(mode="per_frame"))).train()
    model = wrapper.model
    batch = _batch(synthetic_root, kinds=["appearance"])
    seen = []
    model.seg_adapter.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    answer = model._answer(True)
    inputs = model.host.build_inputs(model.encode(batch), batch.queries, [answer])
    with torch.no_grad():
        states = model.host(inputs).grounding_states
    position = int((inputs.input_ids[0] == model.role_ids["seg"]).nonzero())
    for offset in (-1, 0):
        model.host.grounding_offset = offset
        with torch.no_grad():
            model.training_losses(batch)
        torch.testing.assert_close(seen[-1][0], states[0, position + offset])
    assert not torch.allclose(seen[-2], seen[-1])
    model.host.grounding_offset = -1


@pytest.mark.parametrize("count", [1, 3, 8])
def test_training_window_always_holds_the_prompted_frame(synthetic_root, count):
    wrapper = SparrowWrapper(base=_host(), config=SparrowConfig(decoder=DecoderSettings(mode="track", train_frames=count)))
    batch = _batch(synthetic_root, size=4)
    num_frames = batch.frames.shape[1]
    for cond in range(num_frames):
        batch.cond_frames = torch.full((len(batch),), cond)
        frames, position = wrapper.model.training_frames(batch, torch.arange(len(batch)))
        assert frames.shape == (len(batch), min(count, num_frames))
        assert bool((frames.gather(1, position[:, None]).squeeze(1) == cond).all())
        assert bool((frames.diff(dim=1) == 1).all())  # consecutive, for SAM2's memory


def test_a_batch_without_seg_still_reaches_every_trained_parameter(synthetic_root):
    """DDP's reducer expects a gradient for every trained parameter at every step."""
    config = SparrowConfig(no_target="answer", decoder=DecoderSettings(mode="per_frame", train_mask_decoder=True))
    wrapper = SparrowWrapper(base=_host(), config=config).train()
    batch = _batch(synthetic_root, kinds=["no_target"])
    losses = wrapper.model.training_losses(batch)
    assert "bce" not in losses  # no [SEG] in the answer
    losses["loss"].backward()
    trained = [p for params in wrapper.trainable_groups.values() for p in params]
    assert all(p.grad is not None for p in trained)


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


def test_metric_is_told_how_many_samples_to_expect():
    assert SparrowWrapper._expected_samples(torch.utils.data.DataLoader(list(range(7))), 1.0) == 7
    assert SparrowWrapper._expected_samples(torch.utils.data.DataLoader(list(range(7))), 1) is None  # fast_dev_run: one batch
    assert SparrowWrapper._expected_samples(torch.utils.data.DataLoader(list(range(7))), 0.5) is None


def test_a_normalised_box_reads_its_cell_of_the_dense_features():
    """VisualFeatures' geometry maps frame coordinates onto the grid, for RoIAlign."""
    from torchvision.ops import roi_align

    host = _host()
    visual = host.encode_video(torch.rand(1, 3, 3, 128, 128), torch.tensor([[0, 4, 7]]))
    assert visual.dense_frames.tolist() == [[0, 4, 7]]
    grid_h, grid_w = visual.geometry.grid
    maps = visual.dense[0]  # (T, C, h, w)
    row, col = 2, 5
    box = torch.tensor([[col / grid_w, row / grid_h, (col + 1) / grid_w, (row + 1) / grid_h]])
    cells = visual.geometry.to_grid(box)
    torch.testing.assert_close(cells, torch.tensor([[col, row, col + 1, row + 1]], dtype=torch.float32))
    read = roi_align(maps[1:2], [cells], output_size=1, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    torch.testing.assert_close(read[0, :, 0, 0], maps[1, :, row, col])
