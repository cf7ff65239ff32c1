"""SparrowPredictor: the masks of SparrowModel.predict on a clip held in memory, from a video
read on demand, in bounded memory; SAM2's memory pruned without changing a bit."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.decoder import video_decoder
from sparrow_plugin.errors import ConfigError, DatasetError
from sparrow_plugin.frames import resize_frames
from sparrow_plugin.interfaces import VideoBatch
from sparrow_plugin.predictor import SparrowPredictor
from sparrow_plugin.video_io import VideoSource, write_video

from .test_dual_prompt import _wrapper, releases  # noqa: F401 (a fixture)
from .test_wrapper import ForcedAnswer

LONG = 40  # frames: past twice SAM2's memory reach (17 frames for the tiny SAM2), so pruning happens


@pytest.fixture(scope="module")
def long_clip(synthetic_root, tmp_path_factory):
    """A 40-frame folder of PNG frames (lossless: both paths read the same pixels): a
    synthetic video played forward and back."""
    dataset = MeViSDataset(synthetic_root, "valid_u", image_size=128)
    paths = sorted((dataset.frames_dir / dataset.expressions[0].video).glob("*.jpg"))
    frames = [np.array(Image.open(p)) for p in paths]
    cycle = frames + frames[-2:0:-1]
    folder = tmp_path_factory.mktemp("long_clip")
    for t in range(LONG):
        Image.fromarray(cycle[t % len(cycle)]).save(folder / f"{t:05d}.png")
    return folder


def _whole_clip_batch(model, folder, query: str) -> VideoBatch:
    """The clip as a batch in memory, its frames resized as the predictor resizes them."""
    paths = sorted(folder.glob("*.png"))
    pixels = torch.from_numpy(np.stack([np.array(Image.open(p)) for p in paths])).permute(0, 3, 1, 2).float().div_(255)
    height, width = pixels.shape[-2:]
    size = model.decoder.image_size
    request = model.host.frame_request()
    picked = request.sample(len(paths))
    return VideoBatch(
        frames=resize_frames(pixels, (size, size))[None], masks=None, object_masks=None, full_masks=None, queries=[query], kinds=["all"],
        keys=[(folder.name, "0")], obj_ids=[[]], frame_names=[[p.stem for p in paths]], original_sizes=[(height, width)],
        frame_indices=torch.arange(len(paths))[None], llm_frames=resize_frames(pixels[picked], request.size(height, width), request.interpolation)[None],
        llm_frame_indices=torch.as_tensor(picked)[None],
    )


def _propagated(predictor, state) -> tuple[dict, dict]:
    masks, presence = {}, {}
    for found in predictor.propagate(state):
        key = (found.expression, found.object)
        masks.setdefault(key, {})[found.frame] = found.mask
        presence.setdefault(key, {})[found.frame] = found.presence
    return masks, presence


SETTINGS = {
    "seg, tracked": {"prompt": "seg", "decoder": {"mode": "track"}},
    "box+seg, tracked, 3 boxes": {"decoder": {"mode": "track"}, "box": {"filtration": {"threshold": 1e-6, "max_kept": 3}}},
    "box+seg, best frame, re-anchored": {"decoder": {"mode": "track", "cond_frame": "best", "re_anchor": 0.0, "re_anchor_drift": 0.5},
                                         "box": {"filtration": {"threshold": 1e-6, "max_kept": 2}}},
    "box+seg, per frame, max-pooled": {"decoder": {"mode": "per_frame"}, "box": {"objects": "max_pool", "filtration": {"threshold": 1e-6, "max_kept": 3}}},
    "box+seg, boxes kept on each frame": {"decoder": {"mode": "per_frame"}, "box": {"filtration": {"threshold": 1e-6, "max_kept": 2}}},
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_predictor_gives_predicts_masks_on_a_video_read_on_demand(releases, long_clip, name):  # noqa: F811
    settings = SETTINGS[name]
    box = {"proposer": str(releases / "proposer"), "query": "seg", **settings.get("box", {})}
    wrapper = _wrapper(releases, **{**settings, "box": box}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    forced = ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    if name.endswith("re-anchored"):
        with torch.no_grad():  # a head whose confidence varies with the frame: boxes to re-anchor on
            wrapper.model.box_grounding.filtration.proposal_selector.prop_proj.weight.normal_(0, 1.0)
    expected = wrapper.model.predict(_whole_clip_batch(wrapper.model, long_clip, "the red circle"))[0]

    predictor = SparrowPredictor(wrapper.model, cache_frames=8)
    state = predictor.init_state(long_clip)
    forced.step = 0  # the same answer again
    answer = predictor.add_expression(state, "the red circle")
    masks, presence = _propagated(predictor, state)

    assert answer.answer == expected.answer and answer.cond_frame == expected.cond_frame
    assert answer.num_objects == len(expected.object_masks) == len(masks)
    for j, mask in enumerate(expected.object_masks):
        got = torch.stack([masks[(0, j)][t] for t in range(LONG)])
        # features encoded a few frames at a time instead of all at once: the last float
        # bits may differ, a pixel on a boundary may flip
        assert (got != mask).float().mean() < 1e-3, f"object {j}: {(got != mask).sum()} pixels differ"
        assert np.allclose([presence[(0, j)][t] for t in range(LONG)], torch.sigmoid(expected.object_scores[j]).numpy(), atol=1e-3)
        assert state.plan.prompted_frames(0, j) == expected.prompted_frames[j]
    if expected.boxes is not None:
        height, width = state.size
        pixels = expected.boxes * torch.tensor([width, height, width, height])
        assert np.allclose([b for b in answer.boxes], pixels.numpy(), atol=0.02)
    # bounded: the features of a few frames were held, not the clip's
    assert len(state.features.kept_frames) <= state.features.cache_frames < LONG


def test_sam2_memory_keeps_only_what_it_can_still_read_and_the_masks_do_not_change(releases, long_clip, monkeypatch):  # noqa: F811
    """Pruned SAM2 memory tracks bit for bit as the whole memory does, forward and back
    from a frame in the middle, with a bounded number of frames held."""
    wrapper = _wrapper(releases, prompt="seg", decoder={"mode": "track"}).eval()
    decoder = wrapper.model.decoder
    batch = _whole_clip_batch(wrapper.model, long_clip, "the red circle")
    features = decoder.encode(batch.frames)
    tokens = torch.randn(2, 2, decoder.prompt_dim, generator=torch.Generator().manual_seed(0))
    held = []
    forget = video_decoder._Tracker._forget

    def counting(tracker, t):
        forget(tracker, t)
        held.append(len(tracker.output_dict["non_cond_frame_outputs"]))

    monkeypatch.setattr(video_decoder._Tracker, "_forget", counting)
    with torch.no_grad():
        pruned = decoder.decode(features, tokens, clip_index=torch.zeros(2, dtype=torch.long), cond_frame=LONG // 2)
    monkeypatch.setattr(video_decoder._Tracker, "_forget", lambda tracker, t: None)
    with torch.no_grad():
        whole = decoder.decode(features, tokens, clip_index=torch.zeros(2, dtype=torch.long), cond_frame=LONG // 2)
    assert torch.equal(pruned.mask_logits, whole.mask_logits) and torch.equal(pruned.object_logits, whole.object_logits)
    sam = decoder.sam
    reach = max(sam.num_maskmem, sam.max_obj_ptrs_in_encoder) + 1
    assert max(held) <= 2 * reach < LONG - 1  # never the whole clip


def test_several_expressions_are_tracked_in_one_pass_over_the_frames(releases, long_clip):  # noqa: F811
    wrapper = _wrapper(releases, prompt="seg", decoder={"mode": "track"}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    forced = ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    predictor = SparrowPredictor(wrapper.model, cache_frames=8)
    state = predictor.init_state(long_clip)
    for expression in ("the red circle", "the two blue squares", "the green star"):
        forced.step = 0
        predictor.add_expression(state, expression)
    masks, _ = _propagated(predictor, state)
    assert sorted(masks) == [(0, 0), (1, 0), (2, 0)] and all(len(frames) == LONG for frames in masks.values())
    # the features were computed once per frame for the three (plus the few encoded ahead
    # past the end of the backward pass), not once per expression
    assert state.features.encoded <= LONG + 4


def test_predict_to_folder_writes_what_sparrow_predict_writes(releases, long_clip, tmp_path):  # noqa: F811
    wrapper = _wrapper(releases, decoder={"mode": "track"}, box={"proposer": str(releases / "proposer"), "query": "seg", "filtration": {"threshold": 1e-6, "max_kept": 2}}).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    frames = np.stack([np.array(Image.open(p)) for p in sorted(long_clip.glob("*.png"))])
    mp4 = write_video(tmp_path / "clip.mp4", frames, fps=8, keyframe_interval=8)
    entries = SparrowPredictor(wrapper.model).predict_to_folder(mp4, ["the red circle"], tmp_path / "out")
    assert entries == json.loads((tmp_path / "out" / "predictions.json").read_text())
    entry = entries[0]
    assert entry["frames"] == LONG and len(entry["objects"]) == 2
    for j, obj in enumerate(entry["objects"]):
        assert len(obj["presence"]) == LONG and obj["prompted_frames"] == ["00000"] and len(obj["box"]) == 4
        assert len(list((tmp_path / "out" / "0" / f"object_{j}").glob("*.png"))) == LONG
    union = np.array(Image.open(tmp_path / "out" / "0" / "mask" / "00005.png")) > 0
    objects = [np.array(Image.open(tmp_path / "out" / "0" / f"object_{j}" / "00005.png")) > 0 for j in range(2)]
    assert np.array_equal(union, objects[0] | objects[1])


def test_a_video_source_reads_runs_forward_and_back_as_a_full_decode(tmp_path):
    frames = np.zeros((70, 48, 64, 3), np.uint8)
    for t in range(len(frames)):
        frames[t, :, : t % 64] = 200
    path = write_video(tmp_path / "long.mp4", frames, fps=30, keyframe_interval=10)
    from sparrow_plugin.video_io import read_video

    full = read_video(path).frames
    source = VideoSource(path, chunk=16)
    assert len(source) == 70 and (source.height, source.width) == (48, 64) and source.fps == 30
    forward = source.read(list(range(70)))
    backward = source.read(list(range(69, -1, -1)))
    assert np.array_equal(forward, full) and np.array_equal(backward, full[::-1])
    scattered = [0, 33, 69, 12]  # the host's frames: a seek each
    assert np.array_equal(source.read_scattered(scattered), full[scattered])
    with pytest.raises(IndexError, match="frame 70 of a video of 70 frames"):
        source.read([70])
    sampled = VideoSource(path, fps=4)
    assert sampled.source_indices == read_video(path, fps=4).source_indices


def test_a_truncated_video_is_refused_when_opened(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (40, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetError, match="cut.mp4"):
        VideoSource(cut)


def test_an_empty_expression_and_propagating_nothing_are_refused(releases, long_clip):  # noqa: F811
    predictor = SparrowPredictor(_wrapper(releases, prompt="seg").eval().model)
    state = predictor.init_state(long_clip)
    with pytest.raises(ConfigError, match="non-empty expression"):
        predictor.add_expression(state, "   ")
    with pytest.raises(ConfigError, match="add an expression"):
        next(predictor.propagate(state))
