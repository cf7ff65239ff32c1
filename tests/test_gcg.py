"""VideoGCG: the loader, the grounded-conversation metrics and scoring a predictions file, on
fixtures in VideoGLaMM's annotation format with values worked out by hand."""

import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from transformers import BertConfig, BertModel

from sparrow_plugin.data.videogcg import GCG_QUESTION, VideoGCGDataset, decode_rle, encode_rle, phrase_span
from sparrow_plugin.errors import DatasetError
from sparrow_plugin.hosts.word_tokenizer import build_word_tokenizer
from sparrow_plugin.evaluation_gcg import evaluate_gcg
from sparrow_plugin.metrics.gcg import PhraseEmbedder, greedy_volume_matching, score_video, volume_iou

HEIGHT, WIDTH, FRAMES = 24, 32, 3
CAPTION_1 = "A man throws a ball to a dog."  # "man" is [2, 5], "dog" is [25, 28]
CAPTION_2 = "two birds sit on a red fence"  # words: two birds sit on a red fence (0 .. 6)


def square(top, left, size=6, shape=(HEIGHT, WIDTH)):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode()}


# counts of a 24x31 mask, to be labelled 24x32: pycocotools would decode them shifted, without a word
COUNTS_24x31 = rle(square(0, 0, shape=(HEIGHT, 31)))["counts"]


def track(*frames):
    """One RLE (or null) per frame."""
    return [None if frame is None else rle(frame) for frame in frames]


def stack(*frames):
    return np.stack([np.zeros((HEIGHT, WIDTH), dtype=bool) if f is None else f for f in frames])


def gcg_data():
    """Three videos: character spans (given out of caption order, one phrase the union of two
    annotations, one with a null frame); word indices (a list and a bare int, a null frame);
    VideoGLaMM's own style (a word index repeated: one phrase, the union of two masks)."""
    annotations = {
        11: track(square(0, 0), square(0, 0), square(0, 0)),
        12: track(square(0, 10), square(0, 10), None),
        13: track(square(12, 20), square(12, 20), square(12, 20)),
        21: track(square(2, 2), square(2, 2), square(2, 2)),
        22: track(square(16, 16, 8), None, square(16, 16, 8)),
        31: track(square(5, 5), square(5, 5), square(5, 5)),
        32: track(square(5, 20), None, None),
    }
    videos = [
        (1, CAPTION_1, [[25, 28], [2, 5]], [13, [11, 12]]),
        (2, CAPTION_2, [[4, 5, 6], 1], [22, 21]),
        (3, "a cat sleeps", [1, 1], [31, 32]),
    ]
    return {
        "videos": [
            {
                "id": video_id,
                "file_names": [f"v{video_id}/{t:05d}.jpg" for t in range(FRAMES)],
                "width": WIDTH,
                "height": HEIGHT,
                "length": FRAMES,
                "dense_cap": {"caption": caption, "token_pos": token_pos, "mask_id": mask_id},
            }
            for video_id, caption, token_pos, mask_id in videos
        ],
        "annotations": [{"id": anno_id, "segmentations": segmentations} for anno_id, segmentations in annotations.items()],
    }


def predictions():
    """Video 1: "dog" is the ground truth's dog on frames 0 and 1 (IoU 72/108 = 2/3); "person"
    is one of the two squares of "man" (IoU 108/180 = 0.6). Video 2: "red fence" on every
    frame, the fence on two (IoU 128/192 = 2/3); "birds" shifted by 3 columns (18 of 54
    pixels a frame: IoU 1/3). Video 3 has none; video 99 is not in the benchmark."""
    return {
        "1": {
            "caption": "a dog and a person",
            "phrases": ["dog", "person"],
            "masks": [track(square(12, 20), square(12, 20), None), track(*[square(0, 0)] * 3)],
        },
        "2": {"caption": "red fence, birds", "phrases": ["red fence", "birds"], "masks": [track(*[square(16, 16, 8)] * 3), track(*[square(2, 5)] * 3)]},
        "99": {"caption": "?", "phrases": [], "masks": []},
    }


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def gcg_file(tmp_path):
    return write(tmp_path / "video_gcg" / "instruction_data" / "test.json", gcg_data())


def pair(k):
    """A zero-mean direction of the tiny phrase model's embedding space."""
    vector = torch.zeros(32)
    vector[2 * k], vector[2 * k + 1] = 1.0, -1.0
    return vector


@pytest.fixture(scope="module")
def phrase_model(tmp_path_factory):
    """A 1-layer BERT whose output is LayerNorm(word vector): position and token-type
    embeddings are zero, and so are the dense layers feeding each residual (every LayerNorm
    then sees its input alone). Word vectors are zero-mean with unit RMS after LayerNorm, so
    a phrase's embedding is the normalised sum of its words' directions: dog, cat, man,
    person, a, red, fence and birds are orthogonal, puppy = 3 dog + 4 other (cosine 0.6 with
    dog). The pad token has a direction of its own, so pooling over padding would show."""
    folder = tmp_path_factory.mktemp("phrase_model")
    tokenizer = build_word_tokenizer(["dog cat puppy man person a red fence birds"])
    vocab = tokenizer.get_vocab()
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = BertModel(config).eval()
    directions = {"<pad>": 5 * pair(15), "<unk>": pair(14), "</s>": pair(13), "dog": pair(0), "cat": pair(1), "puppy": 3 * pair(0) + 4 * pair(2)}
    directions.update({word: pair(3 + k) for k, word in enumerate(["man", "person", "a", "red", "fence", "birds"])})
    with torch.no_grad():
        for token, vector in directions.items():
            model.embeddings.word_embeddings.weight[vocab[token]] = vector
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        for layer in model.encoder.layer:
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- phrases and the loader


def test_phrase_from_character_spans():
    assert phrase_span(CAPTION_1, [2, 5]) == (2, 5, "man")
    assert phrase_span(CAPTION_1, [25, 28]) == (25, 28, "dog")
    assert phrase_span(CAPTION_2, [3, 9]) == (4, 9, "birds")  # " birds": white space left out
    assert phrase_span(CAPTION_2, [0, 3]) == (0, 3, "two")  # a pair that fits is a span, not word indices 0 and 3


def test_phrase_from_word_indices():
    assert phrase_span(CAPTION_2, [4, 5, 6]) == (17, 28, "a red fence")
    assert phrase_span(CAPTION_2, 1) == (4, 9, "birds")
    assert phrase_span(CAPTION_2, [1]) == (4, 9, "birds")
    assert phrase_span(CAPTION_2, [0, 30]) is None  # 30 > 28 characters, and there are 7 words
    assert phrase_span(CAPTION_2, [7]) is None
    assert phrase_span(CAPTION_2, []) is None
    assert phrase_span(CAPTION_2, "birds") is None


def test_videos_phrases_and_masks(gcg_file, tmp_path):
    dataset = VideoGCGDataset(gcg_file, image_root=tmp_path / "frames")
    assert len(dataset) == 3
    video = dataset.video(0)
    assert video.id == 1 and video.caption == CAPTION_1
    assert video.phrases == ["man", "dog"]  # caption order, not token_pos order
    man, dog = video.masks
    np.testing.assert_array_equal(man, stack(square(0, 0) | square(0, 10), square(0, 0) | square(0, 10), square(0, 0)))
    assert man.sum() == 180 and dog.sum() == 108
    assert video.frame_paths == [tmp_path / "frames" / "v1" / f"{t:05d}.jpg" for t in range(FRAMES)]

    birds_fence = dataset.video(1)
    assert birds_fence.phrases == ["birds", "a red fence"]
    np.testing.assert_array_equal(birds_fence.masks[1], stack(square(16, 16, 8), None, square(16, 16, 8)))

    cat = dataset.video(2)  # token_pos [1, 1]: one phrase, the union of annotations 31 and 32
    assert cat.phrases == ["cat"]
    np.testing.assert_array_equal(cat.masks[0], stack(square(5, 5) | square(5, 20), square(5, 5), square(5, 5)))


def test_item_and_conversation(gcg_file):
    dataset = VideoGCGDataset(gcg_file)
    item = dataset[0]
    assert item["masks"].dtype == torch.bool and item["masks"].shape == (2, FRAMES, HEIGHT, WIDTH)
    assert item["masks"].flatten(1).sum(dim=1).tolist() == [180, 108]
    assert item["index"] == 0 and item["phrases"] == ["man", "dog"] and item["caption"] == CAPTION_1
    assert [str(p) for p in item["frame_paths"]] == ["v1/00000.jpg", "v1/00001.jpg", "v1/00002.jpg"]
    user, assistant = item["conversation"]
    assert user == {
        "role": "user",
        "content": "Could you please give me a detailed description of the video? "
        "Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    }
    assert GCG_QUESTION == user["content"]
    assert assistant == {"role": "assistant", "content": "A <p> man </p> [SEG] throws a ball to a <p> dog </p> [SEG]."}
    assert dataset[1]["conversation"][1]["content"] == "two <p> birds </p> [SEG] sit on <p> a red fence </p> [SEG]"
    assert dataset[2]["conversation"][1]["content"] == "a <p> cat </p> [SEG] sleeps"


def test_rle_compressed_and_uncompressed():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 2:4] = True
    # column-major runs: 9 off (columns 0, 1 and row 0 of column 2), 2 on, 2 off, 2 on, 5 off
    np.testing.assert_array_equal(decode_rle({"size": [4, 5], "counts": [9, 2, 2, 2, 5]}, (4, 5)), mask)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask), (4, 5)), mask)
    with pytest.raises(ValueError, match="cover 15 pixels"):
        decode_rle({"size": [4, 5], "counts": [9, 2, 2, 2]}, (4, 5))


def _broken(tmp_path, change):
    data = gcg_data()
    change(data)
    return write(tmp_path / "broken.json", data)


def test_rle_of_another_size_names_file_and_video(tmp_path):
    def change(data):
        data["annotations"][2]["segmentations"][1] = rle(square(0, 0, shape=(12, 16)))  # annotation 13

    path = _broken(tmp_path, change)
    with pytest.raises(DatasetError) as error:
        VideoGCGDataset(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "video 1" in message and "annotation 13, frame 1" in message
    assert "[12, 16]" in message and "[24, 32]" in message


def test_rle_counts_of_another_size(tmp_path):
    def change(data):
        data["annotations"][0]["segmentations"][2] = {"size": [HEIGHT, WIDTH], "counts": COUNTS_24x31}

    dataset = VideoGCGDataset(_broken(tmp_path, change))
    with pytest.raises(DatasetError, match=r"video 1: annotation 11, frame 2: RLE counts cover 744 pixels"):
        dataset.video(0)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d["videos"][1].pop("dense_cap"), r"video 2: no 'dense_cap'"),
        (lambda d: d["videos"][1]["dense_cap"].pop("mask_id"), r"video 2: 'dense_cap' has no 'mask_id'"),
        (lambda d: d.pop("annotations"), r"expected \{\"videos\""),
        (lambda d: d["videos"][0]["dense_cap"].update(mask_id=[13, [11, 99]]), r"video 1: mask_id 99 has no annotation"),
        (lambda d: d["videos"][0]["dense_cap"].update(token_pos=[[25, 28], [3, 100]]), r"video 1: token_pos\[1\] = \[3, 100\] is neither"),
        (lambda d: d["videos"][0]["dense_cap"].update(token_pos=[[25, 28]]), r"video 1: .* same length .* got 1 and 2"),
        (lambda d: d["videos"][0]["dense_cap"].update(token_pos=[[2, 12], [2, 5]]), r"video 1: the phrases 'man' and 'man throws' overlap"),
        (lambda d: d["annotations"][0]["segmentations"].pop(), r"video 1: annotation 11 has 2 segmentations but the video has 3 frames"),
    ],
)
def test_structure_errors(tmp_path, change, problem):
    path = _broken(tmp_path, change)
    with pytest.raises(DatasetError, match=problem) as error:
        VideoGCGDataset(path)
    assert error.value.path == path


def test_missing_or_invalid_json(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        VideoGCGDataset(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON") as error:
        VideoGCGDataset(tmp_path / "bad.json")
    assert str(error.value).startswith(str(tmp_path / "bad.json"))


# ----------------------------------------------------------------------------- metrics


def test_volume_iou_by_hand():
    man = stack(square(0, 0) | square(0, 10), square(0, 0) | square(0, 10), square(0, 0))  # 180 pixels
    dog = stack(square(12, 20), square(12, 20), square(12, 20))  # 108
    pred = np.stack([stack(*[square(0, 0)] * 3), stack(square(12, 20), square(12, 20), None), np.zeros_like(man)])
    iou = volume_iou(pred, np.stack([man, dog]))
    assert iou.shape == (3, 2) and iou.dtype == np.float64
    np.testing.assert_allclose(iou, [[108 / 180, 0.0], [0.0, 72 / 108], [0.0, 0.0]])
    assert volume_iou(np.zeros((1, 2, 4, 4), bool), np.zeros((1, 2, 4, 4), bool))[0, 0] == 0.0  # empty vs empty
    # intersection and union are summed over frames, not averaged per frame:
    # frame 0 IoU 1 (4 of 4), frame 1 IoU 0 (0 of 12): volume 4/16, not the mean 0.5
    a = np.zeros((1, 2, 4, 4), bool)
    b = np.zeros((1, 2, 4, 4), bool)
    a[0, 0, :1], b[0, 0, :1], b[0, 1, 1:] = True, True, True
    assert volume_iou(a, b)[0, 0] == pytest.approx(4 / 16)


def test_greedy_matching_is_not_hungarian():
    iou = np.array([[0.9, 0.8], [0.8, 0.1]])
    assert greedy_volume_matching(iou) == [(0, 0), (1, 1)]  # mean 0.5
    rows, cols = linear_sum_assignment(iou, maximize=True)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]  # the optimum: mean 0.8
    assert iou.tolist() == [[0.9, 0.8], [0.8, 0.1]]  # the input is left as it was


def test_greedy_matching_order_ties_and_stop():
    iou = np.array([[0.0, 0.3], [0.0, 0.0], [0.2, 0.3]])
    # a tie at 0.3 goes to (0, 1), the first in row-major order; then (2, 0); row 1 has only 0
    assert greedy_volume_matching(iou) == [(0, 1), (2, 0)]
    assert greedy_volume_matching(np.array([[0.4, 0.7, 0.0], [0.6, 0.5, 0.0]])) == [(0, 1), (1, 0)]
    assert greedy_volume_matching(np.zeros((2, 2))) == []
    assert greedy_volume_matching(np.zeros((0, 3))) == []


def _video_1():
    """Video 1's predicted ("dog", "person") and ground-truth ("man", "dog") masks."""
    man = stack(square(0, 0) | square(0, 10), square(0, 0) | square(0, 10), square(0, 0))
    dog = stack(*[square(12, 20)] * 3)
    pred = [stack(square(12, 20), square(12, 20), None), stack(*[square(0, 0)] * 3)]
    return pred, [man, dog]


def test_video_score_and_recall_with_an_injected_similarity():
    pred, gt = _video_1()
    calls = []

    def similarity(predicted, truth):
        calls.append((predicted, truth))
        table = {("dog", "dog"): 1.0, ("person", "man"): 0.5}  # 0.5 is enough: the threshold is >= 0.5
        return np.array([[table.get((p, g), 0.0) for g in truth] for p in predicted])

    score = score_video(pred, gt, ["dog", "person"], ["man", "dog"], similarity)
    assert score.pairs == [(0, 1), (1, 0)]
    assert score.ious == pytest.approx([2 / 3, 0.6])
    assert score.miou == pytest.approx((2 / 3 + 0.6) / 2)
    assert score.matched == 2 and score.gt_phrases == 2
    assert calls == [(["dog", "person"], ["man", "dog"])]  # (predicted, ground truth)

    just_below = score_video(pred, gt, ["dog", "person"], ["man", "dog"], lambda p, g: np.full((2, 2), 0.4999))
    assert just_below.matched == 0 and just_below.miou == pytest.approx(score.miou)
    # a phrase that matches perfectly does not count when its masks' IoU is under 0.5
    shifted = [stack(*[square(12, 23)] * 3)]  # 18 of 54 pixels a frame: IoU 1/3
    low = score_video(shifted, gt[1:], ["dog"], ["dog"], lambda p, g: np.ones((1, 1)))
    assert low.ious == pytest.approx([1 / 3]) and low.matched == 0
    assert score_video(pred, gt, ["dog", "person"], ["man", "dog"]).matched is None
    assert score_video([], gt).miou == 0.0 and score_video([], gt).gt_phrases == 2


def test_phrase_embeddings_of_the_tiny_model(phrase_model):
    embed = PhraseEmbedder(phrase_model)
    vectors = embed.embed(["red fence", "a red fence", "dog"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    # mean over the words only: 2 / sqrt(2 * 3); with the pad token pooled in it would be 2 / 3
    assert vectors[0] @ vectors[1] == pytest.approx(2 / math.sqrt(6), abs=1e-5)
    sims = embed(["dog", "puppy", "person"], ["dog", "cat", "man"])
    np.testing.assert_allclose(sims, [[1.0, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-5)
    np.testing.assert_allclose(PhraseEmbedder(phrase_model).embed(["red fence"]), vectors[:1], atol=1e-6)  # alone, no padding


# ----------------------------------------------------------------------------- scoring a predictions file


def test_evaluate_with_the_tiny_phrase_model(gcg_file, tmp_path, phrase_model):
    path = write(tmp_path / "predictions.json", predictions())
    report = evaluate_gcg(path, gcg_file, phrase_model, progress=False)
    assert report.benchmark == "videogcg test"
    # videos: (2/3 + 0.6) / 2 = 19/30, (2/3 + 1/3) / 2 = 1/2, missing 0 -> 34/90
    assert report.results["mIoU"] == pytest.approx(17 / 45)
    # matched: dog/dog (IoU 2/3, cosine 1); red fence/a red fence (IoU 2/3, cosine 0.82);
    # not person/man (cosine 0), nor birds/birds (IoU 1/3); of 2 + 2 + 1 ground-truth phrases
    assert report.results["recall"] == pytest.approx(2 / 5)
    assert report.results["videos"] == 3 and report.results["missing"] == 1
    assert [(r["sample"], r["matched"], r["gt_phrases"]) for r in report.per_sample] == [("1", 1, 2), ("2", 1, 2), ("3", 0, 1)]
    assert [r["mIoU"] for r in report.per_sample] == pytest.approx([19 / 30, 0.5, 0.0])
    missing, unknown = report.problems
    assert (missing.sample, missing.scored_zero) == ("3", True) and "no prediction" in missing.message and str(path) in missing.message
    assert (unknown.sample, unknown.scored_zero) == ("99", False)
    assert "METEOR and CIDEr are not computed yet" in report.note


def test_evaluate_without_a_phrase_model(gcg_file, tmp_path):
    report = evaluate_gcg(write(tmp_path / "predictions.json", predictions()), gcg_file, None, progress=False)
    assert set(report.results) == {"mIoU", "videos", "missing"}
    assert report.results["mIoU"] == pytest.approx(17 / 45)
    assert report.note.startswith("recall not computed: no phrase model given")
    assert [r["matched"] for r in report.per_sample] == [None, None, None]


def test_evaluate_with_an_injected_similarity(gcg_file, tmp_path):
    path = write(tmp_path / "predictions.json", predictions())
    report = evaluate_gcg(path, gcg_file, None, progress=False, similarity=lambda p, g: np.ones((len(p), len(g))))
    # every pair with IoU >= 0.5 now counts: both of video 1, one of video 2
    assert report.results["recall"] == pytest.approx(3 / 5)
    assert report.results["mIoU"] == pytest.approx(17 / 45)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda e: e["phrases"].append("extra"), "3 phrases but 2 masks"),
        (lambda e: e["masks"][1].pop(), "masks[1] ('birds') has 2 frames, the video has 3 frames"),
        (lambda e: e["masks"][0].__setitem__(1, rle(square(0, 0, shape=(12, 16)))), "frame 1: RLE size [12, 16] differs"),
        (lambda e: e["masks"][0].__setitem__(2, {"size": [HEIGHT, WIDTH], "counts": COUNTS_24x31}), "RLE counts cover 744 pixels"),
        (lambda e: e["masks"][0].__setitem__(0, {"size": [HEIGHT, WIDTH]}), "expected a COCO RLE"),
        (lambda e: e.pop("masks"), "expected {"),
    ],
)
def test_malformed_prediction_scores_zero(gcg_file, tmp_path, change, problem):
    entries = predictions()
    change(entries["2"])
    path = write(tmp_path / "predictions.json", entries)
    report = evaluate_gcg(path, gcg_file, None, progress=False)
    assert report.per_sample[1]["mIoU"] == 0.0
    assert report.results["mIoU"] == pytest.approx(19 / 90)
    assert report.results["missing"] == 2
    listed = [p for p in report.problems if p.sample == "2"]
    assert len(listed) == 1 and listed[0].scored_zero
    assert problem in listed[0].message and listed[0].message.startswith(f"{path}: video '2': ")


def test_predictions_not_json(gcg_file, tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text('{"1": ')
    with pytest.raises(DatasetError, match="not valid JSON") as error:
        evaluate_gcg(path, gcg_file, None, progress=False)
    assert error.value.path == path
    with pytest.raises(DatasetError, match="expected"):
        evaluate_gcg(write(tmp_path / "list.json", [1, 2]), gcg_file, None, progress=False)


def test_sparrow_eval_videogcg(gcg_file, tmp_path, phrase_model, capsys):
    from sparrow_plugin.cli import main

    path = write(tmp_path / "predictions.json", predictions())
    out = tmp_path / "report.json"
    main(["eval", "--benchmark", "videogcg", "--pred", str(path), "--gt", str(gcg_file), "--phrase-model", str(phrase_model), "--out", str(out), "--quiet"])
    report = json.loads(out.read_text())
    assert report["results"]["mIoU"] == pytest.approx(17 / 45) and report["results"]["recall"] == pytest.approx(2 / 5)
    assert "1 sample(s) scored 0" in capsys.readouterr().out


def test_a_missing_phrase_model_is_one_message(gcg_file, tmp_path, capsys):
    from sparrow_plugin.cli import main

    path = write(tmp_path / "predictions.json", predictions())
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--benchmark", "videogcg", "--pred", str(path), "--gt", str(gcg_file), "--phrase-model", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'nowhere'}: phrase model folder not found" in capsys.readouterr().err
