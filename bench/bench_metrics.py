"""Speed of our batched J and F against the official DAVIS/MeViS evaluator, computed its way.

The reference is davis2017-evaluation (github.com/davisvideochallenge/davis2017-evaluation,
``davis2017/metrics.py``, BSD-3-Clause), the code the DAVIS and MeViS benchmarks score with.
MeViS' ``tools/eval_mevis.py`` builds each expression's masks as uint8 (T, H, W) arrays and
calls ``db_eval_iou(gt, pred).mean()`` and ``db_eval_boundary(gt, pred).mean()``: J is one
numpy pass over the clip, F a Python loop over frames (``_seg2bmap`` and two ``cv2.dilate``
with ``skimage.morphology.disk``). The bench times exactly those two calls against ours,
``jaccard(pred, gt)`` and ``f_measure(pred, gt)``, on the same uint8 arrays. Where CUDA is
available, two more columns time ours on the masks moved to the GPU (values must equal the
CPU's exactly).

The package is not on PyPI (no ``davis2017``, ``davis2017-evaluation`` or ``davis-evaluation``
there; the upstream README installs it from a clone). So:

* if ``davis2017`` is importable, the bench times the package itself, and also the re-typed
  copy below, and checks the two give identical numbers;
* otherwise it times the re-typed copy: the official functions of upstream commit ac7c43f
  typed again with the same library calls in the same order (numpy, ``cv2.dilate``,
  ``skimage.morphology.disk``), only docstrings and ``_seg2bmap``'s never-taken resizing
  branch left out, so its speed is the reference's. It is not the scipy transcription this
  bench used before: ``ndimage.binary_dilation`` with the same disk took ~60 ms on a 480x854
  frame where ``cv2.dilate`` takes ~1 ms, so that baseline inflated the speed-up.

Neither OpenCV nor scikit-image is a project dependency; the bench needs them:

    .venv/bin/pip install opencv-python-headless scikit-image
    # optional, to time the official package itself (its other requirements are not needed):
    .venv/bin/pip install --no-deps git+https://github.com/davisvideochallenge/davis2017-evaluation

    .venv/bin/python bench/bench_metrics.py [--repeat 11] [--threads 1] [--clip T H W ellipses|blobs ...]

All timed calls for one clip run interleaved (the order rotates every repeat) and the median
is reported, so background load hits them alike; the ratio is official time / our time.
Both sides run on ``--threads`` threads (torch and OpenCV; default 1, as in MeViS' evaluator,
which scores one expression per worker process). On a machine that is busy with other
work, more threads than idle cores make torch's OpenMP regions wait for descheduled threads
and its times balloon by orders of magnitude, which measures the load, not the code.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import torch

try:
    import cv2
    from skimage.morphology import disk  # noqa: F401  (the official code imports it per call)
except ImportError as error:
    sys.exit(
        f"bench_metrics needs OpenCV and scikit-image to run the official evaluator ({error}).\n"
        "They are not project dependencies; install them with\n"
        "    .venv/bin/pip install opencv-python-headless scikit-image"
    )

from sparrow_plugin.metrics import f_measure, jaccard

try:
    from davis2017 import metrics as official_package
except ImportError:
    official_package = None

# davis2017/evaluation.py silences these (0/0 in db_eval_iou for an empty union)
warnings.filterwarnings("ignore", category=RuntimeWarning)


class OfficialRetyped:
    """``davis2017/metrics.py`` at ac7c43f, re-typed with the same calls (see module docstring)."""

    @staticmethod
    def db_eval_iou(annotation, segmentation, void_pixels=None):
        assert annotation.shape == segmentation.shape
        annotation = annotation.astype(bool)
        segmentation = segmentation.astype(bool)
        if void_pixels is not None:
            assert annotation.shape == void_pixels.shape
            void_pixels = void_pixels.astype(bool)
        else:
            void_pixels = np.zeros_like(segmentation)
        inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
        union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))
        j = inters / union
        if j.ndim == 0:
            j = 1 if np.isclose(union, 0) else j
        else:
            j[np.isclose(union, 0)] = 1
        return j

    @staticmethod
    def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008):
        assert annotation.shape == segmentation.shape
        if void_pixels is not None:
            assert annotation.shape == void_pixels.shape
        if annotation.ndim == 3:
            n_frames = annotation.shape[0]
            f_res = np.zeros(n_frames)
            for frame_id in range(n_frames):
                void_pixels_frame = None if void_pixels is None else void_pixels[frame_id, :, :,]
                f_res[frame_id] = OfficialRetyped.f_measure(
                    segmentation[frame_id, :, :,], annotation[frame_id, :, :], void_pixels_frame, bound_th=bound_th
                )
        elif annotation.ndim == 2:
            f_res = OfficialRetyped.f_measure(segmentation, annotation, void_pixels, bound_th=bound_th)
        else:
            raise ValueError(f"db_eval_boundary does not support tensors with {annotation.ndim} dimensions")
        return f_res

    @staticmethod
    def f_measure(foreground_mask, gt_mask, void_pixels=None, bound_th=0.008):
        assert np.atleast_3d(foreground_mask).shape[2] == 1
        if void_pixels is not None:
            void_pixels = void_pixels.astype(bool)
        else:
            void_pixels = np.zeros_like(foreground_mask).astype(bool)

        bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))

        fg_boundary = OfficialRetyped._seg2bmap(foreground_mask * np.logical_not(void_pixels))
        gt_boundary = OfficialRetyped._seg2bmap(gt_mask * np.logical_not(void_pixels))

        from skimage.morphology import disk

        fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
        gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))

        gt_match = gt_boundary * fg_dil
        fg_match = fg_boundary * gt_dil

        n_fg = np.sum(fg_boundary)
        n_gt = np.sum(gt_boundary)

        if n_fg == 0 and n_gt > 0:
            precision = 1
            recall = 0
        elif n_fg > 0 and n_gt == 0:
            precision = 0
            recall = 1
        elif n_fg == 0 and n_gt == 0:
            precision = 1
            recall = 1
        else:
            precision = np.sum(fg_match) / float(n_fg)
            recall = np.sum(gt_match) / float(n_gt)

        if precision + recall == 0:
            F = 0
        else:
            F = 2 * precision * recall / (precision + recall)
        return F

    @staticmethod
    def _seg2bmap(seg, width=None, height=None):
        seg = seg.astype(bool)
        seg[seg > 0] = 1

        assert np.atleast_3d(seg).shape[2] == 1

        width = seg.shape[1] if width is None else width
        height = seg.shape[0] if height is None else height

        h, w = seg.shape[:2]

        ar1 = float(width) / float(height)
        ar2 = float(w) / float(h)

        assert not (width > w | height > h | abs(ar1 - ar2) > 0.01), "Can't convert %dx%d seg to %dx%d bmap." % (
            w,
            h,
            width,
            height,
        )

        e = np.zeros_like(seg)
        s = np.zeros_like(seg)
        se = np.zeros_like(seg)

        e[:, :-1] = seg[:, 1:]
        s[:-1, :] = seg[1:, :]
        se[:-1, :-1] = seg[1:, 1:]

        b = seg ^ e | seg ^ s | seg ^ se
        b[-1, :] = seg[-1, :] ^ e[-1, :]
        b[:, -1] = seg[:, -1] ^ s[:, -1]
        b[-1, -1] = 0

        if w == width and h == height:
            return b
        raise NotImplementedError("resizing branch of _seg2bmap (never used by the evaluators)")


def make_clip(kind: str, frames: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (T, H, W) prediction and ground truth, as ``eval_mevis.py`` holds them.

    ``ellipses``: one moving ellipse; the prediction a slightly shifted and scaled copy.
    ``blobs``: many irregular regions (thresholded smooth noise) drifting across the frame;
    the prediction thresholds a perturbed copy. Far more boundary pixels, which is what our
    cost grows with (the official cost barely depends on content).
    """
    rng = np.random.default_rng(seed)
    gt = np.zeros((frames, height, width), np.uint8)
    pred = np.zeros_like(gt)
    if kind == "ellipses":
        yy, xx = np.mgrid[:height, :width]
        cy, cx, ry, rx = height / 2, width / 3, height / 5, width / 8
        for t in range(frames):
            cx_t = cx + 3 * t
            gt[t] = ((yy - cy) / ry) ** 2 + ((xx - cx_t) / rx) ** 2 < 1
            dy, dx, scale = rng.normal(0, 3), rng.normal(0, 3), rng.uniform(0.9, 1.1)
            pred[t] = ((yy - cy - dy) / (ry * scale)) ** 2 + ((xx - cx_t - dx) / (rx * scale)) ** 2 < 1
    elif kind == "blobs":
        cells = (max(height // 24, 2), max(width // 24, 2))
        field = cv2.resize(rng.random(cells, dtype=np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        for t in range(frames):
            shifted = np.roll(field, 2 * t, axis=1)
            noise = rng.random((max(height // 12, 2), max(width // 12, 2)), dtype=np.float32)
            noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
            gt[t] = shifted > 0.5
            pred[t] = shifted + 0.15 * (noise - 0.5) > 0.5
    else:
        raise ValueError(f"unknown clip kind {kind!r}")
    return pred, gt


def time_interleaved(calls: dict, repeat: int) -> tuple[dict, dict]:
    """Median seconds of each call, run interleaved with a rotating order; and each call's result."""
    results = {name: call() for name, call in calls.items()}  # warm-up, and the values to compare
    seconds = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11, help="interleaved repeats per clip (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and OpenCV alike (default 1)")
    parser.add_argument(
        "--clip",
        nargs=4,
        action="append",
        metavar=("T", "H", "W", "KIND"),
        help="a clip to time: frames, height, width, ellipses|blobs (repeatable; default: the three below)",
    )
    args = parser.parse_args()
    clips = [(int(t), int(h), int(w), kind) for t, h, w, kind in args.clip] if args.clip else [
        (60, 480, 854, "ellipses"),  # the goal: 480p clips of 60 frames, 5x the official speed
        (60, 480, 854, "blobs"),
        (8, 120, 160, "ellipses"),  # the size of the synthetic benchmark's videos
    ]

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    references = {}
    if official_package is not None:
        references["official (package)"] = official_package
        references["official (re-typed)"] = OfficialRetyped
        print(f"reference: the davis2017 package itself ({official_package.__file__}), and the re-typed copy")
    else:
        references["official (re-typed)"] = OfficialRetyped
        print("reference: davis2017/metrics.py re-typed with the same calls (package not installed; not on PyPI)")
    first_reference = next(iter(references))
    print(
        f"numpy {np.__version__}, opencv {cv2.__version__} ({cv2.getNumThreads()} threads), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); interleaved, median of {args.repeat}"
    )

    cuda = torch.cuda.is_available()
    columns = [f"{name} ms/fr" for name in references] + ["ours ms/fr", "official/ours", "max|dJ|", "max|dF|"]
    if cuda:
        columns += ["ours cuda ms/fr", "official/cuda"]
    header = f"{'clip':<22}" + "".join(f"{c:>26}" if "official (" in c else f"{c:>14}" for c in columns)
    print(header)
    for frames, height, width, kind in clips:
        pred, gt = make_clip(kind, frames, height, width)
        calls = {
            name: (lambda m=module: (m.db_eval_iou(gt, pred), m.db_eval_boundary(gt, pred)))
            for name, module in references.items()
        }
        calls["ours"] = lambda: (jaccard(pred, gt).numpy(), f_measure(pred, gt).numpy())
        if cuda:  # the masks already on the device, as after a model's forward pass; values back on the host
            pred_cuda, gt_cuda = torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda()
            calls["cuda"] = lambda: (jaccard(pred_cuda, gt_cuda).cpu().numpy(), f_measure(pred_cuda, gt_cuda).cpu().numpy())
        medians, results = time_interleaved(calls, args.repeat)

        reference_j, reference_f = results[first_reference]
        for name in references:  # package and re-typed copy must agree exactly
            j, f = results[name]
            if not (np.array_equal(j, reference_j) and np.array_equal(f, reference_f)):
                raise SystemExit(f"{name} differs from {first_reference} on {kind} {frames}x{height}x{width}")
        ours_j, ours_f = results["ours"]
        d_j = np.abs(ours_j - reference_j).max()
        d_f = np.abs(ours_f - reference_f).max()
        ratio = medians[first_reference] / medians["ours"]

        row = f"{f'{frames}x{height}x{width} {kind}':<22}"
        row += "".join(f"{medians[name] * 1000 / frames:>26.2f}" for name in references)
        row += f"{medians['ours'] * 1000 / frames:>14.2f}{ratio:>13.1f}x{d_j:>14.1e}{d_f:>14.1e}"
        if cuda:
            cuda_j, cuda_f = results["cuda"]
            if not (np.array_equal(cuda_j, ours_j) and np.array_equal(cuda_f, ours_f)):
                raise SystemExit(f"the CUDA values differ from the CPU's on {kind} {frames}x{height}x{width}")
            row += f"{medians['cuda'] * 1000 / frames:>14.3f}{medians[first_reference] / medians['cuda']:>13.1f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()
