"""Ref-DAVIS17 / DAVIS 2017 unsupervised: our `sparrow eval` against the official evaluator's
whole code path, on the same folders, in one run: the time of each and the largest difference.

The reference is davis2017-evaluation at ac7c43f (``evaluation.py``, ``davis.py``,
``results.py``, ``utils.py``: read every annotation and prediction PNG, split the ids into
masks, J and F of every (prediction, object) pair frame by frame, Hungarian matching on
their mean, mean/recall/decay per object, means over objects). It is not on PyPI, so its
code path is re-typed below with the same calls, J and F being ``bench_metrics``' re-typed
``db_eval_iou`` / ``db_eval_boundary`` (numpy + ``cv2.dilate``).

The folders are written by the bench: DAVIS layout (``ImageSets/2017/val.txt``,
``Annotations_unsupervised/480p``), palette PNGs at 480x854, a few objects per sequence
moving over the frame, and predictions that shift, grow and swap ids, with a void border
around each object as DAVIS has. Needs OpenCV and scikit-image, like ``bench_metrics``:

    .venv/bin/python bench/bench_davis.py [--sequences 4] [--frames 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).parent))
from bench_metrics import OfficialRetyped, cv2  # noqa: E402  (exits with a message without OpenCV)

from sparrow_plugin.evaluation import evaluate_davis17  # noqa: E402

warnings.filterwarnings("ignore", category=RuntimeWarning)

HEIGHT, WIDTH, VOID = 480, 854, 255


def write_folders(root: Path, sequences: int, frames: int, seed: int = 0) -> tuple[Path, Path]:
    """A DAVIS folder and a prediction folder; returns (davis_root, pred_dir)."""
    rng = np.random.default_rng(seed)
    davis, pred = root / "DAVIS", root / "pred"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    names = [f"seq{s}" for s in range(sequences)]
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    palette = list(np.random.default_rng(1).integers(0, 256, 768))
    for name in names:
        count = int(rng.integers(1, 4))
        centres = rng.uniform([60, 80], [HEIGHT - 60, WIDTH - 80], size=(count, 2))
        radii, velocity = rng.uniform(25, 70, count), rng.normal(0, 4, size=(count, 2))
        order = rng.permutation(count) + 1  # predicted ids: a permutation of the true ones
        for t in range(frames):
            gt, predicted = np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint8)
            for k in range(count):
                cy, cx = centres[k] + velocity[k] * t
                inside = (yy - cy) ** 2 + (xx - cx) ** 2
                ring = (inside < (radii[k] + 3) ** 2) & (gt == 0)
                gt[ring] = VOID
                gt[inside < radii[k] ** 2] = k + 1
                jitter = rng.normal(0, 3, 2)
                guess = (yy - cy - jitter[0]) ** 2 + (xx - cx - jitter[1]) ** 2 < (radii[k] * rng.uniform(0.85, 1.15)) ** 2
                predicted[guess & (predicted == 0)] = order[k]
            if rng.random() < 0.3:  # a spurious extra id now and then
                predicted[:20, :20] = count + 1
            for folder, labels in ((davis / "Annotations_unsupervised" / "480p" / name, gt), (pred / name, predicted)):
                folder.mkdir(parents=True, exist_ok=True)
                image = Image.fromarray(labels, mode="P")
                image.putpalette(palette)
                image.save(folder / f"{t:05d}.png")
    return davis, pred


def official_unsupervised(davis: Path, pred: Path) -> dict[str, float]:
    """davis2017-evaluation's unsupervised ``evaluate`` and its global table, re-typed."""
    names = [line.strip() for line in (davis / "ImageSets" / "2017" / "val.txt").read_text().splitlines() if line.strip()]
    metrics = {"J": {"M": [], "R": [], "D": []}, "F": {"M": [], "R": [], "D": []}}
    for seq in names:
        paths = sorted((davis / "Annotations_unsupervised" / "480p" / seq).glob("*.png"))
        masks = np.zeros((len(paths), *np.array(Image.open(paths[0])).shape))
        for i, path in enumerate(paths):
            masks[i] = np.array(Image.open(path))
        void = np.zeros_like(masks)
        for i in range(masks.shape[0]):
            void[i] = masks[i] == 255
            masks[i, masks[i] == 255] = 0
        num_objects = int(np.max(masks[0]))
        gt = np.ones((num_objects, *masks.shape)) * np.arange(1, num_objects + 1)[:, None, None, None] == masks[None]
        res = np.zeros((len(paths), *masks.shape[1:]))
        for i, path in enumerate(paths):
            res[i] = np.array(Image.open(pred / seq / path.name))
        num_res = int(np.max(res))
        res = (np.ones((num_res, *res.shape)) * np.arange(1, num_res + 1)[:, None, None, None] == res[None]) > 0
        if res.shape[0] < gt.shape[0]:
            res = np.concatenate([res, np.zeros((gt.shape[0] - res.shape[0], *res.shape[1:]))], axis=0)
        j = np.zeros((res.shape[0], gt.shape[0], gt.shape[1]))
        f = np.zeros_like(j)
        for ii in range(gt.shape[0]):
            for jj in range(res.shape[0]):
                j[jj, ii] = OfficialRetyped.db_eval_iou(gt[ii], res[jj], void)
                f[jj, ii] = OfficialRetyped.db_eval_boundary(gt[ii], res[jj], void)
        rows, cols = linear_sum_assignment(-(np.mean(j, axis=2) + np.mean(f, axis=2)) / 2)
        j, f = j[rows, cols], f[rows, cols]
        for ii in range(gt.shape[0]):
            for name, values in (("J", j[ii]), ("F", f[ii])):
                mean, recall = np.nanmean(values), np.nanmean(values > 0.5)
                ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
                bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
                metrics[name]["M"].append(mean)
                metrics[name]["R"].append(recall)
                metrics[name]["D"].append(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    table = {"J&F-Mean": (np.mean(metrics["J"]["M"]) + np.mean(metrics["F"]["M"])) / 2}
    for name in ("J", "F"):
        table.update({f"{name}-Mean": np.mean(metrics[name]["M"]), f"{name}-Recall": np.mean(metrics[name]["R"]), f"{name}-Decay": np.mean(metrics[name]["D"])})
    return {key: float(value) for key, value in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        davis, pred = write_folders(Path(folder), args.sequences, args.frames)
        start = time.perf_counter()
        official = official_unsupervised(davis, pred)
        official_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ours = evaluate_davis17(pred, davis, "unsupervised", "val", progress=False).results
        our_seconds = time.perf_counter() - start
    print(f"DAVIS 2017 unsupervised, {args.sequences} sequences x {args.frames} frames of {WIDTH}x{HEIGHT}, {args.threads} thread(s)")
    print(f"{'measure':<14}{'official':>12}{'ours':>12}{'|diff|':>10}")
    for key, value in official.items():
        print(f"{key:<14}{value:>12.6f}{ours[key]:>12.6f}{abs(value - ours[key]):>10.1e}")
    largest = max(abs(value - ours[key]) for key, value in official.items())
    print(f"time: official {official_seconds:.2f} s, ours {our_seconds:.2f} s, official/ours {official_seconds / our_seconds:.1f}x; largest |diff| {largest:.1e}")


if __name__ == "__main__":
    main()
