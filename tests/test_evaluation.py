"""Benchmark protocols and `sparrow eval`, on fixtures in each benchmark's exact layout with
values worked out by hand."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sparrow_plugin.cli import main
from sparrow_plugin.evaluation import evaluate_davis17, evaluate_mevis, evaluate_ref_davis17
from sparrow_plugin.metrics.davis import db_statistics, decay_bins, unsupervised_scores

HEIGHT, WIDTH = 24, 32  # radius ceil(0.008 * 40) = 1


def square(top, left, size=6, shape=(HEIGHT, WIDTH)):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def write_png(path, labels, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([value for i in range(256) for value in ((i * 40) % 256, (i * 90) % 256, (i * 150) % 256)])
    image.save(path)


# ----------------------------------------------------------------------------- DAVIS statistics


def test_decay_bins_share_edges():
    # linspace(1, 4, 5) = 1, 1.75, 2.5, 3.25, 4 -> rounded (halves up) 1, 2, 3, 3, 4 -> minus 1
    assert decay_bins(4) == [(0, 1), (1, 2), (2, 2), (2, 3)]


def test_statistics_past_256_frames():
    """300 frames, the first 100 perfect: edges 0, 75, 150, 224, 299, so the first bin is all
    1 and the last all 0. The reference's uint8 edges wrap 299 to 43 and get a NaN decay."""
    values = np.r_[np.ones(100), np.zeros(200)]
    assert decay_bins(300) == [(0, 75), (75, 150), (150, 224), (224, 299)]
    mean, recall, decay = db_statistics(values)
    assert mean == pytest.approx(1 / 3) and recall == pytest.approx(1 / 3) and decay == 1.0


def test_recall_counts_frames_above_one_half():
    mean, recall, decay = db_statistics(np.array([0.5, 0.6, 0.9, 0.2]))
    # bins of 4 frames: (0,1) (1,2) (2,2) (2,3) -> first mean 0.55, last 0.55
    assert (mean, recall, decay) == (pytest.approx(0.55), 0.5, pytest.approx(0.0))


def test_hungarian_matching_swaps_ids_and_ignores_void():
    left, right = square(4, 2), square(4, 20)
    gt = np.stack([np.stack([left] * 3), np.stack([right] * 3)])
    stray = np.zeros((3, HEIGHT, WIDTH), bool)
    stray[:, 20:, :4] = True
    # prediction id 1 is the right object, id 2 the left one, id 3 a stray region that is void
    predicted = np.stack([gt[1], gt[0], stray])
    void = stray.copy()
    j, f, matched = unsupervised_scores(gt, predicted, void)
    assert matched == [1, 0]
    assert np.array_equal(j, np.ones((2, 3))) and np.array_equal(f, np.ones((2, 3)))


# ----------------------------------------------------------------------------- MeViS folders


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


@pytest.fixture
def mevis_fixture(tmp_path):
    """valid_u with two videos of 3 frames:

    v1 has objects a (anno 0, a square) and b (anno 1, another square, absent on frame 2);
    expressions: 0 refers to a, 1 to a and b (multi-object: the union), 2 to nothing.
    v2 has object c (anno 2); expression 0 refers to it.
    """
    gt_root, pred = tmp_path / "mevis", tmp_path / "pred"
    frames = ["00000", "00001", "00002"]
    a = [square(2, 2), square(2, 3), square(2, 4)]
    b = [square(12, 20), square(12, 20), None]
    c = [square(8, 8), square(8, 8), square(8, 8)]
    meta = {
        "videos": {
            "v1": {"frames": frames, "expressions": {
                "0": {"exp": "the Left  square", "obj_id": [0], "anno_id": [0]},
                "1": {"exp": "both squares", "obj_id": [0, 1], "anno_id": [0, 1]},
                "2": {"exp": "the circle", "obj_id": [], "anno_id": []},
            }},
            "v2": {"frames": frames, "expressions": {"0": {"exp": "the square", "obj_id": [2], "anno_id": [2]}}},
        }
    }
    masks = {"0": [rle(m) for m in a], "1": [rle(m) if m is not None else None for m in b], "2": [rle(m) for m in c]}
    split = gt_root / "valid_u"
    split.mkdir(parents=True)
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    (split / "mask_dict.json").write_text(json.dumps(masks))
    return gt_root, pred, frames, a, b, c


def test_mevis_folder_scores_every_expression_by_hand(mevis_fixture):
    gt_root, pred, frames, a, b, c = mevis_fixture
    for t, name in enumerate(frames):
        write_png(pred / "v1" / "0" / f"{name}.png", a[t] * 255)  # exact: J = F = 1
        # the union of a and b, predicted as a alone on frames 0 and 1 (J = 36/72), exact on
        # frame 2 where b is absent; F: b's boundary is far from everything predicted
        write_png(pred / "v1" / "1" / f"{name}.png", a[t] * 255)
        write_png(pred / "v1" / "2" / f"{name}.png", np.zeros((HEIGHT, WIDTH)))  # no target, empty: 1
    # v2/0: frame 1's PNG is corrupt -> the expression scores 0 and is listed
    for t, name in enumerate(frames):
        write_png(pred / "v2" / "0" / f"{name}.png", c[t] * 255)
    (pred / "v2" / "0" / "00001.png").write_bytes(b"not a png")
    write_png(pred / "v9" / "0" / "00000.png", np.zeros((HEIGHT, WIDTH)))  # a video the benchmark lacks

    report = evaluate_mevis(pred, gt_root, "valid_u", progress=False)
    per_sample = {row["sample"]: row for row in report.per_sample}
    assert per_sample["v1/0"]["J"] == 1.0 and per_sample["v1/0"]["F"] == 1.0
    assert per_sample["v1/1"]["J"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    # F on frames 0, 1: P = 1 (a's boundary is matched), R = 1/2 of the union's boundary
    # pixels (a and b have equal boundaries), F = 2 * 1 * 0.5 / 1.5 = 2/3; frame 2 exact
    assert per_sample["v1/1"]["F"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert per_sample["v1/2"]["J"] == 1.0 and per_sample["v1/2"]["F"] == 1.0
    assert per_sample["v2/0"] == {"sample": "v2/0", "kind": "all", "J": 0.0, "F": 0.0}
    expected_j = (1 + 2 / 3 + 1 + 0) / 4
    expected_f = (1 + 7 / 9 + 1 + 0) / 4
    assert report.results["J"] == pytest.approx(expected_j) and report.results["F"] == pytest.approx(expected_f)
    assert report.results["expressions"] == 4 and report.results["missing"] == 1
    problems = {p.sample: p for p in report.problems}
    assert "00001.png: not a readable PNG" in problems["v2/0"].message and problems["v2/0"].scored_zero
    assert not problems["v9"].scored_zero and "no such video" in problems["v9"].message


def test_mevis_missing_frames_and_folders_score_zero_and_are_named(mevis_fixture):
    gt_root, pred, frames, a, b, c = mevis_fixture
    for name in frames[:2]:  # frame 00002 never written: a frame-count mismatch
        write_png(pred / "v1" / "0" / f"{name}.png", np.zeros((HEIGHT, WIDTH)))
    write_png(pred / "v2" / "0" / "00000.png", np.zeros((HEIGHT + 1, WIDTH)))  # wrong size
    for name in frames[1:]:
        write_png(pred / "v2" / "0" / f"{name}.png", np.zeros((HEIGHT, WIDTH)))
    report = evaluate_mevis(pred, gt_root, "valid_u", progress=False)
    problems = {p.sample: p.message for p in report.problems}
    assert "2 of the video's 3 frames predicted; missing 00002" in problems["v1/0"]
    assert problems["v1/1"].endswith("v1/1: missing") and problems["v1/2"].endswith("v1/2: missing")
    assert "32x25 pixels, the ground truth is 32x24" in problems["v2/0"]
    assert report.results["J"] == 0.0 and report.results["missing"] == 4


def test_sparrow_eval_command_prints_and_writes_the_report(mevis_fixture, tmp_path, capsys):
    gt_root, pred, frames, a, b, c = mevis_fixture
    for video, exp_id, masks in (("v1", "0", a), ("v1", "1", a), ("v1", "2", [None] * 3), ("v2", "0", c)):
        for t, name in enumerate(frames):
            write_png(pred / video / exp_id / f"{name}.png", (masks[t] if masks[t] is not None else np.zeros((HEIGHT, WIDTH))) * 255)
    out = tmp_path / "report.json"
    main(["eval", "--benchmark", "mevis", "--pred", str(pred), "--gt", str(gt_root), "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["results"]["J"] == pytest.approx((1 + 2 / 3 + 1 + 1) / 4)
    assert report["problems"] == [] and len(report["per_sample"]) == 4
    assert "J&F" in printed and "scored 0" not in printed


def test_sparrow_eval_refuses_a_split_without_masks(tmp_path, capsys):
    split = tmp_path / "mevis" / "valid"
    split.mkdir(parents=True)
    (split / "meta_expressions.json").write_text(json.dumps({"videos": {"v": {"frames": ["0"], "expressions": {"0": {"exp": "x"}}}}}))
    (tmp_path / "pred").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--benchmark", "mevis", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "mevis"), "--split", "valid"])
    assert exit_info.value.code == 2
    assert "scored by the benchmark's server" in capsys.readouterr().err


# ----------------------------------------------------------------------------- DAVIS 2017 folders


def write_davis(root, sequences, annotations="Annotations_unsupervised"):
    """sequences: {name: (T, H, W) uint8 labels}; writes the DAVIS 2017 layout."""
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    for name, labels in sequences.items():
        for t, frame in enumerate(labels):
            write_png(root / annotations / "480p" / name / f"{t:05d}.png", frame, palette=True)


def labels_of(*objects):
    """(T, H, W) uint8 labels from (T, H, W) bool objects, id k + 1 for object k."""
    labels = np.zeros(objects[0].shape, np.uint8)
    for k, mask in enumerate(objects):
        labels[mask] = k + 1
    return labels


def test_davis_unsupervised_border_objects_and_a_missing_sequence(tmp_path):
    # "border": two objects, one touching the image's right and bottom edges; "gone": one object
    frames = 4
    touching = np.stack([square(HEIGHT - 6, WIDTH - 6)] * frames)
    inner = np.stack([square(2, 2)] * frames)
    gt = {"border": labels_of(inner, touching), "gone": labels_of(np.stack([square(5, 5)] * frames))}
    gt["border"][:, 0, WIDTH // 2] = 255  # a void pixel, predicted as object 2: ignored
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, gt)
    swapped = labels_of(touching, inner)  # ids swapped: the matching pairs them anyway
    swapped[:, 0, WIDTH // 2] = 2
    for t in range(frames):
        write_png(pred / "border" / f"{t:05d}.png", swapped[t], palette=True)
    report = evaluate_davis17(pred, davis, "unsupervised", "val", progress=False)
    # three objects: two perfect, "gone" scored 0 -> means 2/3; recall 2/3; decay 0
    assert report.results["J-Mean"] == pytest.approx(2 / 3) and report.results["F-Mean"] == pytest.approx(2 / 3)
    assert report.results["J&F-Mean"] == pytest.approx(2 / 3) and report.results["J-Recall"] == pytest.approx(2 / 3)
    assert report.results["J-Decay"] == 0.0 and report.results["objects"] == 3
    assert [p.sample for p in report.problems] == ["gone"]


def test_davis_semi_supervised_skips_first_and_last_frames(tmp_path):
    frames = 5
    target = np.stack([square(3, 3)] * frames)
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, {"seq": labels_of(target)}, annotations="Annotations")
    for t in range(frames):
        wrong = t in (0, frames - 1)  # never scored
        write_png(pred / "seq" / f"{t:05d}.png", labels_of(target[t:t + 1])[0] * (0 if wrong else 1), palette=True)
    report = evaluate_davis17(pred, davis, "semi-supervised", "val", progress=False)
    assert report.results["J&F-Mean"] == 1.0 and report.problems == []


def test_davis_decay_on_a_sequence_of_more_than_256_frames(tmp_path):
    frames = 260
    target = np.zeros((frames, 8, 8), bool)
    target[:, 2:6, 2:6] = True
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, {"long": labels_of(target)})
    predicted = target.copy()
    predicted[130:] = False  # lost halfway: first bin (0..65) perfect, last (194..259) 0
    for t in range(frames):
        write_png(pred / "long" / f"{t:05d}.png", predicted[t].astype(np.uint8), palette=True)
    report = evaluate_davis17(pred, davis, "unsupervised", "val", progress=False)
    assert report.results["J-Decay"] == 1.0 and report.results["J-Mean"] == pytest.approx(0.5)


def test_davis_too_many_ids_scores_the_sequence_zero(tmp_path):
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, {"seq": labels_of(np.stack([square(3, 3)] * 2))})
    for t in range(2):
        labels = np.zeros((HEIGHT, WIDTH), np.uint8)
        labels[0, 0] = 21
        write_png(pred / "seq" / f"{t:05d}.png", labels, palette=True)
    report = evaluate_davis17(pred, davis, progress=False)
    assert report.results["J&F-Mean"] == 0.0
    assert "id 21 used; the unsupervised task allows at most 20 ids" in report.problems[0].message


def test_ref_davis17_is_the_mean_of_the_four_annotator_sets(tmp_path):
    frames = 3
    a, b = np.stack([square(2, 2)] * frames), np.stack([square(12, 20)] * frames)
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, {"seq": labels_of(a, b)})
    # sets 1-3 find both objects (one with ids swapped); set 4 only object a: 1/2
    for name, objects in (("anno_0", (a, b)), ("anno_1", (b, a)), ("anno_2", (a, b)), ("anno_3", (a,))):
        for t in range(frames):
            write_png(pred / name / "seq" / f"{t:05d}.png", labels_of(*objects)[t], palette=True)
    report = evaluate_ref_davis17(pred, davis, progress=False)
    # J and F of a missed object: the empty prediction against b: J = 0, F = 0
    assert report.results["anno_3/J&F-Mean"] == pytest.approx(0.5)
    assert report.results["J&F-Mean"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert report.results["objects"] == 8


def test_ref_davis17_names_the_missing_annotator_set(tmp_path):
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, {"seq": labels_of(np.stack([square(2, 2)] * 2))})
    for name in ("Davis17_annot1", "Davis17_annot2", "Davis17_annot2_full_video"):
        (pred / name).mkdir(parents=True)
    with pytest.raises(Exception, match="missing Davis17_annot1_full_video"):
        evaluate_ref_davis17(pred, davis, progress=False)


# ----------------------------------------------------------------------------- VidSTG / HC-STVG


def test_tube_scores_by_hand():
    from sparrow_plugin.metrics.stvg import tube_scores

    gt_boxes = {t: [0, 0, 10, 10] for t in range(2, 6)}  # gt span [2, 6)
    half = [0, 0, 10, 5]  # IoU 0.5 with the gt box
    pred_boxes = {t: [0, 0, 10, 10] if t < 4 else half for t in range(0, 5)}  # pred span [0, 5): 2 and 3 exact, 4 half
    scores = tube_scores((2, 6), gt_boxes, (0, 5), pred_boxes)
    # intersection frames 2, 3, 4 (3); union 0..5 (6): tIoU 0.5, vIoU (1 + 1 + 0.5) / 6
    # gt_vIoU over frames 2..5: (1 + 1 + 0.5 + 0 (no box on 5)) / 4
    assert scores == {"tIoU": 0.5, "vIoU": pytest.approx(2.5 / 6), "gt_vIoU": pytest.approx(2.5 / 4)}
    assert tube_scores((2, 6), gt_boxes, None, {}) == {"tIoU": 0.0, "vIoU": 0.0, "gt_vIoU": 0.0}


def test_stvg_summary_per_query_type_with_a_missing_prediction():
    from sparrow_plugin.metrics.stvg import STVGSummary

    summary = STVGSummary()
    summary.add("declarative", {"tIoU": 1.0, "vIoU": 0.6, "gt_vIoU": 0.6})
    summary.add("declarative", {"tIoU": 0.5, "vIoU": 0.4, "gt_vIoU": 0.8})
    summary.add("interrogative", None)  # scored 0, counted
    results = summary.compute()
    assert results["declarative/m_vIoU"] == pytest.approx(0.5)
    assert results["declarative/vIoU@0.5"] == 0.5 and results["declarative/vIoU@0.3"] == 1.0
    assert results["interrogative/missing"] == 1 and results["interrogative/m_tIoU"] == 0.0
    assert results["m_tIoU"] == pytest.approx(0.5) and results["queries"] == 3 and results["missing"] == 1
    assert results["gt_vIoU@0.5"] == pytest.approx(2 / 3)


def test_mask_to_box_drops_blobs_under_20_pixels():
    from sparrow_plugin.metrics.stvg import mask_to_box

    mask = np.zeros((30, 40), bool)
    mask[5:10, 5:10] = True  # 25 pixels: kept
    mask[20:24, 30:34] = True  # 16 pixels: dropped
    assert mask_to_box(mask) == [5.0, 5.0, 10.0, 10.0]
    assert mask_to_box(np.zeros((4, 4), bool)) is None


def test_ref_davis17_from_per_expression_masks(tmp_path, capsys):
    """sparrow predict's layout (a folder per expression) merged into the four sets by the
    converted meta_expressions.json: expression obj * 4 + set."""
    frames = 3
    a, b = np.stack([square(2, 2)] * frames), np.stack([square(12, 20)] * frames)
    davis, pred = tmp_path / "DAVIS", tmp_path / "pred"
    write_davis(davis, {"seq": labels_of(a, b)})
    names = [f"{t:05d}" for t in range(frames)]
    expressions = {str(i): {"exp": f"expression {i}", "obj_id": str(i // 4 + 1)} for i in range(8)}
    meta = tmp_path / "meta_expressions.json"
    meta.write_text(json.dumps({"videos": {"seq": {"frames": names, "expressions": expressions}}}))
    for exp_id in range(8):
        if exp_id == 7:  # object 2 in set 3: not predicted -> that set finds a alone: 1/2
            continue
        obj = a if exp_id < 4 else b
        if exp_id == 5:  # object 2 in set 1 predicted as a's square: overlaps object 1, which keeps it
            obj = a
        for t, name in enumerate(names):
            write_png(pred / "seq" / str(exp_id) / f"{name}.png", obj[t] * 255)
    main(["eval", "--benchmark", "ref-davis17", "--pred", str(pred), "--gt", str(davis), "--expressions", str(meta), "--quiet"])
    printed = capsys.readouterr().out
    line = next(row for row in printed.splitlines() if row.strip().startswith("J&F-Mean"))
    # sets 0 and 2 perfect; set 1: b's prediction lost under a (lower id wins) -> 1/2; set 3: 1/2
    assert float(line.split()[-1]) == pytest.approx((1 + 0.5 + 1 + 0.5) / 4, abs=1e-4)
    assert "Davis17_annot2_full_video/seq/7" in printed and "object 2 left empty" in printed


def test_a_submission_with_missing_masks_is_refused(mevis_fixture, tmp_path):
    from sparrow_plugin.data.mevis import MeViSDataset
    from sparrow_plugin.errors import DatasetError
    from sparrow_plugin.evaluation import write_submission

    gt_root, pred, frames, a, b, c = mevis_fixture
    expressions = MeViSDataset(gt_root, "valid_u", require_frames=False).expressions
    for e in expressions:
        for name in e.frames:
            write_png(pred / e.video / e.exp_id / f"{name}.png", np.zeros((HEIGHT, WIDTH)))
    (pred / "v2" / "0" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"1 mask\(s\) of the split are missing, so no submission was written: .*v2/0/00002\.png"):
        write_submission(pred, expressions, tmp_path / "submission.zip")
    assert not (tmp_path / "submission.zip").exists()


# ----------------------------------------------------------------------------- ReVOS


def test_revos_layout_and_protocol_by_hand(tmp_path):
    """ReVOS as shipped: one folder, meta_expressions_valid_.json with type_id, one
    mask_dict.json, mask_dict_foreground.json. Two frames of 24x32; object a is a 6x6
    square; the video's foreground is 100 pixels on each frame."""
    from sparrow_plugin.data.revos import ReVOSDataset
    from sparrow_plugin.evaluation import evaluate_revos

    root, pred = tmp_path / "ReVOS", tmp_path / "pred"
    frames = ["00000", "00001"]
    a = square(2, 2)
    foreground = np.zeros((HEIGHT, WIDTH), bool)
    foreground[:10, :10] = True  # 100 pixels
    meta = {"videos": {"v": {"frames": frames, "expressions": {
        "0": {"exp": "the square", "obj_id": [0], "anno_id": [0], "type_id": 0},
        "1": {"exp": "what a child would draw", "obj_id": [0], "anno_id": [0], "type_id": 1},
    }}}}
    root.mkdir()
    (root / "JPEGImages").mkdir()
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps({"0": [rle(a), rle(a)]}))
    (root / "mask_dict_foreground.json").write_text(json.dumps({"v": {"masks_rle": [rle(foreground), rle(foreground)]}}))
    dataset = ReVOSDataset(root, "valid", require_frames=False)
    assert [e.kind for e in dataset.expressions] == ["referring", "reasoning"]

    # referring: exact on both frames. J = F = A = R = 1
    for name in frames:
        write_png(pred / "v" / "0" / f"{name}.png", a * 255)
    # reasoning: a plus a stray 4x5 block (20 pixels) outside it on frame 0, exact on frame 1
    stray = a.copy()
    stray[18:22, 20:25] = True
    write_png(pred / "v" / "1" / "00000.png", stray * 255)
    write_png(pred / "v" / "1" / "00001.png", a * 255)
    report = evaluate_revos(pred, root, "valid", progress=False)
    rows = {row["sample"]: row for row in report.per_sample}
    assert rows["v/0"] == {"sample": "v/0", "kind": "referring", "J": 1.0, "F": 1.0, "A": 1.0, "R": 1.0}
    reasoning = rows["v/1"]
    assert reasoning["J"] == pytest.approx((36 / 56 + 1) / 2)
    assert reasoning["A"] == pytest.approx((1 - 20 / (HEIGHT * WIDTH) + 1) / 2)
    assert reasoning["R"] == pytest.approx((1 - 20 / (100 + 1e-6) + 1) / 2)  # 0.9
    # overall: the mean of the two kinds' means (one expression each)
    assert report.results["J"] == pytest.approx((1 + reasoning["J"]) / 2)
    assert report.results["R"] == pytest.approx((1 + 0.9) / 2, abs=1e-6)
    assert report.results["reasoning/J&F"] == pytest.approx((reasoning["J"] + reasoning["F"]) / 2)
    # sparrow test with benchmark: revos scores its predicted masks the same way
    from sparrow_plugin.data.datamodule import ReferringVideoDataModule

    data = ReferringVideoDataModule(root, layout="revos", test_split="valid", benchmark="revos")
    assert data.score_predictions(pred).results == report.results and data.protocol_deviations() == []


def test_lvvis_and_revos_layouts_in_the_data_module(tmp_path):
    from sparrow_plugin.data.datamodule import ReferringVideoDataModule

    root = tmp_path / "LVVIS"
    (root / "train" / "JPEGImages" / "v").mkdir(parents=True)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(root / "train" / "JPEGImages" / "v" / "00000.jpg")
    meta = {"videos": {"v": {"frames": ["00000"], "expressions": {"0": {"exp": "a cat", "obj_id": [1], "anno_id": [1]}}}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps({"1": [rle(square(3, 3))]}))
    data = ReferringVideoDataModule(root, layout="lv-vis", image_size=16)
    item = data.dataset("train", "train")[0]
    assert item["full_masks"].sum() == 36 and item["query"] == "a cat"
    missing = ReferringVideoDataModule.missing_inputs("fit", {"root": str(tmp_path / "ReVOS"), "layout": "revos", "val_split": "valid"})
    assert missing and "without JPEGImages and meta_expressions_train_.json" in missing[0]
    # ReVOS keeps every split in one folder: its kinds are found there (per-kind reporting)
    revos = tmp_path / "ReVOS"
    (revos / "JPEGImages" / "v").mkdir(parents=True)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(revos / "JPEGImages" / "v" / "00000.jpg")
    expressions = {str(k): {"exp": f"thing {k}", "obj_id": [1], "anno_id": [1], "type_id": k} for k in (0, 1)}
    (revos / "meta_expressions_valid_.json").write_text(json.dumps({"videos": {"v": {"frames": ["00000"], "expressions": expressions}}}))
    (revos / "mask_dict.json").write_text(json.dumps({"1": [rle(square(3, 3))]}))
    assert ReferringVideoDataModule(revos, layout="revos", val_split="valid", test_split="valid").kinds() == ["reasoning", "referring"]
