"""Speed of the batched J and F against a per-frame transcription of the reference evaluator.

Both compute the same numbers (checked here, and to 1e-9 in tests/test_metrics.py); the
reference does what the DAVIS/MeViS code does, one frame at a time in numpy with a disk
dilation (scipy here; the originals use OpenCV). Measured side by side in one run.

    .venv/bin/python bench/bench_metrics.py [--frames 32] [--size 480 854] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import ndimage

from sparrow_plugin.metrics import f_measure, jaccard


def reference_scores(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> tuple[float, float]:
    """J and F of one frame, transcribed from the DAVIS evaluation code."""

    def bmap(m):
        e, s, se = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
        e[:, :-1], s[:-1, :], se[:-1, :-1] = m[:, 1:], m[1:, :], m[1:, 1:]
        b = (m ^ e) | (m ^ s) | (m ^ se)
        b[-1, :], b[:, -1] = m[-1, :] ^ e[-1, :], m[:, -1] ^ s[:, -1]
        b[-1, -1] = False
        return b

    union = (pred | gt).sum()
    j = 1.0 if union == 0 else (pred & gt).sum() / union
    r = math.ceil(bound_th * math.hypot(*pred.shape))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= r * r
    bp, bg = bmap(pred), bmap(gt)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 or n_g == 0:
        p_, r_ = (1.0 if n_p == 0 else 0.0), (1.0 if n_g == 0 else 0.0)
    else:
        p_ = (bp & ndimage.binary_dilation(bg, structure=disk)).sum() / n_p
        r_ = (bg & ndimage.binary_dilation(bp, structure=disk)).sum() / n_g
    f = 0.0 if p_ + r_ == 0 else 2 * p_ * r_ / (p_ + r_)
    return float(j), float(f)


def make_clip(frames: int, height: int, width: int, seed: int = 0):
    """Moving ellipses, the prediction a slightly shifted and scaled copy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    gt, pred = [], []
    cy, cx, ry, rx = height / 2, width / 3, height / 5, width / 8
    for t in range(frames):
        cx_t = cx + 3 * t
        gt.append(((yy - cy) / ry) ** 2 + ((xx - cx_t) / rx) ** 2 < 1)
        dy, dx, scale = rng.normal(0, 3), rng.normal(0, 3), rng.uniform(0.9, 1.1)
        pred.append(((yy - cy - dy) / (ry * scale)) ** 2 + ((xx - cx_t - dx) / (rx * scale)) ** 2 < 1)
    return np.stack(pred), np.stack(gt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 854))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pred, gt = make_clip(args.frames, *args.size)
    pred_t, gt_t = torch.from_numpy(pred), torch.from_numpy(gt)

    def batched():
        return jaccard(pred_t, gt_t), f_measure(pred_t, gt_t)

    def per_frame():
        return [reference_scores(p, g) for p, g in zip(pred, gt)]

    batched()  # warm-up
    timings = {}
    for name, run in (("batched (ours)", batched), ("per frame (reference)", per_frame)):
        start = time.perf_counter()
        for _ in range(args.repeat):
            result = run()
        timings[name] = (time.perf_counter() - start) / args.repeat
        if name.startswith("batched"):
            ours = np.stack([result[0].numpy(), result[1].numpy()], axis=1)
        else:
            reference = np.array(result)
    difference = np.abs(ours - reference).max()
    print(f"{args.frames} frames of {args.size[0]}x{args.size[1]}, torch threads {torch.get_num_threads()}")
    for name, seconds in timings.items():
        print(f"  {name:<24} {seconds * 1000 / args.frames:8.2f} ms/frame")
    ratio = timings["per frame (reference)"] / timings["batched (ours)"]
    print(f"  speed-up {ratio:.1f}x, largest difference in J or F: {difference:.2e}")


if __name__ == "__main__":
    main()
