"""J and F against hand-derived values and an independent transcription of the spec."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from sparrow_plugin.errors import SparrowError
from sparrow_plugin.metrics import MeViSMetric, boundary_map, boundary_radius, f_measure, jaccard


def row(bits: str) -> np.ndarray:
    """A (1, W) mask from a string like '001110000'."""
    return np.array([[c == "1" for c in bits]])


# ----------------------------------------------------------------------------- J


def test_jaccard_hand_values():
    # pred {2..4}, gt {4..6}: intersection {4}, union {2..6} -> 1/5
    assert float(jaccard(row("001110000"), row("000011100"))) == pytest.approx(0.2)
    assert float(jaccard(row("0110"), row("0110"))) == 1.0
    assert float(jaccard(row("0110"), row("0000"))) == 0.0


def test_jaccard_both_empty_is_one():
    assert float(jaccard(np.zeros((4, 5)), np.zeros((4, 5)))) == 1.0


def test_jaccard_ignores_void_pixels():
    pred, gt = row("1100"), row("1000")
    void = row("0100")  # the only disagreement is void -> perfect
    assert float(jaccard(pred, gt, void=void)) == 1.0
    # everything void: union of non-void pixels is empty -> 1
    assert float(jaccard(pred, gt, void=row("1111"))) == 1.0


def test_jaccard_per_frame_and_types():
    pred = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    gt = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
    scores = jaccard(pred, gt)
    assert scores.shape == (2,) and scores.dtype == torch.float64
    assert scores.tolist() == [0.5, 0.0]
    assert jaccard(pred.numpy().astype(np.uint8), gt.numpy() * 255).tolist() == [0.5, 0.0]


def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        jaccard(np.zeros((2, 3)), np.zeros((3, 2)))


# ----------------------------------------------------------------------------- F


@pytest.mark.parametrize(
    "size, radius",
    [((480, 854), 8), ((360, 640), 6), ((720, 1280), 12), ((1080, 1920), 18), ((120, 160), 2)],
)
def test_boundary_radius_from_the_diagonal(size, radius):
    assert boundary_radius(*size) == radius


def test_threshold_of_one_or_more_is_pixels():
    assert boundary_radius(480, 854, bound_th=3) == 3


def test_boundary_of_one_pixel():
    # a pixel differs from its east, south, south-east neighbours, and so do its west,
    # north and north-west neighbours from it: boundary = the 2x2 block ending at it
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    expected = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected[0, 1:3, 1:3] = True
    assert torch.equal(boundary_map(mask), expected)


def test_image_border_creates_no_boundary():
    full = torch.ones(1, 6, 7, dtype=torch.bool)
    assert not boundary_map(full).any()
    assert float(f_measure(full[0], full[0])) == 1.0  # two full masks: both boundaries empty


def test_f_measure_hand_value_on_one_row():
    # gt 001110000: boundary at x=1 (0->1) and x=4 (1->0); pred 000011100: at x=3 and x=6.
    # radius 1: dilate(gt b) = {0..5}, dilate(pred b) = {2..7}
    # P = |{3}| / 2 = 0.5, R = |{4}| / 2 = 0.5, F = 0.5
    assert float(f_measure(row("000011100"), row("001110000"), bound_th=1)) == pytest.approx(0.5)


def test_f_measure_empty_cases():
    empty, blob = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    blob[3:6, 3:6] = True
    assert float(f_measure(empty, empty)) == 1.0  # both empty: P = R = 1
    assert float(f_measure(empty, blob)) == 0.0  # nothing predicted: P = 1, R = 0
    assert float(f_measure(blob, empty)) == 0.0  # nothing to find: P = 0, R = 1


def test_f_measure_far_apart_is_zero_and_identical_is_one():
    a, b = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    a[2:6, 2:6], b[30:34, 30:34] = True, True
    assert float(f_measure(a, b)) == 0.0
    assert float(f_measure(a, a)) == 1.0


def test_void_is_cleared_before_boundaries():
    pred, gt = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    pred[2:5, 2:5] = True
    void = pred.copy()  # the whole prediction is void -> both masks empty -> F = 1
    assert float(f_measure(pred, gt, void=void)) == 1.0


def _reference_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """docs/metrics.md, transcribed with numpy/scipy, one frame at a time."""

    def bmap(m):
        e, s, se = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
        e[:, :-1], s[:-1, :], se[:-1, :-1] = m[:, 1:], m[1:, :], m[1:, 1:]
        b = (m ^ e) | (m ^ s) | (m ^ se)
        b[-1, :] = m[-1, :] ^ e[-1, :]
        b[:, -1] = m[:, -1] ^ s[:, -1]
        b[-1, -1] = False
        return b

    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= r * r
    bp, bg = bmap(pred), bmap(gt)
    dp = ndimage.binary_dilation(bp, structure=disk, border_value=0)
    dg = ndimage.binary_dilation(bg, structure=disk, border_value=0)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g > 0:
        p, r_ = 1.0, 0.0
    elif n_p > 0 and n_g == 0:
        p, r_ = 0.0, 1.0
    elif n_p == 0 and n_g == 0:
        p, r_ = 1.0, 1.0
    else:
        p, r_ = (bp & dg).sum() / float(n_p), (bg & dp).sum() / float(n_g)
    return 0.0 if p + r_ == 0 else 2 * p * r_ / (p + r_)


@pytest.mark.parametrize("size", [(480, 854), (37, 53), (120, 160), (1, 9), (5, 7), (256, 256)])
def test_f_measure_matches_the_spec_at_every_resolution(size):
    rng = np.random.default_rng(sum(size))
    height, width = size
    yy, xx = np.mgrid[:height, :width]
    preds, gts = [], []
    for _ in range(4):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, max(size) / 3)
        gts.append((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)
        jitter = rng.normal(0, 2, size=2)
        preds.append(((yy - cy - jitter[0]) ** 2 + (xx - cx - jitter[1]) ** 2 < (radius * 1.1) ** 2) | (rng.random(size) < 0.002))
    pred, gt = np.stack(preds), np.stack(gts)
    ours = f_measure(pred, gt).numpy()
    reference = np.array([_reference_f(p, g) for p, g in zip(pred, gt)])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize("width", [1, 63, 64, 65, 130])
def test_the_gpu_word_arithmetic_gives_the_cpu_values(width, monkeypatch):
    """Masks on a GPU are packed and counted with torch int64 words (torch has no uint64
    shifts), the CPU's with numpy uint64. Run here on CPU tensors, the torch path must give
    the numpy path's boundary maps, J and F, at widths around a word's 64 pixels and radii
    up to past a word."""
    from sparrow_plugin.metrics import frame_scores

    generator = torch.Generator().manual_seed(width)
    pred = torch.rand(3, 9, width, generator=generator) < 0.4
    gt = torch.rand(3, 9, width, generator=generator) < 0.4
    gt[2] = True  # a full frame: the border rules
    on_cpu = [boundary_map(pred), jaccard(pred, gt)] + [f_measure(pred, gt, bound_th=r) for r in (1, 8, 70)]
    monkeypatch.setattr(frame_scores, "_as_array", lambda value, name: value.detach())  # torch stays torch
    with_torch_words = [boundary_map(pred), jaccard(pred, gt)] + [f_measure(pred, gt, bound_th=r) for r in (1, 8, 70)]
    for cpu, torch_words in zip(on_cpu, with_torch_words):
        assert torch.equal(cpu, torch_words)


@pytest.mark.parametrize("radius", [1, 6, 8, 12, 63, 64, 65, 70])
def test_f_measure_matches_the_spec_at_every_radius(radius):
    """Radii in pixels, below, at and beyond a packed word's 64 pixels (and past the width)."""
    rng = np.random.default_rng(radius)
    yy, xx = np.mgrid[:90, :150]
    gt = np.stack([(yy - rng.uniform(0, 90)) ** 2 + (xx - rng.uniform(0, 150)) ** 2 < rng.uniform(4, 40) ** 2 for _ in range(3)])
    pred = np.stack([np.roll(g, rng.integers(-9, 10, size=2), axis=(0, 1)) | (rng.random(g.shape) < 0.003) for g in gt])
    ours = f_measure(pred, gt, bound_th=radius).numpy()
    reference = np.array([_reference_f(p, g, bound_th=radius) for p, g in zip(pred, gt)])
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- MeViS protocol


def test_mevis_metric_aggregates_per_expression_and_kind():
    metric = MeViSMetric(kinds=["appearance", "no_target"])
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[:, 1:3, 1:3] = True
    metric.update(gt.clone(), gt, kind="appearance", sample_index=0)  # perfect: J = F = 1
    half = gt.clone()
    half[1] = False  # frame 1 empty: J = (1 + 0) / 2
    metric.update(half, gt, kind="appearance", sample_index=1)
    empty = torch.zeros_like(gt)
    metric.update(empty, empty, kind="no_target", emitted_seg=False, sample_index=2)  # correct empty answer: 1
    metric.update(None, gt, kind="appearance", sample_index=3)  # missing prediction: 0, counted
    results = metric.compute()
    assert results["expressions"] == 4 and results["missing"] == 1 and results["no_seg"] == 1
    assert results["truncated"] == 0
    assert results["appearance/J"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert results["no_target/J&F"] == 1.0
    assert results["J"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert results["J&F"] == pytest.approx((results["J"] + results["F"]) / 2)


def test_mevis_metric_rejects_unknown_kind():
    metric = MeViSMetric(kinds=["all"])
    with pytest.raises(ValueError, match="motion"):
        empty = torch.zeros(1, 2, 2, dtype=torch.bool)
        metric.update(empty, empty, kind="motion", sample_index=0)


def test_mevis_metric_requires_the_sample_index():
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    with pytest.raises(TypeError, match="sample_index"):
        MeViSMetric().update(empty, empty)


def _random_clip(rng: np.random.Generator, frames: int, height: int, width: int, empty_target: bool = False):
    """(T, H, W) ground truth (moving discs, or nothing) and a noisy prediction of it; on an
    empty target the prediction is empty on some frames and a stray blob on the others."""
    yy, xx = np.mgrid[:height, :width]
    gt = np.zeros((frames, height, width), bool)
    pred = np.zeros_like(gt)
    cy, cx, radius = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(3, height / 4)
    for t in range(frames):
        cy, cx = cy + rng.normal(0, 1.5), cx + rng.normal(0, 1.5)
        if empty_target:
            if rng.random() < 0.5:
                pred[t] = (yy - cy) ** 2 + (xx - cx) ** 2 < 9
            continue
        gt[t] = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        dy, dx = rng.normal(0, 2.5, size=2)
        disc = (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 < (radius * rng.uniform(0.7, 1.3)) ** 2
        pred[t] = disc | (rng.random((height, width)) < 0.003)
    return pred, gt


def _reference_j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = (pred | gt).sum()
    return 1.0 if union == 0 else (pred & gt).sum() / float(union)


def test_mevis_metric_follows_the_protocol_on_random_clips():
    """Expression score = mean over its frames; benchmark score = mean over expressions,
    with every frame computed by the test's own transcription of the spec."""
    rng = np.random.default_rng(7)
    clips = [  # (frames, height, width, kind, empty target): different lengths weigh differently
        (1, 24, 40, "motion", False),
        (3, 30, 30, "motion", False),
        (9, 24, 40, "appearance", False),
        (5, 36, 20, "appearance", False),
        (6, 24, 40, "no_target", True),
    ]
    metric = MeViSMetric(kinds=["appearance", "motion", "no_target"])
    per_expression = {"J": [], "F": [], "kind": []}
    all_frames = {"J": [], "F": []}
    for sample_index, (frames, height, width, kind, empty) in enumerate(clips):
        pred, gt = _random_clip(rng, frames, height, width, empty)
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt), kind=kind, sample_index=sample_index)
        j_frames = [_reference_j(p, g) for p, g in zip(pred, gt)]
        f_frames = [_reference_f(p, g) for p, g in zip(pred, gt)]
        per_expression["J"].append(np.mean(j_frames))
        per_expression["F"].append(np.mean(f_frames))
        per_expression["kind"].append(kind)
        all_frames["J"] += j_frames
        all_frames["F"] += f_frames
    results = metric.compute()
    for score in ("J", "F"):
        values = np.array(per_expression[score])
        assert 0.05 < values.min() and values.max() < 0.999  # neither trivial nor perfect
        assert results[score] == pytest.approx(values.mean(), abs=1e-9)
        # pooling frames instead of expressions would give a clearly different number
        assert abs(np.mean(all_frames[score]) - values.mean()) > 1e-3
        for kind in ("appearance", "motion", "no_target"):
            selected = [k == kind for k in per_expression["kind"]]
            assert results[f"{kind}/{score}"] == pytest.approx(values[selected].mean(), abs=1e-9)
    assert results["J&F"] == pytest.approx((np.mean(per_expression["J"]) + np.mean(per_expression["F"])) / 2, abs=1e-9)
    assert results["expressions"] == len(clips) and results["no_target/expressions"] == 1


def _blob_clip(hit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, gt) of shape (2, 8, 8): a perfect prediction, or one off the target (J = 0)."""
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, 2:5, 2:5] = True
    pred = gt.clone() if hit else torch.roll(gt, shifts=(4, 4), dims=(1, 2))
    return pred, gt


def test_mevis_metric_counts_a_repeated_sample_once():
    metric = MeViSMetric(kinds=["motion"])
    metric.update(*_blob_clip(hit=True), kind="motion", sample_index=0)
    metric.update(*_blob_clip(hit=False), kind="motion", sample_index=1)
    # DDP padding scores sample 1 again (here even with another answer): the first counts
    metric.update(*_blob_clip(hit=True), kind="motion", sample_index=1, truncated=True)
    metric.update(*_blob_clip(hit=True), kind="motion", sample_index=0)
    results = metric.compute()
    assert results["expressions"] == 2 and results["motion/expressions"] == 2
    assert results["J"] == pytest.approx(0.5) and results["truncated"] == 0


def test_mevis_metric_counts_once_across_ranks():
    """Two ranks of a DistributedSampler over 5 samples: rank 1's last sample is the padded
    repeat of sample 0; the states are merged as DDP's concatenation does."""
    ranks = [MeViSMetric(expected_samples=5), MeViSMetric(expected_samples=5)]
    hits = {0: True, 1: False, 2: True, 3: True, 4: False}
    for rank, indices in enumerate(([0, 2, 4], [1, 3, 0])):
        for index in indices:
            ranks[rank].update(*_blob_clip(hits[index]), sample_index=index)
    ranks[0].merge_state(ranks[1])
    results = ranks[0].compute()
    assert results["expressions"] == 5 and results["J"] == pytest.approx(3 / 5)


def test_mevis_metric_rejects_a_sample_index_with_two_kinds():
    metric = MeViSMetric(kinds=["motion", "spatial"])
    metric.update(*_blob_clip(True), kind="motion", sample_index=0)
    metric.update(*_blob_clip(True), kind="spatial", sample_index=0)  # a batch position, not a dataset index
    with pytest.raises(SparrowError, match="sample_index 0 .*'motion'.*'spatial'"):
        metric.compute()


def test_mevis_metric_expected_samples_names_the_missing_ones():
    metric = MeViSMetric(expected_samples=4)
    for index in (0, 1, 3, 3):
        metric.update(*_blob_clip(True), sample_index=index)
    with pytest.raises(SparrowError, match=r"3 distinct samples were scored, 4 were expected; missing sample indices: 2$"):
        metric.compute()
    metric.update(*_blob_clip(True), sample_index=2)
    assert metric.compute()["expressions"] == 4  # now complete


def test_mevis_metric_expected_samples_lists_at_most_ten_and_out_of_range():
    metric = MeViSMetric()
    metric.expected_samples = 30  # set after construction, as a module learns its split's size
    for index in (0, 31):
        metric.update(*_blob_clip(True), sample_index=index)
    with pytest.raises(SparrowError) as error:
        metric.compute()
    message = str(error.value)
    assert "2 distinct samples were scored, 30 were expected" in message
    assert "missing sample indices: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (19 more)" in message
    assert "indices outside 0..29: 31" in message


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric MeViSMetric was called before")
def test_mevis_metric_with_nothing_scored_raises():
    with pytest.raises(SparrowError, match="no expression was scored"):
        MeViSMetric().compute()


def test_mevis_metric_counts_truncated_answers_apart_from_no_seg():
    metric = MeViSMetric(kinds=["motion", "spatial"])
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    _, gt = _blob_clip(True)
    # cut off before [SEG]: no [SEG] and truncated; ended without [SEG]: no [SEG] only
    metric.update(empty, gt, kind="motion", emitted_seg=False, truncated=True, sample_index=0)
    metric.update(empty, gt, kind="motion", emitted_seg=False, sample_index=1)
    metric.update(*_blob_clip(True), kind="spatial", truncated=True, sample_index=2)  # [SEG] came, then the cut
    metric.update(*_blob_clip(True), kind="spatial", sample_index=3)
    results = metric.compute()
    assert (results["truncated"], results["no_seg"]) == (2, 2)
    assert (results["motion/truncated"], results["motion/no_seg"]) == (1, 2)
    assert (results["spatial/truncated"], results["spatial/no_seg"]) == (1, 0)
    assert results["spatial/J"] == 1.0  # a truncated answer's mask is scored like any other
