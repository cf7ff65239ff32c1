"""The synthetic benchmark and the MeViS-layout loader, including bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sparrow_plugin.data import MeViSDataset, ReferringVideoDataModule, collate_referring
from sparrow_plugin.data.mevis import rle_runs
from sparrow_plugin.data.synthetic import EXPRESSION_KINDS, MOTION_PHRASES, SyntheticConfig, generate_benchmark
from sparrow_plugin.errors import DatasetError

from .conftest import SMALL


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path, synthetic_root):
    again = generate_benchmark(tmp_path / "again", seed=0, config=SMALL)
    assert _files(again) == _files(synthetic_root)


def test_other_seed_differs(tmp_path, synthetic_root):
    other = generate_benchmark(tmp_path / "other", seed=1, config=SMALL)
    assert _files(other) != _files(synthetic_root)


def test_layout_and_expression_kinds(tmp_path):
    root = generate_benchmark(tmp_path, seed=3, config=SyntheticConfig(train_videos=40, valid_videos=2))
    for split in ("train", "valid_u", "valid_hard"):
        for name in ("meta_expressions.json", "mask_dict.json", "boxes_coco.json"):
            assert (root / split / name).is_file()
    meta = json.loads((root / "train" / "meta_expressions.json").read_text())
    kinds = {e["kind"] for v in meta["videos"].values() for e in v["expressions"].values()}
    assert kinds == set(EXPRESSION_KINDS)
    no_target = [e for v in meta["videos"].values() for e in v["expressions"].values() if e["kind"] == "no_target"]
    assert all(e["anno_id"] == [] for e in no_target)
    coco = json.loads((root / "train" / "boxes_coco.json").read_text())
    assert coco["annotations"] and all(len(a["bbox"]) == 4 and a["iscrowd"] == 0 for a in coco["annotations"])


def test_the_hard_split_holds_what_tracking_from_one_frame_gets_wrong(tmp_path):
    """valid_hard: a late target is out of the first two frames and in at the end; an
    occluded one is hidden whole mid-clip and seen before and after; a crossed one loses
    area mid-clip, as the other passes over it. Each is the only object of its colour and
    shape."""
    root = generate_benchmark(tmp_path, seed=5, config=SyntheticConfig(train_videos=1, valid_videos=1, hard_videos=9))
    meta = json.loads((root / "valid_hard" / "meta_expressions.json").read_text())["videos"]
    masks = json.loads((root / "valid_hard" / "mask_dict.json").read_text())
    seen = []
    for video in meta.values():
        (expression,) = video["expressions"].values()
        (target,) = expression["obj_id"]
        area = [0 if rle is None else int(mask_utils.area(rle)) for rle in masks[str(expression["anno_id"][0])]]
        mid = len(area) // 2
        if expression["kind"] == "late_entry":
            assert area[0] == area[1] == 0 and area[-1] > 0
        elif expression["kind"] == "occlusion":
            assert area[mid] == 0 and area[0] > 0 and area[-1] > 0
        else:
            assert expression["kind"] == "crossing" and area[mid] < area[0]
        looks = [(o["colour"], o["shape"]) for o in video["objects"].values()]
        assert looks.count(looks[target]) == 1 and expression["exp"] == "the {} {}".format(*looks[target])
        seen.append(expression["kind"])
    assert seen == ["late_entry", "occlusion", "crossing"] * 3


def test_the_cross_split_holds_identical_copies_whose_paths_cross(tmp_path):
    """valid_cross: two copies alike to the pixel move opposite ways, apart on the first and
    last frames, one over the other mid-clip; each is named by its motion alone."""
    root = generate_benchmark(tmp_path, seed=2, config=SyntheticConfig(train_videos=1, valid_videos=1, hard_videos=1, cross_videos=6))
    meta = json.loads((root / "valid_cross" / "meta_expressions.json").read_text())["videos"]
    masks = json.loads((root / "valid_cross" / "mask_dict.json").read_text())
    assert len(meta) == 6
    for video in meta.values():
        expressions = list(video["expressions"].values())
        assert [e["kind"] for e in expressions] == ["crossing_identity"] * 2
        first, second = (video["objects"][str(e["obj_id"][0])] for e in expressions)
        assert [first[k] for k in ("colour", "shape", "size")] == [second[k] for k in ("colour", "shape", "size")]
        assert {first["motion"], second["motion"]} in ({"left", "right"}, {"up", "down"})
        assert expressions[0]["exp"] == f"the {first['colour']} {first['shape']} {MOTION_PHRASES[first['motion']]}"
        rles = [masks[str(e["anno_id"][0])] for e in expressions]
        mid = len(rles[0]) // 2
        for t in (0, len(rles[0]) - 1):  # apart: no pixel in common
            assert mask_utils.area(mask_utils.merge([rles[0][t], rles[1][t]], intersect=True)) == 0
        areas = [[0 if r is None else int(mask_utils.area(r)) for r in rle] for rle in rles]
        assert min(areas[0][mid - 1], areas[0][mid]) < areas[0][0]  # the lower copy is covered while they cross


def test_loader_reads_union_masks_and_resizes(synthetic_root):
    dataset = MeViSDataset(synthetic_root, "valid_u", image_size=64)
    item = next(dataset[i] for i in range(len(dataset)) if dataset.expressions[i].kind == "multi")
    frames, masks, full = item["frames"], item["masks"], item["full_masks"]
    assert frames.shape == (8, 3, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert masks.shape == (8, 64, 64) and full.shape == (8, 120, 160)
    assert item["object_masks"].shape[0] == len(item["obj_ids"]) >= 2
    assert torch.equal(item["object_masks"].any(dim=0), masks)  # the union of the referred objects
    assert masks.any() and full.any() and item["original_size"] == (120, 160)


def test_expressions_are_normalised(tmp_path, synthetic_root):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    meta_path = root / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    first = next(iter(meta["videos"].values()))["expressions"]["0"]
    first["exp"] = "  The   RED\tcircle "
    meta_path.write_text(json.dumps(meta))
    dataset = MeViSDataset(root, "valid_u", image_size=32)
    assert dataset.expressions[0].text == "the red circle"


def test_datamodule_batches(synthetic_root):
    dm = ReferringVideoDataModule(synthetic_root, image_size=32, batch_size=3, train_frames=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch.frames.shape == (3, 4, 3, 32, 32) and batch.masks.shape == (3, 4, 32, 32)
    assert set(dm.kinds()) <= set(EXPRESSION_KINDS)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def broken_root(tmp_path, synthetic_root):
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    return root


def _first_frame(root):
    return sorted((root / "valid_u" / "JPEGImages").glob("*/*.jpg"))[0]


def test_corrupt_jpeg_names_the_file(broken_root):
    frame = _first_frame(broken_root)
    frame.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset = MeViSDataset(broken_root, "valid_u", image_size=32)
    index = next(i for i, e in enumerate(dataset.expressions) if e.video == frame.parent.name)
    with pytest.raises(DatasetError, match="corrupt JPEG") as error:
        dataset[index]
    assert str(frame) in str(error.value)


def test_missing_frame_names_the_file(broken_root):
    frame = _first_frame(broken_root)
    frame.unlink()
    with pytest.raises(DatasetError, match="missing frame") as error:
        MeViSDataset(broken_root, "valid_u", image_size=32)
    assert str(frame) in str(error.value)


def test_rle_size_mismatch_names_file_and_sizes(broken_root):
    mask_path = broken_root / "valid_u" / "mask_dict.json"
    masks = json.loads(mask_path.read_text())
    anno_id, per_frame = next((k, v) for k, v in masks.items() if v[0] is not None)
    per_frame[0] = _rle(np.ones((240, 320), dtype=np.uint8))  # a well-formed RLE of another frame size
    mask_path.write_text(json.dumps(masks))
    dataset = MeViSDataset(broken_root, "valid_u", image_size=32)
    index = next(i for i, e in enumerate(dataset.expressions) if int(anno_id) in e.anno_ids)
    with pytest.raises(DatasetError, match=r"RLE size \[240, 320\] disagrees with the frame size \[120, 160\]") as error:
        dataset[index]
    assert "mask_dict.json" in str(error.value) and f"anno_id {anno_id}" in str(error.value)


def test_rle_counts_of_another_size_are_refused(broken_root):
    """The right ``size`` with the counts of a 60x80 mask: pycocotools would decode it
    without a word (the mask shifted and wrapped); it is refused, naming where it is."""
    mask_path = broken_root / "valid_u" / "mask_dict.json"
    masks = json.loads(mask_path.read_text())
    anno_id, per_frame = next((k, v) for k, v in masks.items() if v[2] is not None)
    small = np.zeros((60, 80), dtype=np.uint8)
    small[10:30, 20:50] = 1
    per_frame[2] = {"size": [120, 160], "counts": _rle(small)["counts"]}
    mask_path.write_text(json.dumps(masks))
    dataset = MeViSDataset(broken_root, "valid_u", image_size=32)
    index = next(i for i, e in enumerate(dataset.expressions) if int(anno_id) in e.anno_ids)
    with pytest.raises(DatasetError, match=r"RLE counts cover 4800 pixels, its size \[120, 160\] has 19200") as error:
        dataset[index]
    assert str(mask_path) in str(error.value) and f"anno_id {anno_id}, frame '00002'" in str(error.value)


def test_rle_runs_match_pycocotools():
    """Our reading of the compressed counts adds up to the mask and alternates as it does."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        height, width = rng.integers(1, 60, 2)
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8) * (trial % 5 != 0)
        runs = rle_runs(_rle(mask)["counts"].encode())
        assert sum(runs) == height * width
        values = np.repeat(np.arange(len(runs)) % 2, runs)
        np.testing.assert_array_equal(values, mask.flatten(order="F"))
    assert rle_runs(b"0") == [0] and rle_runs(b"1" + bytes([48 + 0x20])) is None  # cut off mid-run


def test_expression_without_anno_id_in_a_split_with_masks_is_refused(broken_root):
    """Without anno_id the expression would silently count as having no target."""
    meta_path = broken_root / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = next(iter(meta["videos"]))
    del meta["videos"][video]["expressions"]["0"]["anno_id"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"video '{video}' expression '0': no 'anno_id'"):
        MeViSDataset(broken_root, "valid_u", image_size=32)


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


def test_empty_expression_names_video_and_id(broken_root):
    meta_path = broken_root / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    video = next(iter(meta["videos"]))
    meta["videos"][video]["expressions"]["0"]["exp"] = "   "
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"video '{video}' expression '0': empty expression text"):
        MeViSDataset(broken_root, "valid_u", image_size=32)


def test_broken_json_and_missing_split(broken_root):
    (broken_root / "valid_u" / "meta_expressions.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        MeViSDataset(broken_root, "valid_u")
    with pytest.raises(DatasetError, match="split folder not found"):
        MeViSDataset(broken_root, "nope")


def test_collate_refuses_mixed_lengths(synthetic_root):
    dataset = MeViSDataset(synthetic_root, "valid_u", image_size=16)
    a, b = dataset[0], dataset[1]
    b = {**b, "frames": b["frames"][:3]}
    with pytest.raises(ValueError, match="different lengths"):
        collate_referring([a, b])


@pytest.fixture
def hidden_root(tmp_path, synthetic_root):
    """A copy where the first referred object of the first train expression is absent
    (null masks) in every frame but the last two."""
    root = tmp_path / "hidden"
    shutil.copytree(synthetic_root, root)
    meta = json.loads((root / "train" / "meta_expressions.json").read_text())
    masks_path = root / "train" / "mask_dict.json"
    masks = json.loads(masks_path.read_text())
    video, entry = next(iter(meta["videos"].items()))
    expression = next(e for e in entry["expressions"].values() if len(e["anno_id"]) == 1)
    anno_id = str(expression["anno_id"][0])
    masks[anno_id] = [None] * (len(masks[anno_id]) - 2) + masks[anno_id][-2:]
    masks_path.write_text(json.dumps(masks))
    return root, video, expression["exp"], len(masks[anno_id])


def test_training_prompts_a_frame_where_the_target_is_and_has_target_comes_from_the_video(hidden_root):
    root, video, text, total = hidden_root
    dataset = MeViSDataset(root, "train", image_size=32, num_frames=2, random_frames=True)
    index = next(i for i, e in enumerate(dataset.expressions) if e.video == video and e.text == text.lower())
    prompted = set()
    for _ in range(30):
        item = dataset[index]
        clip_frame = int(item["frame_indices"][item["cond_frame"]])
        assert clip_frame >= total - 2  # the prompted frame shows the target
        assert item["object_visible"][0, item["cond_frame"]]
        prompted.add(clip_frame)
    assert prompted == {total - 2, total - 1}  # drawn at random among them
    first_frame_only = MeViSDataset(root, "train", image_size=32, num_frames=1)[index]
    assert not first_frame_only["masks"].any() and first_frame_only["has_target"]  # the video has it, frame 0 does not
    assert first_frame_only["cond_frame"] == 0  # evaluation: the model decides its own prompting


def test_boxes_and_visibility_follow_the_masks(synthetic_root):
    dataset = MeViSDataset(synthetic_root, "valid_u", image_size=32)
    item = dataset[next(i for i, e in enumerate(dataset.expressions) if len(e.anno_ids) == 1)]
    boxes, visible, full = item["object_boxes"][0], item["object_visible"][0], item["full_masks"].numpy()
    height, width = item["original_size"]
    assert visible.tolist() == full.reshape(len(full), -1).any(axis=1).tolist()
    for t in np.flatnonzero(visible.numpy()):
        ys, xs = np.nonzero(full[t])
        expected = torch.tensor([xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height])
        torch.testing.assert_close(boxes[t], expected.float())


def test_host_frames_are_read_apart_from_the_decoder_window(synthetic_root):
    from functools import partial

    from sparrow_plugin.frames import square_size, uniform_frames
    from sparrow_plugin.interfaces import FrameRequest

    request = FrameRequest(sample=partial(uniform_frames, count=4), size=partial(square_size, size=48))
    dm = ReferringVideoDataModule(synthetic_root, image_size=32, train_frames=2, batch_size=2)
    dm.set_frame_request(request)
    batch = next(iter(dm.train_dataloader()))
    total = len(dm.dataset("train", "train").expressions[0].frames)
    assert batch.frames.shape[1] == 2 and batch.llm_frames.shape[1:] == (4, 3, 48, 48)
    expected = uniform_frames(total, 4)
    assert len(set(expected)) == 4  # no frame repeats when the clip is long enough
    assert batch.llm_frame_indices.tolist() == [expected] * 2
    assert uniform_frames(3, 5) == [0, 1, 2, 2, 2]  # only a shorter clip repeats its last frame
    assert dm.dataset("valid_u", "eval") is not dm.dataset("valid_u", "train")  # cached per (split, role)


def test_test_refuses_a_split_without_masks(tmp_path, synthetic_root):
    root = tmp_path / "nomasks"
    shutil.copytree(synthetic_root, root)
    (root / "valid_u" / "mask_dict.json").unlink()
    with pytest.raises(DatasetError, match="no masks.*writes its submission zip"):
        ReferringVideoDataModule(root, image_size=32).test_dataloader()
