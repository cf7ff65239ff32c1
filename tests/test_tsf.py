"""Target-Specific Tracking Features: tracks, their cache, and the choice of K moments."""

import json

import pytest
import torch

from sparrow_plugin.errors import ConfigError, DatasetError
from sparrow_plugin.tsf.cache import TrackCache
from sparrow_plugin.tsf.select import SelectionSettings, select_representatives, selection_features
from sparrow_plugin.tsf.tracks import Track, annotation_track, read_box_file

# ----------------------------------------------------------------------------- selection


def _two_looks_three_places():
    """12 samples of a target that looks one way on frames 0-5 and another on 6-11, and
    moves through three places: frames 0-3 left, 4-7 middle, 8-11 right."""
    appearance = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(6, 1), torch.tensor([[0.0, 1.0]]).repeat(6, 1)])
    appearance = appearance + 0.01 * torch.arange(12.0)[:, None]  # no two samples alike
    centres = torch.tensor([0.1] * 4 + [0.5] * 4 + [0.9] * 4)
    boxes = torch.stack([centres - 0.05, torch.full((12,), 0.4), centres + 0.05, torch.full((12,), 0.6)], dim=1)
    return appearance, boxes, torch.linspace(0, 1, 12)


def test_appearance_selection_picks_the_sample_nearest_each_centre():
    appearance, boxes, times = _two_looks_three_places()
    settings = SelectionSettings(k=2)
    chosen = select_representatives(selection_features(appearance, boxes, times, settings), settings)
    # centres start at samples 0 and 11 and settle on the two looks' means
    means = torch.stack([appearance[:6].mean(0), appearance[6:].mean(0)])
    assert chosen == torch.cdist(means, appearance).argmin(dim=1).tolist()
    assert chosen[0] < 6 <= chosen[1]


def test_joint_selection_also_tells_places_apart():
    """Two looks, three places: with the box geometry weighted in, the places are the
    clusters, and one sample of each is chosen."""
    appearance, boxes, times = _two_looks_three_places()
    joint = SelectionSettings(k=3, space="joint", geometry_weight=5.0)
    chosen = select_representatives(selection_features(appearance, boxes, times, joint), joint)
    places = [int(i) // 4 for i in chosen]
    assert sorted(places) == [0, 1, 2]
    again = select_representatives(selection_features(appearance, boxes, times, joint), joint)
    assert again == chosen  # nothing random


def test_fewer_samples_than_k_are_all_kept():
    appearance, boxes, times = _two_looks_three_places()
    settings = SelectionSettings(k=4)
    assert select_representatives(appearance[:3], settings) == [0, 1, 2]
    assert select_representatives(appearance[:0], settings) == []
    with pytest.raises(ConfigError, match="tsf.select.space must be"):
        SelectionSettings(space="paper")


def test_candidates_are_the_found_frames_or_all_as_the_code():
    from sparrow_plugin.tsf.inject import representatives

    features = torch.arange(12.0).view(6, 2)
    track = Track(torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(6, 1), torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    times = torch.linspace(0, 1, 6)
    found = representatives(features, track, times, SelectionSettings(k=4, candidates="found"))
    assert found.tolist() == [features[1].tolist(), features[2].tolist()] * 2  # two found frames, repeated
    padded = representatives(features, track, times, SelectionSettings(k=4, fewer="zeros", candidates="found"))
    assert padded[2:].abs().sum() == 0 and torch.equal(padded[:2], features[1:3])
    no_target = Track(track.boxes, torch.zeros(6))
    assert representatives(features, no_target, times, SelectionSettings(k=4, candidates="found")).abs().sum() == 0
    assert representatives(features, no_target, times, SelectionSettings(k=4, candidates="all")).abs().sum() > 0


# ----------------------------------------------------------------------------- tracks


def test_annotation_track_takes_the_first_visible_object_and_falls_back():
    boxes = torch.tensor([[[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.4, 0.4]],
                          [[0.5, 0.5, 0.6, 0.6], [0.5, 0.5, 0.7, 0.7], [0.6, 0.6, 0.8, 0.8], [0.0, 0.0, 0.0, 0.0]]])
    visible = torch.tensor([[False, True, False, True], [False, True, True, False]])
    track = annotation_track(boxes, visible)
    assert track.boxes.tolist()[0] == [0.0, 0.0, 1.0, 1.0]  # nothing seen yet: the whole frame
    torch.testing.assert_close(track.boxes[1], boxes[0, 1])  # the first referred object
    torch.testing.assert_close(track.boxes[2], boxes[1, 2])  # the only one visible
    torch.testing.assert_close(track.boxes[3], boxes[0, 3])
    assert track.scores.tolist() == [0.0, 1.0, 1.0, 1.0]


def test_a_box_file_in_either_format_gives_the_same_track(tmp_path):
    xyxy = tmp_path / "xyxy.txt"
    xywh = tmp_path / "xywh.txt"
    xyxy.write_text("10 20 50 60\n12,22,52,62\n\n100 10 150 40\n")
    xywh.write_text("10 20 40 40\n12, 22, 40, 40\n100 10 50 30\n")
    a = read_box_file(xyxy, num_frames=5, width=160, height=120)
    b = read_box_file(xywh, num_frames=5, width=160, height=120)
    torch.testing.assert_close(a.boxes, b.boxes)
    assert len(a) == 5 and torch.equal(a.boxes[3], a.boxes[4])  # frames past the last line take it
    torch.testing.assert_close(a.boxes[0], torch.tensor([10 / 160, 20 / 120, 50 / 160, 60 / 120]))


def test_a_bad_box_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "video.txt"
    path.write_text("10 20 50 60\n10 20\n")
    with pytest.raises(DatasetError, match=r"video\.txt.*line 2 has 2 numbers"):
        read_box_file(path, num_frames=2, width=160, height=120)
    with pytest.raises(DatasetError, match="cannot read the box file"):
        read_box_file(tmp_path / "absent.txt", num_frames=2, width=160, height=120)


# ----------------------------------------------------------------------------- cache


PRODUCER = {"source": "annotation", "dataset": {"split": "train", "content": "abc"}}


def _track(value: float) -> Track:
    return Track(torch.full((3, 4), value).sort(dim=1).values, torch.ones(3))


def test_cache_round_trip_and_resume(tmp_path):
    cache = TrackCache(tmp_path / "cache", PRODUCER)
    assert cache.open_for_build() == set()
    cache.append(0, [("v0/0", _track(0.25))])
    cache.append(1, [("v1/0", _track(0.5))])
    with open(tmp_path / "cache" / "tracks.rank1.jsonl", "a") as shard:
        shard.write('{"key": "v2/0", "boxes": [[0.1, 0.1')  # a build killed mid-line
    with pytest.raises(DatasetError, match="cut off mid-write"):
        TrackCache(tmp_path / "cache", PRODUCER).read()
    resumed = TrackCache(tmp_path / "cache", PRODUCER)
    assert resumed.open_for_build() == {"v0/0", "v1/0"}  # the cut line is dropped, to be built again
    resumed.append(1, [("v2/0", _track(0.75))])
    tracks = TrackCache(tmp_path / "cache", PRODUCER).read()
    assert sorted(tracks) == ["v0/0", "v1/0", "v2/0"]
    torch.testing.assert_close(tracks["v1/0"].boxes, _track(0.5).boxes)


def test_a_stale_or_foreign_cache_is_refused(tmp_path):
    folder = tmp_path / "cache"
    TrackCache(folder, PRODUCER).open_for_build()
    edited = {"source": "annotation", "dataset": {"split": "train", "content": "def"}}
    with pytest.raises(DatasetError, match=r"producer\.dataset\.content: 'abc' in the cache, 'def' here"):
        TrackCache(folder, edited).read()
    with pytest.raises(DatasetError, match="producer.dataset.content"):
        TrackCache(folder, edited).open_for_build()
    assert TrackCache(folder, edited).open_for_build(overwrite=True) == set()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["producer"]["source"] = "detect+track"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="does not match its hash"):
        TrackCache(folder, edited).read()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and holds no TSF manifest"):
        TrackCache(tmp_path / "other", PRODUCER).open_for_build()
    with pytest.raises(DatasetError, match="no TSF track cache here"):
        TrackCache(tmp_path / "nowhere", PRODUCER).read()


# ----------------------------------------------------------------------------- injection and training


def test_the_injector_writes_exactly_the_placeholders():
    from sparrow_plugin.interfaces import EmbedEdit

    from .test_wrapper import _host

    host = _host()
    ids = host.add_tokens(["<TSF>"])
    tsf = ids["<TSF>"]
    visual = host.encode_video(torch.rand(2, 2, 3, 128, 128))
    inputs = host.build_inputs(visual, ["the red circle", "the two blue squares"], num_tsf_tokens=4)
    where = inputs.input_ids == tsf
    assert where.sum(dim=1).tolist() == [4, 4]
    values = torch.randn(2, 4, host.hidden_size)
    plain = host.embed(inputs.input_ids, inputs.visual)
    edited = host.embed(inputs.input_ids, inputs.visual, [EmbedEdit(tsf, values)])
    torch.testing.assert_close(edited[~where], plain[~where], rtol=0, atol=0)
    torch.testing.assert_close(edited[where], values.flatten(0, 1), rtol=0, atol=0)


def test_crops_stretch_each_box_to_the_frame():
    from sparrow_plugin.tsf.inject import crop_regions

    image = torch.zeros(1, 3, 8, 8)
    image[:, :, 2:4, 4:8] = 1.0  # a 2 x 4 patch
    crop = crop_regions(image, torch.tensor([[0.5, 0.25, 1.0, 0.5]]))
    assert crop.shape == (1, 3, 8, 8) and torch.allclose(crop, torch.ones_like(crop))


def _tsf_wrapper(synthetic_root, tsf):
    from sparrow_plugin import SparrowWrapper

    from .test_wrapper import _host

    return SparrowWrapper(base=_host(), config={"tsf": tsf, "max_new_tokens": 4})


def test_training_with_tsf_feeds_the_tracks_crops_to_the_llm(synthetic_root):
    """tsf.mode train: the training batch carries the annotation track on the host's frames;
    the LLM sees K <TSF> tokens, whose crops train the host's projector; the loss differs
    from a run without them; evaluation reads no track."""
    from sparrow_plugin.data import ReferringVideoDataModule

    wrapper = _tsf_wrapper(synthetic_root, {"mode": "train", "select": {"k": 2}})
    data = ReferringVideoDataModule(synthetic_root, image_size=128, batch_size=3, train_frames=4)
    data.set_frame_request(wrapper.host.frame_request())
    data.require_tsf_tracks()
    batch = next(iter(data.train_dataloader()))
    assert len(batch.tsf) == 3 and batch.tsf[0].boxes.shape == (batch.llm_frames.shape[1], 4)
    wrapper.train()
    seen = {}
    handle = wrapper.host.llm.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.update(ids=i[0]))
    torch.manual_seed(0)
    with_tsf = wrapper.model.training_losses(batch)
    handle.remove()
    tsf_id = wrapper.model.role_ids["tsf"]
    assert (seen["ids"] == tsf_id).sum(dim=1).tolist() == [2, 2, 2]
    with_tsf["ce"].backward()
    projector = wrapper.host.spatial_projector[0].weight
    assert projector.grad is not None and bool(projector.grad.abs().sum() > 0)
    wrapper.model.config.tsf.mode = "off"
    torch.manual_seed(0)
    without = wrapper.model.training_losses(batch)
    assert not torch.allclose(with_tsf["ce"], without["ce"])
    wrapper.model.config.tsf.mode = "train"
    wrapper.eval()
    assert wrapper.model.tsf_edits(batch, *wrapper.model.host_frames(batch), None) == []  # train-only


def test_tsf_drop_trains_some_batches_without_tsf(synthetic_root):
    """tsf.drop: about that share of training batches gets no <TSF> tokens (the same batches
    for a seed); 0 gives every batch TSF; a share outside [0, 1) is refused."""
    from sparrow_plugin.data import ReferringVideoDataModule

    data = ReferringVideoDataModule(synthetic_root, image_size=128, batch_size=2, train_frames=2)
    counts = {}
    for drop in (0.0, 0.5):
        wrapper = _tsf_wrapper(synthetic_root, {"mode": "train", "drop": drop, "select": {"k": 2}}).train()
        data.set_frame_request(wrapper.host.frame_request())
        data.require_tsf_tracks()
        batch = next(iter(data.train_dataloader()))
        frames, indices = wrapper.model.host_frames(batch)
        torch.manual_seed(0)
        counts[drop] = [len(wrapper.model.tsf_edits(batch, frames, indices, None)) for _ in range(40)]
    assert counts[0.0] == [1] * 40
    assert 10 <= counts[0.5].count(0) <= 30 and set(counts[0.5]) == {0, 1}
    with pytest.raises(ConfigError, match=r"tsf.drop .* in \[0, 1\), got 1.0"):
        _tsf_wrapper(synthetic_root, {"mode": "train", "drop": 1.0})


def test_roi_encoding_trains_its_projection_from_the_hosts_own_maps(synthetic_root):
    from sparrow_plugin.data import ReferringVideoDataModule

    wrapper = _tsf_wrapper(synthetic_root, {"mode": "train", "encoding": "roi", "select": {"k": 2}})
    assert {p for p in wrapper.trainable_groups["tsf"]} == set(wrapper.model.tsf_encoder.parameters())
    data = ReferringVideoDataModule(synthetic_root, image_size=128, batch_size=3, train_frames=4)
    data.set_frame_request(wrapper.host.frame_request())
    data.require_tsf_tracks()
    batch = next(iter(data.train_dataloader()))
    wrapper.train()
    encoded = []
    handle = wrapper.host.spatial_encoder.patch_embed.register_forward_hook(lambda m, i, o: encoded.append(i[0].shape[0]))
    losses = wrapper.model.training_losses(batch)
    handle.remove()
    assert encoded == [3 * batch.llm_frames.shape[1]]  # the host's frames once: no extra tower pass for the crops
    losses["ce"].backward()
    assert all(p.grad is not None for p in wrapper.model.tsf_encoder.parameters())
    assert bool(wrapper.model.tsf_encoder.project[0].weight.grad.abs().sum() > 0)


def test_training_reads_tracks_from_a_cache_of_the_same_split(tmp_path, synthetic_root):
    from sparrow_plugin.data import ReferringVideoDataModule
    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.tsf.cache import dataset_record

    dataset = MeViSDataset(synthetic_root, "train", image_size=32)
    cache = TrackCache(tmp_path / "cache", {"source": "annotation", "dataset": dataset_record(synthetic_root, "train")})
    cache.open_for_build()
    frames = len(dataset.expressions[0].frames)
    tracks = [(f"{e.video}/{e.exp_id}", Track(torch.tensor([[0.1, 0.2, 0.3, 0.4]]).repeat(frames, 1), torch.ones(frames))) for e in dataset.expressions]
    cache.append(0, tracks)
    wrapper = _tsf_wrapper(synthetic_root, {"mode": "train"})
    data = ReferringVideoDataModule(synthetic_root, image_size=128, batch_size=2, tsf_tracks=str(tmp_path / "cache"))
    data.set_frame_request(wrapper.host.frame_request())
    batch = next(iter(data.train_dataloader()))
    torch.testing.assert_close(batch.tsf[0].boxes[0], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    stale = ReferringVideoDataModule(synthetic_root, image_size=128, train_split="valid_u", tsf_tracks=str(tmp_path / "cache"))
    stale.set_frame_request(wrapper.host.frame_request())
    with pytest.raises(DatasetError, match=r"producer\.dataset\.split: 'train' in the cache, 'valid_u' here"):
        stale.train_dataloader()


# ----------------------------------------------------------------------------- the builder


def _records(folder):
    """Every record of a cache, by key, as stored."""
    return {json.loads(line)["key"]: line for shard in sorted(folder.glob("tracks.rank*.jsonl")) for line in shard.read_text().splitlines()}


def test_the_builder_on_two_ranks_writes_what_one_writes_and_resumes(tmp_path, synthetic_root):
    """`sparrow tsf build` over two CPU processes (DDP) gives the records one process gives,
    in two shards; a build cut short resumes without redoing what it finished."""
    from .test_distributed import sparrow

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  init_args:\n    root: {synthetic_root}\n")
    sparrow(["tsf", "build", "--config", str(recipe), "--out", str(tmp_path / "one")], cwd=tmp_path)
    sparrow(["tsf", "build", "--config", str(recipe), "--out", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp"], cwd=tmp_path)
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    from sparrow_plugin.data.mevis import MeViSDataset

    expressions = MeViSDataset(synthetic_root, "train", image_size=32).expressions
    assert sorted(one) == sorted(f"{e.video}/{e.exp_id}" for e in expressions)
    assert one == two and len(list((tmp_path / "two").glob("tracks.rank*.jsonl"))) == 2
    # cut short: half the records gone, the last one written half
    shard = tmp_path / "one" / "tracks.rank0.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text("".join(line + "\n" for line in lines[: len(lines) // 2]) + lines[len(lines) // 2][:20])
    resumed = sparrow(["tsf", "build", "--config", str(recipe), "--out", str(tmp_path / "one")], cwd=tmp_path)
    assert _records(tmp_path / "one") == one
    assert f"{len(one)} tracks" in resumed.stdout
    # the annotation track is the referred objects' boxes, as the training data reads them
    tracks = TrackCache(tmp_path / "one", {}).read()
    dataset = MeViSDataset(synthetic_root, "train", image_size=32)
    expression = next(e for e in dataset.expressions if e.kind == "appearance")
    item = dataset._load(expression, 0)
    expected = annotation_track(item["object_boxes"], item["object_visible"])
    got = tracks[f"{expression.video}/{expression.exp_id}"]
    torch.testing.assert_close(got.boxes[item["frame_indices"]], expected.boxes, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- TSF at inference


def _inference_wrapper(tsf):
    from .test_wrapper import ForcedAnswer

    wrapper = _tsf_wrapper(None, tsf).eval()
    seg, eos = wrapper.model.role_ids["seg"], wrapper.host.tokenizer.eos_token_id
    ForcedAnswer(wrapper.host.llm.get_output_embeddings(), tokens=[seg, eos])
    prefills = []  # the <TSF> count of each prompt the LLM reads whole
    wrapper.host.llm.get_input_embeddings().register_forward_hook(
        lambda m, i, o: prefills.append(int((i[0] == wrapper.model.role_ids["tsf"]).sum(dim=1).max())) if i[0].shape[1] > 1 else None
    )
    return wrapper, prefills


def test_box_files_in_either_format_give_the_same_tsf_at_inference(tmp_path, synthetic_root):
    from .test_wrapper import _batch

    batch = _batch(synthetic_root, size=2)
    for name, line in (("xyxy", "10 20 60 70"), ("xywh", "10 20 50 50")):
        (tmp_path / name).mkdir()
        for video, _ in batch.keys:
            (tmp_path / name / f"{video}.txt").write_text("\n".join([line] * 8))
    answers = {}
    for name in ("xyxy", "xywh"):
        wrapper, prefills = _inference_wrapper({"mode": "train+infer", "infer": "box_file", "box_files": str(tmp_path / name), "select": {"k": 2}})
        torch.manual_seed(0)
        with torch.no_grad():
            predictions = wrapper.model.predict(batch)
            answers[name] = [p.masks for p in predictions]
        assert prefills == [2]  # one prefill, with K <TSF> tokens
    assert all(torch.equal(a, b) for a, b in zip(answers["xyxy"], answers["xywh"]))
    wrapper, _ = _inference_wrapper({"mode": "train+infer", "infer": "box_file", "box_files": str(tmp_path / "none" / "{video}.txt")})
    with pytest.raises(DatasetError, match="cannot read the box file"):
        wrapper.model.predict(batch)


def test_the_first_pass_feeds_tsf_to_a_second(synthetic_root):
    from .test_wrapper import _batch

    wrapper, prefills = _inference_wrapper({"mode": "train+infer", "infer": "first_pass", "select": {"k": 2}})
    with torch.no_grad():
        predictions = wrapper.model.predict(_batch(synthetic_root, size=2))
    assert prefills == [0, 2]  # without TSF, then with the first pass's track
    assert len(predictions) == 2


def test_tsf_at_inference_from_the_data_a_cache_of_the_split_or_its_annotation(tmp_path, synthetic_root):
    """tsf.infer dataset: each evaluation sample carries its track from tsf_eval_tracks; a
    cache that the builder made from the split's annotation gives the same answers as the
    annotation itself, which results record as an oracle; unset, it is refused."""
    from sparrow_plugin.data import ReferringVideoDataModule
    from sparrow_plugin.tsf.builder import build_track_cache

    build_track_cache(synthetic_root, "valid_u", tmp_path / "cache", source="annotation", accelerator="cpu", devices=1)
    masks, tracks, deviations = {}, {}, {}
    for source in ("annotation", str(tmp_path / "cache")):
        wrapper, prefills = _inference_wrapper({"mode": "train+infer", "infer": "dataset", "select": {"k": 2}})
        data = ReferringVideoDataModule(synthetic_root, image_size=128, eval_batch_size=3, tsf_eval_tracks=source)
        data.set_frame_request(wrapper.host.frame_request())
        data.require_tsf_eval_tracks()
        batch = next(iter(data.test_dataloader()))
        assert len(batch.tsf) == 3 and batch.tsf[0].boxes.shape == (batch.llm_frames.shape[1], 4)
        tracks[source] = torch.stack([track.boxes for track in batch.tsf])
        torch.manual_seed(0)
        with torch.no_grad():
            masks[source] = [None if p.masks is None else p.masks.tolist() for p in wrapper.model.predict(batch)]
        deviations[source] = data.protocol_deviations()
        assert prefills == [2]  # one prefill, with K <TSF> tokens
    torch.testing.assert_close(*tracks.values(), atol=1e-6, rtol=0)  # the cache stores 6 decimals
    assert masks["annotation"] == masks[str(tmp_path / "cache")]
    assert any("oracle" in d for d in deviations["annotation"]) and deviations[str(tmp_path / "cache")] == []
    with pytest.raises(ConfigError, match="tsf_eval_tracks"):
        ReferringVideoDataModule(synthetic_root, image_size=128).require_tsf_eval_tracks()
    data = ReferringVideoDataModule(synthetic_root, image_size=128, eval_batch_size=3)
    data.set_frame_request(wrapper.host.frame_request())
    with pytest.raises(ConfigError, match="tsf_eval_tracks"):  # a batch without tracks
        wrapper.model.predict(next(iter(data.test_dataloader())))


def test_a_first_pass_track_is_its_masks_boxes():
    from sparrow_plugin.interfaces import Prediction
    from sparrow_plugin.model import _track_of

    masks = torch.zeros(3, 10, 20, dtype=torch.bool)
    masks[0, 2:5, 4:10] = True
    masks[2, 0:10, 0:20] = True
    batch = type("Batch", (), {"frame_names": [["a", "b", "c"]]})()
    track = _track_of(Prediction(answer="", truncated=False, grounding_tokens=["seg"], masks=masks), batch, 0)
    torch.testing.assert_close(track.boxes, torch.tensor([[0.2, 0.2, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]))
    assert track.scores.tolist() == [1.0, 0.0, 1.0]
    none = _track_of(Prediction(answer="", truncated=False, grounding_tokens=[], masks=None), batch, 0)
    assert none.scores.tolist() == [0.0, 0.0, 0.0]  # nothing found: K zero vectors in the second pass


# ----------------------------------------------------------------------------- trackers


def test_the_iou_tracker_follows_a_moving_box_through_a_look_alike_and_a_gap():
    """A box moving right by 0.05 a frame, started mid-clip; a more confident distractor on
    every frame beside its path; the target missed on frame 6 (the track keeps its prediction, score
    0) and found again after."""
    from sparrow_plugin.tsf.trackers import IoUVelocityTracker, Tracker

    truth = torch.stack([torch.tensor([0.1 + 0.05 * t, 0.4, 0.3 + 0.05 * t, 0.6]) for t in range(10)])
    distractor = truth + torch.tensor([0.0, 0.25, 0.0, 0.25])
    detections = [(torch.stack([distractor[t], truth[t]]), torch.tensor([0.9, 0.8])) for t in range(10)]
    detections[6] = (distractor[6][None], torch.tensor([0.9]))
    tracker = IoUVelocityTracker()
    assert isinstance(tracker, Tracker)
    track = tracker.track(None, 4, truth[4], detections)
    assert torch.allclose(track.boxes, truth, atol=1e-5)  # frame 6 predicted where it was
    assert track.scores.tolist() == pytest.approx([0.8] * 4 + [1.0, 0.8, 0.0, 0.8, 0.8, 0.8])


def _tiny_grounding_dino(folder, seed: int = 0):
    """A tiny GroundingDINO and its processor (a BERT word-piece tokenizer, 256 px) saved to
    ``folder``, as save_pretrained writes a released one."""
    from transformers import (
        BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
        GroundingDinoProcessor, SwinConfig,
    )

    from sparrow_plugin.data.synthetic import COLOURS, SHAPES

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "the", "big", "small", *COLOURS, *SHAPES]
    (folder / "vocab.txt").write_text("\n".join(words))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 256, "longest_edge": 256}), tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=256, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=10, max_text_len=16, num_feature_levels=4,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_grounding_dino_runs_end_to_end_on_a_tiny_configuration(tmp_path):
    """The detector of the detect + track source, loaded from a folder with transformers'
    zero-shot detection classes: boxes of a phrase on one frame."""
    from sparrow_plugin.errors import CheckpointError
    from sparrow_plugin.tsf.detect import GroundingDinoDetector

    detector = GroundingDinoDetector(_tiny_grounding_dino(tmp_path / "dino"), box_threshold=0.0, text_threshold=0.0)
    boxes, scores = detector.detect(torch.rand(3, 120, 160), "The red circle.")
    assert boxes.shape == (10, 4) and scores.shape == (10,)
    assert bool((boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] >= boxes[:, :2]).all())
    assert torch.equal(scores, scores.sort(descending=True).values)
    with pytest.raises(CheckpointError, match="no detector here"):
        GroundingDinoDetector(tmp_path / "absent")


def test_detect_and_track_builds_a_track_per_expression_and_records_its_detector(tmp_path, synthetic_root):
    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.tsf.builder import build_track_cache

    dino = _tiny_grounding_dino(tmp_path / "dino")
    count = build_track_cache(synthetic_root, "valid_u", tmp_path / "cache", source="detect+track", detector=str(dino), accelerator="cpu", devices=1)
    expressions = MeViSDataset(synthetic_root, "valid_u", image_size=32).expressions
    assert count == len(expressions)
    tracks = TrackCache(tmp_path / "cache", {}).read()
    for expression in expressions:
        track = tracks[f"{expression.video}/{expression.exp_id}"]
        assert len(track) == len(expression.frames) and bool(((track.scores >= 0) & (track.scores <= 1)).all())
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["producer"]["source"] == "detect+track" and len(manifest["producer"]["detector"]["digest"]) == 64
    from sparrow_plugin.decoder.build import build_sam2

    torch.save({"model": build_sam2("sam2.1_hiera_tiny128").state_dict()}, tmp_path / "sam2.pt")  # an official checkpoint's layout
    sam2_cache = tmp_path / "sam2_cache"
    count = build_track_cache(synthetic_root, "valid_u", sam2_cache, source="detect+track", detector=str(dino), tracker="sam2",
                              sam2_config="sam2.1_hiera_tiny128", sam2_checkpoint=str(tmp_path / "sam2.pt"), accelerator="cpu", devices=1)
    assert count == len(expressions)
    assert json.loads((sam2_cache / "manifest.json").read_text())["producer"]["tracker"]["name"] == "sam2"
    other = _tiny_grounding_dino(tmp_path / "other", seed=1)
    with pytest.raises(DatasetError, match=r"producer\.detector\.digest"):
        build_track_cache(synthetic_root, "valid_u", tmp_path / "cache", source="detect+track", detector=str(other), accelerator="cpu", devices=1)
    with pytest.raises(DatasetError, match=r"producer\.detector\.box_threshold: 0\.35 in the cache, 0\.5 here"):
        build_track_cache(synthetic_root, "valid_u", tmp_path / "cache", source="detect+track", detector=str(dino), box_threshold=0.5,
                          accelerator="cpu", devices=1)


def _moving_shape_clip(generator: torch.Generator, num_frames: int, size: int = 128):
    """(T, 3, size, size) frames and (T, size, size) masks: one bright circle or square
    (radius 10-16 px) moving in a straight line at 3-6 px a frame over dark noise."""
    import math

    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    frames = (0.1 + 0.05 * torch.randn(num_frames, 3, size, size, generator=generator)).clamp(0, 1)
    radius, speed, angle = (float(v) for v in torch.rand(3, generator=generator) * torch.tensor([6, 3, 2 * math.pi]) + torch.tensor([10, 3, 0]))
    velocity = (speed * math.cos(angle), speed * math.sin(angle))
    margin = radius + 6
    start = [margin - min(0.0, v * (num_frames - 1)) for v in velocity]
    end = [size - margin - max(0.0, v * (num_frames - 1)) for v in velocity]
    cx, cy = (low + (high - low) * float(torch.rand(1, generator=generator)) for low, high in zip(start, end))
    circle = bool(torch.randint(2, (1,), generator=generator))
    colour = torch.rand(3, generator=generator) * 0.6 + 0.2
    colour[torch.randint(3, (1,), generator=generator)] = 1.0
    dx = xs - (cx + velocity[0] * torch.arange(num_frames).view(-1, 1, 1))
    dy = ys - (cy + velocity[1] * torch.arange(num_frames).view(-1, 1, 1))
    masks = dx**2 + dy**2 <= radius**2 if circle else (dx.abs() <= radius) & (dy.abs() <= radius)
    return torch.where(masks[:, None], colour.view(1, 3, 1, 1), frames), masks


def test_the_sam2_tracker_follows_a_moving_object_forward_and_backward():
    """A tiny SAM2 trained here for 150 steps (2-frame clips, the box on either frame) and
    the tracker on held-out 8-frame clips, prompted on the first and on a middle frame:
    mask-box IoU above 0.8 on every frame. This checks the tracker's whole path (the box
    prompt, propagation both ways, each frame's mask box in order); whether SAM2's memory
    picks the right one of several objects needs real SAM2 weights (a tiny SAM2 trained for
    seconds segments the one bright object whatever the box)."""
    import math

    from torchvision.ops import box_iou

    from sparrow_plugin.data.mevis import normalised_boxes
    from sparrow_plugin.decoder import SAM2VideoDecoder
    from sparrow_plugin.decoder.build import build_sam2
    from sparrow_plugin.losses import mask_bce_loss, mask_dice_loss, presence_loss
    from sparrow_plugin.tsf.trackers import SAM2BoxTracker

    decoder = SAM2VideoDecoder(build_sam2("sam2.1_hiera_tiny128"), mode="track").train()
    steps, batch = 150, 4
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        video, masks = (torch.stack(parts) for parts in zip(*(_moving_shape_clip(generator, 2) for _ in range(batch))))
        cond = torch.randint(2, (batch,), generator=generator)
        boxes = normalised_boxes(masks)[torch.arange(batch), cond] * 128
        out = decoder(video, None, boxes=boxes.view(batch, 1, 4), cond_frame=cond)
        loss = mask_bce_loss(out.mask_logits, masks) + mask_dice_loss(out.mask_logits, masks) + presence_loss(out.object_logits, masks)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimizer.step()
        schedule.step()

    tracker = SAM2BoxTracker("sam2.1_hiera_tiny128", state_dict=decoder.sam.state_dict())
    for seed in range(1000, 1005):
        video, masks = _moving_shape_clip(torch.Generator().manual_seed(seed), 8)
        truth = normalised_boxes(masks[None])[0]
        for start in (0, 4):
            track = tracker.track(video, start, truth[start], None)
            overlap = box_iou(track.boxes, truth).diagonal()
            assert bool((overlap > 0.8).all()), f"clip {seed}, prompted on frame {start}: IoU {[round(v, 3) for v in overlap.tolist()]}"


def test_the_sam2_tracker_prompts_the_box_and_reports_masks_boxes(synthetic_root):
    """The SAM2 box tracker on a tiny SAM2 (untrained, so no claim on tracking quality):
    a track over every frame, boxes in [0, 1], scores SAM2's presence (0 on empty masks)."""
    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.decoder.build import build_sam2
    from sparrow_plugin.tsf.trackers import SAM2BoxTracker, Tracker

    torch.manual_seed(0)
    tracker = SAM2BoxTracker("sam2.1_hiera_tiny128", state_dict=build_sam2("sam2.1_hiera_tiny128").state_dict())
    assert isinstance(tracker, Tracker)
    dataset = MeViSDataset(synthetic_root, "valid_u", image_size=128)
    expression = next(e for e in dataset.expressions if e.kind == "appearance")
    item = dataset._load(expression, 0)
    start = int(item["object_visible"][0].nonzero()[0])
    track = tracker.track(item["frames"], start, item["object_boxes"][0, start], None)
    assert len(track) == item["frames"].shape[0]
    assert bool(((track.boxes >= 0) & (track.boxes <= 1)).all() and ((track.scores >= 0) & (track.scores <= 1)).all())
