"""VidSTG / HC-STVG data in TubeDETR's preprocessed JSON, and scoring a predictions file, on
tiny mp4 videos written with PyAV (frame k is grey 6 * k) and values worked out by hand."""

import copy
import json

import av
import numpy as np
import pytest
import torch

from sparrow_plugin.data.stvg import STVGDataset, sample_frame_ids
from sparrow_plugin.errors import DatasetError
from sparrow_plugin.evaluation_stvg import evaluate_stvg

HEIGHT, WIDTH, VIDEO_FPS = 24, 32, 25
GREY_STEP = 6  # frame k is filled with grey 6 * k
TOLERANCE = 3  # codec loss on a flat frame (yuv420p round trip); neighbours are 6 apart


def write_video(path, frames: int):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"g": "10"}  # keyframes every 10 frames at most: a seek lands before frame 23
        for k in range(frames):
            image = np.full((HEIGHT, WIDTH, 3), GREY_STEP * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def entry(video_id, original, path, start, end, tube_start, tube_end, caption, target_id, qtype="declarative"):
    record = {
        "video_id": video_id,
        "original_video_id": original,
        "video_path": path,
        "fps": VIDEO_FPS,
        "width": WIDTH,
        "height": HEIGHT,
        "start_frame": start,
        "end_frame": end,
        "tube_start_frame": tube_start,
        "tube_end_frame": tube_end,
        "caption": caption,
        "target_id": target_id,
    }
    if qtype is not None:
        record["qtype"] = qtype
    return record


ANNOTATIONS = {
    "videos": [
        # frames 3, 5, 10, 15, 20, 25, 30, 35; tube [12, 31) holds 15 .. 30: positions 3 .. 6
        entry(1, "orig_a", "vidor/a.mp4", 3, 40, 12, 31, "an adult in red grabs a child.", 1),
        # frames 23, 25, 30, 35 (decoded after a seek); tube [25, 36): positions 1 .. 3
        entry(2, "orig_a", "vidor/a.mp4", 23, 40, 25, 36, "what does the adult in red grab?", 2, "interrogative"),
        # frames 0, 5, .., 25; the video has 20 frames only
        entry(3, "orig_b", "b.mp4", 0, 30, 0, 10, "a dog runs.", 0),
        # no qtype (HC-STVG): declarative; the video file is missing; frames 0, 5
        entry(4, "orig_c", "missing.mp4", 0, 10, 0, 10, "a man sits down.", 0, qtype=None),
    ],
    "trajectories": {
        "orig_a": {
            "1": {str(f): {"bbox": [f - 12, 2, 10, 8]} for f in range(12, 31)},
            "2": {str(f): {"bbox": [0, 0, 16, 12]} for f in range(25, 36)},
        },
        "orig_b": {"0": {str(f): {"bbox": [4, 4, 8, 8]} for f in range(0, 10)}},
        "orig_c": {"0": {str(f): {"bbox": [0, 0, 10, 10]} for f in range(0, 10)}},
    },
}


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def stvg(tmp_path_factory):
    root = tmp_path_factory.mktemp("stvg")
    videos = root / "videos"
    (videos / "vidor").mkdir(parents=True)
    write_video(videos / "vidor" / "a.mp4", 40)
    write_video(videos / "b.mp4", 20)
    return write_json(root / "test.json", ANNOTATIONS), videos


# ----------------------------------------------------------------------------- sampling


def test_sampling_follows_tubedetr():
    # rate 5/25: the first frame, then each frame where int(f / 5) steps up
    assert sample_frame_ids(3, 40, 25, 5) == [3, 5, 10, 15, 20, 25, 30, 35]
    assert sample_frame_ids(0, 12, 25, 5) == [0, 5, 10]
    assert sample_frame_ids(0, 4, 2, 5) == [0, 1, 2, 3]  # a video slower than fps: every frame


def test_queries_frame_ids_spans_and_boxes(stvg):
    annotations, videos = stvg
    dataset = STVGDataset(annotations, videos)
    assert len(dataset) == 4
    first, second, third, fourth = (dataset.query(i) for i in range(4))
    assert first.frame_ids == (3, 5, 10, 15, 20, 25, 30, 35)
    assert first.gt_span == (3, 7)
    # xywh [f - 12, 2, 10, 8] of frames 15, 20, 25, 30 -> xyxy
    assert first.gt_boxes == {3: [3, 2, 13, 10], 4: [8, 2, 18, 10], 5: [13, 2, 23, 10], 6: [18, 2, 28, 10]}
    assert second.frame_ids == (23, 25, 30, 35) and second.gt_span == (1, 4)
    assert second.gt_boxes == {1: [0, 0, 16, 12], 2: [0, 0, 16, 12], 3: [0, 0, 16, 12]}
    assert third.frame_ids == (0, 5, 10, 15, 20, 25) and third.gt_span == (0, 2)
    assert third.gt_boxes == {0: [4, 4, 12, 12], 1: [4, 4, 12, 12]}
    assert [q.qtype for q in (first, second, third, fourth)] == ["declarative", "interrogative", "declarative", "declarative"]
    assert [q.video_id for q in (first, second, third, fourth)] == ["1", "2", "3", "4"]


def test_tube_between_sampled_frames_is_an_empty_span(tmp_path):
    data = copy.deepcopy(ANNOTATIONS)
    data["videos"] = [entry(1, "orig_a", "a.mp4", 3, 40, 11, 14, "x.", 1)]  # no sampled frame in [11, 14)
    query = STVGDataset(write_json(tmp_path / "one.json", data), None).query(0)
    assert query.gt_span == (3, 3) and query.gt_boxes == {}


def test_hcstvg_list_layout(tmp_path):
    """TubeDETR's HC-STVG *_proc.json: clip [0, frame_count - 1) at frame_count / 20 fps,
    one box per tube frame from tube_start_frame on."""
    data = [
        {
            "video_id": 7,
            "video_path": "7.mp4",
            "frame_count": 200,  # 10 fps: every other frame of [0, 199)
            "width": WIDTH,
            "height": HEIGHT,
            "tube_start_frame": 11,
            "tube_end_frame": 21,
            "trajectory": [[k, 0, 5, 5] for k in range(10)],
            "caption": "the man in black turns around.",
        }
    ]
    query = STVGDataset(write_json(tmp_path / "hc.json", data), None).query(0)
    assert query.frame_ids == tuple(range(0, 199, 2))
    assert query.gt_span == (6, 11)  # frames 12, 14, 16, 18, 20
    assert query.gt_boxes[6] == [1, 0, 6, 5] and query.gt_boxes[10] == [9, 0, 14, 5]
    assert query.qtype == "declarative" and query.video_id == "7"


# ----------------------------------------------------------------------------- items


def test_item_decodes_exactly_the_sampled_frames(stvg):
    annotations, videos = stvg
    dataset = STVGDataset(annotations, videos)
    item = dataset[0]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (8, HEIGHT, WIDTH, 3)
    means = item["frames"].float().mean(dim=(1, 2, 3))
    assert means.tolist() == pytest.approx([GREY_STEP * f for f in (3, 5, 10, 15, 20, 25, 30, 35)], abs=TOLERANCE)
    assert item["frame_ids"] == [3, 5, 10, 15, 20, 25, 30, 35]
    assert item["gt_span"] == (3, 7) and item["gt_boxes"][4] == [8, 2, 18, 10]
    assert (item["index"], item["video_id"], item["qtype"]) == (0, "1", "declarative")
    # from frame 23 on: the decoder seeks to an earlier keyframe and must skip to 23
    means = dataset[1]["frames"].float().mean(dim=(1, 2, 3))
    assert means.tolist() == pytest.approx([GREY_STEP * f for f in (23, 25, 30, 35)], abs=TOLERANCE)


def test_item_resized(stvg):
    annotations, videos = stvg
    frames = STVGDataset(annotations, videos, image_size=16)[1]["frames"]
    assert frames.dtype == torch.float32 and frames.shape == (4, 3, 16, 16)
    assert frames.mean(dim=(1, 2, 3)).tolist() == pytest.approx([GREY_STEP * f / 255 for f in (23, 25, 30, 35)], abs=TOLERANCE / 255)


def test_conversation(stvg):
    annotations, videos = stvg
    dataset = STVGDataset(annotations, videos)
    assert dataset[0]["conversation"] == [
        {"role": "user", "content": "an adult in red grabs a child. When and where does this happen in the video?"},
        {"role": "assistant", "content": "From frame 3 to frame 6: [BOX] [SEG]."},
    ]
    assert dataset[1]["conversation"] == [
        {"role": "user", "content": "what does the adult in red grab?"},
        {"role": "assistant", "content": "From frame 1 to frame 3: [BOX] [SEG]."},
    ]


def test_short_and_missing_videos(stvg):
    annotations, videos = stvg
    dataset = STVGDataset(annotations, videos)  # nothing is opened before an item is read
    with pytest.raises(DatasetError, match=r"query 2 \(video_id '3'\): the video has 20 frames, the clip ends at frame 30") as error:
        dataset[2]
    assert error.value.path == videos / "b.mp4"
    with pytest.raises(DatasetError, match=r"query 3 \(video_id '4'\): video file not found") as error:
        dataset[3]
    assert error.value.path == videos / "missing.mp4"


def test_unreadable_video(stvg, tmp_path):
    annotations, _ = stvg
    (tmp_path / "vidor").mkdir()
    (tmp_path / "vidor" / "a.mp4").write_bytes(b"not an mp4 at all" * 20)
    with pytest.raises(DatasetError, match="video_id '1'.*PyAV cannot open the video") as error:
        STVGDataset(annotations, tmp_path)[0]
    assert error.value.path == tmp_path / "vidor" / "a.mp4"


# ----------------------------------------------------------------------------- annotation errors


def test_annotation_errors(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(DatasetError, match="file not found") as error:
        STVGDataset(missing, None)
    assert error.value.path == missing

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON") as error:
        STVGDataset(broken, None)
    assert error.value.path == broken

    data = copy.deepcopy(ANNOTATIONS)
    del data["videos"][1]["tube_end_frame"]
    path = write_json(tmp_path / "keys.json", data)
    with pytest.raises(DatasetError, match=r"videos\[1\] \(video_id 2\): missing keys tube_end_frame") as error:
        STVGDataset(path, None)
    assert error.value.path == path

    data = copy.deepcopy(ANNOTATIONS)
    del data["trajectories"]["orig_a"]["1"]["20"]
    path = write_json(tmp_path / "hole.json", data)
    with pytest.raises(DatasetError, match=r"video_id 1\): sampled frame 20 lies in the tube \[12, 31\) but trajectories\['orig_a'\]\['1'\] has no box") as error:
        STVGDataset(path, None)
    assert error.value.path == path

    path = write_json(tmp_path / "flat.json", {"videos": ANNOTATIONS["videos"]})
    with pytest.raises(DatasetError, match="expected") as error:
        STVGDataset(path, None)
    assert error.value.path == path


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_stvg(stvg, tmp_path):
    annotations, _ = stvg
    predictions = {
        # gt positions 3..6; predicted 2..5: tIoU 3/5. IoUs: 3 -> 1, 4 -> 1/3 (shifted by 5 px),
        # 5 -> no box, 6 -> 1 (outside the predicted span). vIoU (1 + 1/3) / 5 = 4/15,
        # gt_vIoU (1 + 1/3 + 1) / 4 = 7/12
        "1": {"span": [2, 6], "boxes": {"2": [0, 0, 5, 5], "3": [3, 2, 13, 10], "4": [13, 2, 23, 10], "6": [18, 2, 28, 10]}},
        "2": {"span": [1, "x"], "boxes": {}},  # unreadable: scored 0, listed
        # exact span; IoUs 1 and 1/3: tIoU 1, vIoU 2/3, gt_vIoU 2/3
        "3": {"span": [0, 2], "boxes": {"0": [4, 4, 12, 12], "1": [8, 4, 16, 12]}},
        # "4" missing: scored 0, listed
        "99": {"span": None, "boxes": {}},  # not in the annotations: listed, not scored
    }
    report = evaluate_stvg(write_json(tmp_path / "pred.json", predictions), annotations, progress=False)
    assert report.benchmark == "stvg test"
    rows = {row["sample"]: row for row in report.per_sample}
    assert list(rows) == ["1", "2", "3", "4"]
    assert (rows["1"]["tIoU"], rows["1"]["vIoU"], rows["1"]["gt_vIoU"]) == pytest.approx((3 / 5, 4 / 15, 7 / 12))
    assert (rows["3"]["tIoU"], rows["3"]["vIoU"], rows["3"]["gt_vIoU"]) == pytest.approx((1, 2 / 3, 2 / 3))
    assert rows["2"]["qtype"] == "interrogative" and (rows["2"]["tIoU"], rows["2"]["vIoU"], rows["2"]["gt_vIoU"]) == (0, 0, 0)
    assert (rows["4"]["qtype"], rows["4"]["tIoU"], rows["4"]["gt_vIoU"]) == ("declarative", 0, 0)

    results = report.results
    # declarative: queries 1, 3, 4 -> (3/5 + 1 + 0) / 3, (4/15 + 2/3 + 0) / 3, (7/12 + 2/3 + 0) / 3
    assert results["declarative/m_tIoU"] == pytest.approx(1.6 / 3)
    assert results["declarative/m_vIoU"] == pytest.approx(14 / 45)
    assert results["declarative/gt_vIoU"] == pytest.approx(5 / 12)
    assert results["declarative/vIoU@0.3"] == pytest.approx(1 / 3)  # 4/15 is below 0.3
    assert results["declarative/gt_vIoU@0.5"] == pytest.approx(2 / 3)
    assert (results["declarative/queries"], results["declarative/missing"]) == (3, 1)
    assert results["interrogative/m_tIoU"] == 0 and (results["interrogative/queries"], results["interrogative/missing"]) == (1, 1)
    assert results["m_tIoU"] == pytest.approx(0.4)
    assert results["m_vIoU"] == pytest.approx(7 / 30)
    assert results["gt_vIoU"] == pytest.approx(5 / 16)
    assert (results["queries"], results["missing"]) == (4, 2)

    problems = {p.sample: p for p in report.problems}
    assert set(problems) == {"2", "4", "99"}
    assert problems["2"].scored_zero and "span must be null or two integers" in problems["2"].message
    assert problems["4"].scored_zero and "no prediction for video_id '4'" in problems["4"].message
    assert not problems["99"].scored_zero and "not in" in problems["99"].message


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"span": [0, 2], "boxes": {"0": [4, 4, 12]}}, "must be four numbers"),
        ({"span": [0, 2], "boxes": {"zero": [4, 4, 12, 12]}}, "not a sampled-frame position"),
        ({"span": [2, 0], "boxes": {}}, "span must be null or two integers"),
        ({"span": [0, 2]}, "expected"),
    ],
)
def test_evaluate_stvg_unreadable_entries(stvg, tmp_path, entry, reason):
    annotations, _ = stvg
    predictions = {"1": entry, "2": {"span": None, "boxes": {}}, "3": {"span": [0, 2], "boxes": {}}, "4": {"span": [0, 2], "boxes": {}}}
    report = evaluate_stvg(write_json(tmp_path / "pred.json", predictions), annotations, progress=False)
    assert [p.sample for p in report.problems] == ["1"] and reason in report.problems[0].message
    # "3" and "4" predict their span exactly (tIoU 1) without boxes; "1" and "2" score 0
    assert report.results["m_tIoU"] == pytest.approx(0.5) and report.results["missing"] == 1


def test_evaluate_stvg_refuses_a_broken_predictions_file(stvg, tmp_path):
    annotations, _ = stvg
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    with pytest.raises(DatasetError, match="not valid JSON") as error:
        evaluate_stvg(broken, annotations, progress=False)
    assert error.value.path == broken
    listed = write_json(tmp_path / "list.json", [{"span": [0, 1]}])
    with pytest.raises(DatasetError, match="expected a JSON object") as error:
        evaluate_stvg(listed, annotations, progress=False)
    assert error.value.path == listed


def test_video_of_another_size_than_annotated(stvg, tmp_path):
    annotations, videos = stvg
    data = copy.deepcopy(ANNOTATIONS)
    data["videos"][0]["width"] = 64
    path = write_json(tmp_path / "size.json", data)
    with pytest.raises(DatasetError, match="frames are 32x24, the annotation says 64x24") as error:
        STVGDataset(path, videos)[0]
    assert error.value.path == videos / "vidor" / "a.mp4"


def test_sparrow_eval_scores_a_predictions_file(stvg, tmp_path, capsys):
    from sparrow_plugin.cli import main

    annotations, _ = stvg
    predictions = write_json(tmp_path / "pred.json", {"3": {"span": [0, 2], "boxes": {"0": [4, 4, 12, 12], "1": [8, 4, 16, 12]}}})
    out = tmp_path / "report.json"
    main(["eval", "--benchmark", "stvg", "--pred", str(predictions), "--gt", str(annotations), "--out", str(out), "--quiet"])
    report = json.loads(out.read_text())
    # one query of four predicted (tIoU 1): the three missing score 0, counted and listed
    assert report["results"]["m_tIoU"] == pytest.approx(1 / 4) and report["results"]["missing"] == 3
    assert "3 sample(s) scored 0" in capsys.readouterr().out
