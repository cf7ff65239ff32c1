"""The dual prompt: [BOX] in answers, the filtration head over the proposer's boxes, kept
boxes (with [SEG]) into SAM2, and stage 2 on a frozen stage 1."""

import pytest
import torch

from sparrow_plugin import SparrowWrapper
from sparrow_plugin.config import SparrowConfig
from sparrow_plugin.decoder import SAM2VideoDecoder
from sparrow_plugin.decoder.build import build_sam2
from sparrow_plugin.errors import CheckpointError, ConfigError
from sparrow_plugin.grounding.proposer import ClassAgnosticProposer
from sparrow_plugin.grounding.releases import tiny_proposer_config, write_proposer_release
from sparrow_plugin.hosts.tiny import TinyVideoLLM

from .test_wrapper import SMALL_HOST, WORDS, ForcedAnswer, _batch

TINY_SAM2 = "sam2.1_hiera_tiny128"


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """A tiny host with its SAM2 and a tiny proposer release on that SAM2's image encoder."""
    folder = tmp_path_factory.mktemp("dual_prompt")
    torch.manual_seed(0)
    sam = build_sam2(TINY_SAM2)
    TinyVideoLLM.create(WORDS, SMALL_HOST).save_pretrained(folder / "host", sam2_state=sam.state_dict())
    proposer = ClassAgnosticProposer(tiny_proposer_config(sam.image_encoder.neck.d_model))
    write_proposer_release(folder / "proposer", proposer, sam.image_encoder, TINY_SAM2)
    return folder


def _wrapper(releases, **config) -> SparrowWrapper:
    settings = {"max_new_tokens": 4, "box": {"proposer": str(releases / "proposer"), "query": "seg"}, "prompt": "box+seg", **config}
    return SparrowWrapper(base="tiny", host_args={"path": str(releases / "host")}, config=settings)


def test_kept_boxes_are_one_sam2_object_each_and_the_mask_is_their_union(releases, synthetic_root):
    wrapper = _wrapper(releases, box={"proposer": str(releases / "proposer"), "query": "seg", "filtration": {"threshold": 1e-6, "max_kept": 3}}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    batch = _batch(synthetic_root, size=2)
    for prediction, (height, width) in zip(wrapper.model.predict(batch), batch.original_sizes):
        assert prediction.object_masks.shape == (3, batch.frames.shape[1], height, width)
        assert torch.equal(prediction.masks, prediction.object_masks.any(dim=0))
        assert prediction.boxes.shape == (3, 4) and bool((prediction.box_scores > 0).all())
        assert bool((prediction.boxes[:, 2:] >= prediction.boxes[:, :2]).all())  # xyxy


def test_the_authors_max_pool_gives_one_object_per_token(releases, synthetic_root):
    wrapper = _wrapper(releases, decoder={"mode": "per_frame"},
                       box={"proposer": str(releases / "proposer"), "query": "seg", "objects": "max_pool", "filtration": {"threshold": 1e-6, "max_kept": 3}}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    prediction = wrapper.model.predict(_batch(synthetic_root, size=1))[0]
    assert prediction.object_masks.shape[0] == 1


def test_nothing_kept_with_box_prompts_is_an_empty_mask(releases, synthetic_root):
    """fallback seg with boxes alone: a query whose proposals all fall below the threshold
    (a no-target expression) is scored as an empty mask."""
    wrapper = _wrapper(releases, prompt="box", box={"proposer": str(releases / "proposer"), "query": "seg", "fallback": "seg",
                                                    "filtration": {"threshold": 0.999999}}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    batch = _batch(synthetic_root, kinds=["no_target", "appearance"])
    predictions = wrapper.model.predict(batch)
    assert all(p.masks is None and p.grounding_tokens == ["seg"] for p in predictions)
    wrapper._update_metric("test", batch, predictions)
    assert wrapper.metrics["test"].compute()["no_target/J&F"] == 1.0


def test_cond_frame_best_prompts_the_frame_with_the_most_confident_box(releases, synthetic_root):
    wrapper = _wrapper(releases, decoder={"cond_frame": "best", "best_of": 4}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    with torch.no_grad():  # a head whose confidence varies with the frame
        wrapper.model.box_grounding.filtration.proposal_selector.prop_proj.weight.normal_(0, 1.0)
    batch = _batch(synthetic_root, size=2)
    forced = ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    predictions = wrapper.model.predict(batch)
    forced.handle.remove()
    # the same confidences, computed frame by frame through the plugin's own steps
    model, frames = wrapper.model, batch.frames
    features = model.decoder.encode(frames)
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    generation = model.host.generate(model.host.build_inputs(model.encode(batch), batch.queries, None), max_new_tokens=4)
    queries = model.query_embedding(generation.token_states[:, 0], "seg")
    clips = torch.arange(len(batch))
    candidates = [0, 2, 5, 7]  # 4 evenly spaced of 8 frames
    confidence = []
    for frame in candidates:
        at = torch.full_like(clips, frame)
        filtered = model.box_grounding.filter(queries, model.box_grounding.proposals(features, clips, at),
                                              model.box_grounding.levels(features, clips, at, model.decoder.sam.no_mem_embed))
        confidence.append(filtered.logits.sigmoid().max(-1).values)
    expected = [candidates[i] for i in torch.stack(confidence).argmax(0).tolist()]
    assert [p.cond_frame for p in predictions] == expected


def test_re_anchoring_prompts_a_lost_object_again_and_leaves_earlier_frames_alone():
    """SAM2 re-prompted on a frame where the object is lost: the frames tracked before it
    are unchanged, the frame is recorded as prompted, and a re-anchoring that never fires
    (or finds no box) changes nothing."""
    torch.manual_seed(0)
    decoder = SAM2VideoDecoder(build_sam2(TINY_SAM2)).eval()
    frames = torch.rand(1, 6, 3, 128, 128)
    features = decoder.encode(frames)
    box = torch.tensor([[[20.0, 30.0, 70.0, 90.0]]])
    asked = []

    def box_on_frame(wanted):
        def re_anchor(obj, frame, presence, tracked, last_box):
            asked.append((obj, frame))
            assert isinstance(presence, float) and (tracked is None or tracked.shape == (4,))
            assert last_box is not None and last_box.shape == (4,)  # where it was last seen (its prompt box at first)
            return torch.tensor([60.0, 10.0, 120.0, 60.0]) if frame == wanted else None
        return re_anchor

    with torch.no_grad():
        plain = decoder.decode(features, None, boxes=box, cond_frame=1)
        never = decoder.decode(features, None, boxes=box, cond_frame=1, re_anchor=box_on_frame(None))
        asked.clear()
        on_3 = decoder.decode(features, None, boxes=box, cond_frame=1, re_anchor=box_on_frame(3))
    assert plain.prompted_frames == never.prompted_frames == [[1]]
    torch.testing.assert_close(never.mask_logits, plain.mask_logits)
    assert on_3.prompted_frames == [[1, 3]]
    assert asked == [(0, t) for t in (2, 3, 4, 5, 0)]  # every tracked frame is asked: forward, then back
    torch.testing.assert_close(on_3.mask_logits[:, 1:3], plain.mask_logits[:, 1:3])  # tracked before the re-prompt
    assert not torch.allclose(on_3.mask_logits[:, 3], plain.mask_logits[:, 3])


@pytest.mark.parametrize("trigger", [{"re_anchor": 1e9}, {"re_anchor_drift": 1.0}])
def test_re_anchoring_in_the_model_records_the_frames_it_prompted(releases, synthetic_root, trigger):
    """Lost on every frame (presence below 1e9), or drifted on every frame (IoU below 1):
    with a box kept everywhere, the object is prompted on every frame."""
    wrapper = _wrapper(releases, decoder=trigger, box={"proposer": str(releases / "proposer"), "query": "seg",
                                                       "filtration": {"threshold": 1e-6, "max_kept": 1}}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    batch = _batch(synthetic_root, size=1)
    prediction = wrapper.model.predict(batch)[0]
    assert prediction.prompted_frames == [list(range(batch.frames.shape[1]))]


def test_stage2_trains_the_filtration_head_and_leaves_stage1_bit_for_bit(releases, synthetic_root, tmp_path):
    stage1 = _wrapper(releases, prompt="seg", box={}, stage=1)
    with torch.no_grad():  # weights a stage 1 could have trained
        for params in stage1.trainable_groups.values():
            for p in params:
                p.add_(torch.randn_like(p) * 0.01)
    checkpoint = tmp_path / "stage1.ckpt"
    stage1.on_save_checkpoint(saved := {"state_dict": stage1.state_dict(), "hyper_parameters": {}})  # what trains, and the record
    state = saved["state_dict"]
    torch.save(saved, checkpoint)
    config = {"stage": 2, "max_new_tokens": 4, "decoder": {"mode": "per_frame"}, "no_target": "empty_mask", "prompt": "box+seg",
              "box": {"proposer": str(releases / "proposer"), "query": "seg"}}
    stage2 = SparrowWrapper(base="tiny", host_args={"path": str(releases / "host")}, config=config, init_from=str(checkpoint))
    assert {name for name, params in stage2.trainable_groups.items() if params} == {"filtration"}
    before = {k: v.clone() for k, v in stage2.state_dict().items()}
    for key, value in state.items():
        torch.testing.assert_close(before[key], value, rtol=0, atol=0)
    optimizer = torch.optim.SGD([p for params in stage2.trainable_groups.values() for p in params], lr=0.1)
    stage2.train()
    batch = _batch(synthetic_root, size=4)
    batch.cond_frames = torch.zeros(len(batch), dtype=torch.long)
    for _ in range(2):
        losses = stage2.model.training_losses(batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert "proposal" in losses and "bce" not in losses  # nothing that trains sees the mask losses
    after = stage2.state_dict()
    filtration = {k for k in after if k.startswith("model.box_grounding.filtration.")}
    assert any(not torch.equal(after[k], before[k]) for k in filtration)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in filtration)  # stage 1, host, SAM2, proposer


def test_init_from_refuses_a_checkpoint_of_another_model(releases, tmp_path):
    other = SparrowWrapper(base="tiny", host_args={"path": str(releases / "host")}, config={"lora": {"rank": 4}})
    checkpoint = tmp_path / "other.ckpt"
    other.on_save_checkpoint(saved := {"state_dict": {}, "hyper_parameters": {}})
    torch.save(saved, checkpoint)
    config = {"stage": 2, "box": {"proposer": str(releases / "proposer"), "query": "seg"}}
    with pytest.raises(CheckpointError, match=r"config\.lora\.rank: 4 in the checkpoint, 8 here"):
        SparrowWrapper(base="tiny", host_args={"path": str(releases / "host")}, config=config, init_from=str(checkpoint))


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="stage 2 trains the filtration head on proposals"):
        SparrowConfig(stage=2)
    with pytest.raises(ConfigError, match="needs boxes"):
        SparrowConfig(prompt="box+seg")
    with pytest.raises(ConfigError, match="box.query 'box' reads the \\[BOX\\] token"):
        SparrowConfig.from_dict({"box": {"proposer": "somewhere"}, "prompt": "box"})
    with pytest.raises(ConfigError, match="cond_frame 'best'"):
        SparrowConfig.from_dict({"decoder": {"cond_frame": "best"}})
    with pytest.raises(ConfigError, match="decoder.re_anchor re-prompts a tracked object"):
        SparrowConfig.from_dict({"decoder": {"re_anchor": 0.0}})


def test_answers_carry_box_before_seg_when_asked(releases):
    wrapper = _wrapper(releases, prompt="seg", box={"in_answers": True})
    names = wrapper.host.grounding_token_names
    assert wrapper.model._answer(True) == wrapper.host.answer_template.format(grounding=f"{names['box']} {names['seg']}")


def test_the_authors_sparrow_finetune_loads_strictly_with_its_gamma_as_chosen(tmp_path, synthetic_root):
    """A tiny sparrow-finetune (VideoGLaMM with [BOX], the filtration head under the
    authors' names) and a tiny sparrow-det-pretrain on its SAM2: they load, the head's
    weights are the release's, gamma is 0.1 as the authors ran it or the stored value."""
    from baselines.videoglamm import VideoGLaMM
    from baselines.videoglamm.tiny import write_tiny_release
    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.grounding.filtration import FiltrationConfig, FiltrationHead

    vocabulary = [e.text for e in MeViSDataset(synthetic_root, "train", image_size=32).expressions]
    head = FiltrationHead(FiltrationConfig(token_dim=64, proposal_dim=32, hidden_dim=32, level_dims=(8, 16, 64)))
    with torch.no_grad():
        head.roi_fusion_gamma.fill_(0.37)
    release = write_tiny_release(tmp_path / "sparrow-finetune", vocabulary, sparrow=head)
    host = VideoGLaMM.from_pretrained(release)
    sam = build_sam2(TINY_SAM2, state_dict=host.decoder_spec().state_dict)
    write_proposer_release(tmp_path / "sparrow-det-pretrain", ClassAgnosticProposer(tiny_proposer_config(64)), sam.image_encoder, TINY_SAM2)
    box = {"proposer": str(tmp_path / "sparrow-det-pretrain"), "in_answers": True, "filtration": {"hidden_dim": 32}}

    def build(**extra):
        config = {"box": {**box, **extra}, "prompt": "box+seg", "max_new_tokens": 4}
        return SparrowWrapper(base="videoglamm", host_args={"path": str(release)}, config=config)

    for choice, gamma in (("as_run", 0.1), ("stored", 0.37)):
        wrapper = build(release_gamma=choice)
        loaded = wrapper.model.box_grounding.filtration.state_dict()
        assert float(loaded["roi_fusion_gamma"]) == pytest.approx(gamma)
        for key, value in head.state_dict().items():
            if key != "roi_fusion_gamma":
                assert torch.equal(loaded[key], value), key
    assert wrapper.model.token_ids["[BOX]"] == host.tokenizer.convert_tokens_to_ids("[BOX]")  # the release's own row, not a new one
    state = torch.load(release / "pytorch_model.bin", weights_only=True)
    del state["model.roi_helper.score_head.2.bias"]
    torch.save(state, release / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): roi_helper\.score_head\.2\.bias"):
        build()
