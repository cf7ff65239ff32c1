"""The Ref-YouTube-VOS layout (Ref-YouTube-VOS, Ref-DAVIS17) on a fixture written as shipped."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.datamodule import ReferringVideoDataModule
from sparrow_plugin.data.refytvos import RefYouTubeVOSDataset, ref_davis17_expression_sets
from sparrow_plugin.errors import DatasetError

HEIGHT, WIDTH = 24, 32
FRAMES = ["00000", "00005", "00010"]  # every 5th frame, as Ref-YouTube-VOS train ships


def _palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [0] * (256 * 3 - 9))
    image.save(path)


@pytest.fixture
def refytvos(tmp_path):
    """train: video "a" with objects 1 (a square moving right, gone on the last frame) and
    2 (a still square); valid: video "b" without annotations."""
    root = tmp_path / "ref-youtube-vos"
    for split, video in (("train", "a"), ("valid", "b")):
        for t, name in enumerate(FRAMES):
            frame = root / split / "JPEGImages" / video / f"{name}.jpg"
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((HEIGHT, WIDTH, 3), 40 * t, np.uint8)).save(frame)
    for t, name in enumerate(FRAMES):
        labels = np.zeros((HEIGHT, WIDTH), np.uint8)
        if t < 2:
            labels[2:6, 2 + 4 * t : 6 + 4 * t] = 1
        labels[14:20, 20:26] = 2
        _palette_png(root / "train" / "Annotations" / "a" / f"{name}.png", labels)
    meta = {
        "train": {"a": {"frames": FRAMES, "expressions": {"0": {"exp": "The  moving square", "obj_id": "1"}, "1": {"exp": "the still square", "obj_id": "2"}}}},
        "valid": {"b": {"frames": FRAMES, "expressions": {"0": {"exp": "a dog", "obj_id": "1"}}}},
    }
    for split, videos in meta.items():
        path = root / "meta_expressions" / split / "meta_expressions.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"videos": videos}))
    return root


def test_items_hold_the_object_of_the_expression(refytvos):
    dataset = RefYouTubeVOSDataset(refytvos, "train", image_size=16)
    assert [e.text for e in dataset.expressions] == ["the moving square", "the still square"]
    moving = dataset[0]
    assert moving["full_masks"].shape == (3, HEIGHT, WIDTH)
    assert moving["full_masks"].flatten(1).sum(dim=1).tolist() == [16, 16, 0]
    assert moving["object_visible"].tolist() == [[True, True, False]]
    assert moving["has_target"] is True and moving["obj_ids"] == [1]
    # box of frame 1: columns 6..9, rows 2..5 -> pixel edges (6, 2, 10, 6) over (32, 24)
    assert torch.allclose(moving["object_boxes"][0, 1], torch.tensor([6 / 32, 2 / 24, 10 / 32, 6 / 24]))
    still = dataset[1]
    assert still["full_masks"].flatten(1).sum(dim=1).tolist() == [36, 36, 36]
    batch = collate_referring([moving, still])
    assert batch.masks.shape == (2, 3, 16, 16)


def test_training_draws_the_prompted_frame_where_the_target_is_visible(refytvos):
    dataset = RefYouTubeVOSDataset(refytvos, "train", image_size=16, num_frames=2, random_frames=True)
    assert dataset.visible_frames(dataset.expressions[0]).tolist() == [True, True, False]
    for _ in range(10):
        item = dataset[0]
        assert item["frame_indices"][item["cond_frame"]].item() in (0, 1)


def test_a_split_without_annotations_is_for_the_server(refytvos):
    dataset = RefYouTubeVOSDataset(refytvos, "valid", image_size=16)
    assert not dataset.has_masks
    item = dataset[0]
    assert item["masks"] is None and item["full_masks"] is None and item["frames"].shape == (3, 3, 16, 16)


def test_the_data_module_reads_the_layout(refytvos):
    data = ReferringVideoDataModule(refytvos, layout="ref-youtube-vos", val_split="train", test_split="train", image_size=16)
    assert len(data.dataset("train", "eval")) == 2
    # scored here per expression, which is not Ref-DAVIS17's protocol: results say so
    assert any("sparrow eval --benchmark ref-davis17" in d for d in data.protocol_deviations())
    assert ReferringVideoDataModule.missing_inputs("test", {"root": str(refytvos), "layout": "ref-youtube-vos", "test_split": "train"}) == []
    assert not ReferringVideoDataModule(refytvos, layout="ref-youtube-vos", test_split="valid").test_split_has_masks()
    missing = ReferringVideoDataModule.missing_inputs("test", {"root": str(refytvos / "nowhere"), "layout": "ref-youtube-vos", "test_split": "valid"})
    assert len(missing) == 1 and "without valid/JPEGImages and meta_expressions/valid/meta_expressions.json" in missing[0]


def test_missing_or_corrupt_annotations_name_the_file(refytvos):
    absent = refytvos / "train" / "Annotations" / "a" / "00010.png"
    absent.unlink()
    with pytest.raises(DatasetError, match=r"00010\.png: missing annotation of frame '00010' of video 'a'"):
        RefYouTubeVOSDataset(refytvos, "train", image_size=16)
    absent.write_bytes(b"not a png")
    dataset = RefYouTubeVOSDataset(refytvos, "train", image_size=16)
    with pytest.raises(DatasetError, match=r"00010\.png: corrupt annotation PNG"):
        dataset[1]


def test_an_object_id_that_is_not_a_number_is_named(refytvos):
    path = refytvos / "meta_expressions" / "train" / "meta_expressions.json"
    meta = json.loads(path.read_text())
    meta["videos"]["a"]["expressions"]["1"]["obj_id"] = "two"
    path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"video 'a' expression '1': obj_id must be an object id"):
        RefYouTubeVOSDataset(refytvos, "train", image_size=16)


def test_ref_davis17_sets_are_four_expressions_per_object(tmp_path):
    path = tmp_path / "meta_expressions.json"
    expressions = {str(i): {"exp": f"e{i}", "obj_id": str(i // 4 + 1)} for i in range(8)}
    path.write_text(json.dumps({"videos": {"v": {"frames": ["0"], "expressions": expressions}}}))
    # object 1: expressions 0-3, object 2: 4-7; set s holds expression obj * 4 + s
    assert ref_davis17_expression_sets(path) == {"v": [["0", "4"], ["1", "5"], ["2", "6"], ["3", "7"]]}
    expressions.pop("7")
    path.write_text(json.dumps({"videos": {"v": {"frames": ["0"], "expressions": expressions}}}))
    with pytest.raises(DatasetError, match="7 expressions, not four per object"):
        ref_davis17_expression_sets(path)


def test_a_tsf_cache_of_a_ref_youtube_vos_split(refytvos, tmp_path):
    from sparrow_plugin.tsf.builder import build_track_cache

    out = tmp_path / "tracks"
    assert build_track_cache(refytvos, "train", out, layout="ref-youtube-vos", accelerator="cpu", devices=1) == 2
    data = ReferringVideoDataModule(refytvos, layout="ref-youtube-vos", image_size=16, tsf_tracks=str(out))
    tracks = data._tracks("train", str(out))
    moving = tracks["a/0"]
    assert len(moving) == 3 and moving.scores.tolist() == [1.0, 1.0, 0.0]  # annotated, annotated, unseen


def test_a_ref_youtube_vos_valid_submission_zip(refytvos, tmp_path):
    import zipfile

    from sparrow_plugin.evaluation import write_submission

    dataset = RefYouTubeVOSDataset(refytvos, "valid", image_size=16)
    pred = tmp_path / "masks"
    for expression in dataset.expressions:
        for name in expression.frames:
            path = pred / expression.video / expression.exp_id / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(path)
    archive = write_submission(pred, dataset.expressions, tmp_path / "submission.zip")
    with zipfile.ZipFile(archive) as opened:
        assert sorted(opened.namelist()) == [f"Annotations/b/0/{name}.png" for name in FRAMES]
